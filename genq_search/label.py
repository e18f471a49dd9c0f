"""GPL stage 3: pseudo-labels. Each training tuple (query, positive, negative sampled from the mined pool) gets the
teacher's margin ``score(q, p+) - score(q, p-)``; tuples are drawn round-robin over the queries up to a budget.

Teachers (``label.teacher``):

- ``<cross-encoder>``: raw logits (GPL's default ``cross-encoder/ms-marco-MiniLM-L-6-v2``);
- ``lm:<causal LM>``: query likelihood, mean per-token ``log P(query | document)`` (UPR), offline with the bundled
  Gemma-3 270M;
- ``bi:<bi-encoder>``: the zero-shot bi-encoder's own similarity (cosine or dot product);
- ``bm25``: BM25 over the corpus (rank_bm25 with the embedded backend's tokeniser, k1 1.5, b 0.75);
- ``ensemble:<teacher>+<teacher>+...``: each member's margins divided by their root mean square over all labelled
  tuples (so that every member weighs the same, whatever its scale), times ``teacher_weights``, summed.

Queries and passages are truncated separately (``max_query_tokens``, ``max_length``; GPL: 350 each), not as a pair.
Tuples are labelled in chunks written atomically, so an interrupted run resumes to identical output."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from genq_search.config import LabelConfig
from genq_search.data import (
    Corpus,
    chunk_file,
    fingerprint,
    mark_stage_complete,
    merge_chunks,
    prepare_chunks,
    read_manifest,
    stage_is_complete,
    write_jsonl,
)
from genq_search.encoders import pick_device
from genq_search.errors import GenqError
from genq_search.generate import read_generated, read_positives
from genq_search.mine import negative_pool
from genq_search.models import resolve_model
from genq_search.passages import document_text

logger = logging.getLogger(__name__)

Tuple = tuple[str, str, str]  # (query id, positive doc id, negative doc id)


class Teacher(Protocol):
    truncated: int  # (query, passage) pairs whose query or passage was cut
    batch_size: int

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One relevance score per (query, passage) pair, higher is more relevant; an ensemble returns one column per
        member."""
        ...


class CrossEncoderTeacher:
    """A sentence-transformers cross-encoder; raw logits (no sigmoid), as GPL uses them. Query and passage token ids
    are cut separately, then joined with the model's special tokens (cut further, longest first, only where the pair
    exceeds the model's positions)."""

    def __init__(self, path: str, cfg: LabelConfig):
        from sentence_transformers import CrossEncoder
        from tokenizers import Tokenizer

        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.model = CrossEncoder(path, device=pick_device(cfg.device))
        tokenizer, config = self.model.tokenizer, self.model.model.config
        if config.num_labels != 1:
            raise GenqError(f"teacher '{cfg.teacher}' has {config.num_labels} outputs; a cross-encoder teacher needs one relevance logit")
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: its settings are ours
        self.backend.no_padding()
        self.specials = self.backend.num_special_tokens_to_add(True)
        wanted = cfg.max_query_tokens + cfg.max_length + self.specials
        positions = getattr(config, "max_position_embeddings", None) or wanted
        self.max_pair = min(wanted, positions)
        if self.max_pair < wanted:
            logger.warning("the teacher has %d positions, fewer than max_query_tokens + max_length + special tokens (%d):"
                           " longer pairs are cut further, longest first", positions, wanted)
        self.backend.enable_truncation(self.max_pair, strategy="longest_first")
        self.pad_id, self.type_ids = tokenizer.pad_token_id or 0, "token_type_ids" in tokenizer.model_input_names
        self.truncated = 0

    def _encode(self, query: str, passage: str) -> Any:
        """The pair's encoding: query and passage cut to their own limits, then joined with special tokens."""
        cfg = self.cfg
        q, p = (self.backend.encode(text, add_special_tokens=False) for text in (query, passage))
        joined = min(len(q.ids), cfg.max_query_tokens) + min(len(p.ids), cfg.max_length) + self.specials
        self.truncated += len(q.ids) > cfg.max_query_tokens or len(p.ids) > cfg.max_length or joined > self.max_pair
        q.truncate(cfg.max_query_tokens)
        p.truncate(cfg.max_length)
        return self.backend.post_process(q, p)

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        encoded = [self._encode(q, p) for q, p in pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(encoded[i].ids))  # length-sorted batches pad less
        scores = np.zeros(len(pairs), dtype=np.float64)
        device = next(self.model.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            batch = [encoded[i] for i in order[start : start + self.batch_size]]
            width = max(len(e.ids) for e in batch)
            inputs = {"input_ids": [e.ids + [self.pad_id] * (width - len(e.ids)) for e in batch],
                      "attention_mask": [[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch]}
            if self.type_ids:
                inputs["token_type_ids"] = [e.type_ids + [0] * (width - len(e.ids)) for e in batch]
            with torch.inference_mode():
                logits = self.model.model(**{k: torch.tensor(v, device=device) for k, v in inputs.items()}).logits.float()
            scores[order[start : start + self.batch_size]] = logits[:, 0].cpu().numpy()
        return scores


class QueryLikelihoodTeacher:
    """Mean per-token log P(query | prompt(document)) under a causal LM (UPR, Sachan et al. 2022); the mean keeps
    margins on one scale whatever the query's length."""

    def __init__(self, path: str, cfg: LabelConfig):
        from genq_search.generate import load_causal_lm

        if "{document}" not in cfg.lm_prompt:
            raise GenqError("label.lm_prompt must contain '{document}'")
        self.cfg, self.device, self.batch_size = cfg, pick_device(cfg.device), cfg.batch_size
        self.tokenizer, self.model = load_causal_lm(path, self.device)
        self.truncated = 0

    def _ids(self, query: str, passage: str) -> tuple[list[int], int]:
        tok = self.tokenizer
        passage_ids = tok(passage, add_special_tokens=False)["input_ids"]
        if len(passage_ids) > self.cfg.max_length:
            passage = tok.decode(passage_ids[: self.cfg.max_length], skip_special_tokens=True)
        prompt_ids = tok(self.cfg.lm_prompt.replace("{document}", passage))["input_ids"]
        query_ids = tok(" " + query.strip(), add_special_tokens=False)["input_ids"]
        self.truncated += len(passage_ids) > self.cfg.max_length or len(query_ids) > self.cfg.max_query_tokens
        query_ids = query_ids[: self.cfg.max_query_tokens]
        return prompt_ids + query_ids, len(query_ids)

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        scores = np.zeros(len(pairs), dtype=np.float64)
        encoded = [self._ids(q, p) for q, p in pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]))  # length-sorted batches pad less
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(encoded[i][0]) for i in batch)
            tail = max(encoded[i][1] for i in batch)  # the longest query: logits are needed only for the last positions
            ids = torch.tensor([[pad] * (width - len(encoded[i][0])) + encoded[i][0] for i in batch])
            mask = torch.tensor([[0] * (width - len(encoded[i][0])) + [1] * len(encoded[i][0]) for i in batch])
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=positions.to(self.device), logits_to_keep=tail + 1).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token width - tail + j
            targets = ids[:, width - tail :].to(self.device)
            token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(batch):
                scores[i] = float(token_lp[row, tail - encoded[i][1] :].mean())
        return scores


class BiEncoderTeacher:
    """A zero-shot bi-encoder: its own similarity (``similarity_fn_name``: cosine or dot product) of the query and
    passage embeddings; passage embeddings are kept for the run, since tuples share passages."""

    def __init__(self, path: str, cfg: LabelConfig):
        from sentence_transformers import SentenceTransformer

        self.cfg, self.batch_size, self.truncated = cfg, cfg.batch_size, 0
        self.model = SentenceTransformer(path, device=pick_device(cfg.device))
        self.limit = int(self.model.max_seq_length or cfg.max_length)  # what the model was set up for
        self.passages: dict[str, np.ndarray] = {}
        self.cut_passages: set[str] = set()

    def _encode(self, texts: list[str], tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of ``texts`` cut to ``tokens`` (and the model's own limit), and which of them were cut."""
        specials = self.model.tokenizer.num_special_tokens_to_add()
        self.model.max_seq_length = min(tokens + specials, self.limit)
        lengths = np.array([len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=False)["input_ids"]])
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32), lengths + specials > self.model.max_seq_length

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        queries = list(dict.fromkeys(q for q, _ in pairs))
        q_vectors, q_cut = self._encode(queries, self.cfg.max_query_tokens)
        new = list(dict.fromkeys(p for _, p in pairs if p not in self.passages))
        if new:
            p_vectors, p_cut = self._encode(new, self.cfg.max_length)
            self.passages.update(zip(new, p_vectors, strict=True))
            self.cut_passages.update(p for p, cut in zip(new, p_cut, strict=True) if cut)
        query_row, query_cut = {q: i for i, q in enumerate(queries)}, dict(zip(queries, q_cut, strict=True))
        self.truncated += sum(bool(query_cut[q]) or p in self.cut_passages for q, p in pairs)
        a = torch.from_numpy(q_vectors[[query_row[q] for q, _ in pairs]])
        b = torch.from_numpy(np.stack([self.passages[p] for _, p in pairs]))
        return self.model.similarity_pairwise(a, b).double().numpy()


class BM25Teacher:
    """BM25 of the query against the whole document (no truncation), with the corpus' statistics: rank_bm25 built
    as the embedded backend builds it (its tokeniser, k1 1.5, b 0.75)."""

    truncated = 0

    def __init__(self, corpus: Corpus, cfg: LabelConfig):
        from genq_search.engines.embedded import EmbeddedBackend

        backend = EmbeddedBackend()
        backend.index(corpus, [], None)
        self.bm25, self.tokenizer, self.batch_size = backend.bm25, backend.tokenizer, cfg.batch_size
        self.row = {document_text(corpus[d]): i for i, d in enumerate(backend.doc_ids)}

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        scores = np.zeros(len(pairs), dtype=np.float64)
        for query, rows in by_query.items():  # one rank_bm25 call per query
            scores[rows] = self.bm25.get_batch_scores(self.tokenizer(query), [self.row[pairs[i][1]] for i in rows])  # type: ignore[attr-defined]
        return scores


class EnsembleTeacher:
    """Its members' scores side by side, one column each; ``run_label`` normalises and combines their margins."""

    def __init__(self, members: dict[str, Teacher]):
        self.members = members

    @property
    def truncated(self) -> int:
        return sum(member.truncated for member in self.members.values())

    @property
    def batch_size(self) -> int:
        return max(member.batch_size for member in self.members.values())

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        for member in self.members.values():
            member.batch_size = value

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.stack([member.score(pairs) for member in self.members.values()], axis=1)


def teacher_members(cfg: LabelConfig) -> tuple[list[str], np.ndarray]:
    """The teacher specs (one, or an ensemble's members) and their weights; bad specs fail before any work."""
    ensemble = cfg.teacher.startswith("ensemble:")
    members = cfg.teacher.removeprefix("ensemble:").split("+") if ensemble else [cfg.teacher]
    if ensemble and (len(members) < 2 or len(set(members)) < len(members) or any(m.startswith("ensemble:") or not m for m in members)):
        raise GenqError(f"label.teacher '{cfg.teacher}': an ensemble needs two or more distinct members, "
                        "e.g. ensemble:bm25+bi:sentence-transformers/all-MiniLM-L6-v2+lm:google/gemma-3-270m")
    if cfg.teacher_weights is not None and (not ensemble or len(cfg.teacher_weights) != len(members)):
        raise GenqError(f"label.teacher_weights needs one weight per member of an ensemble teacher ({len(members)} here)")
    return members, np.asarray(cfg.teacher_weights or [1.0] * len(members), dtype=np.float64)


def load_teacher(cfg: LabelConfig, corpus: Corpus) -> Teacher:
    members, _ = teacher_members(cfg)
    if len(members) > 1:
        return EnsembleTeacher({spec: _load_member(spec, cfg, corpus) for spec in members})
    return _load_member(cfg.teacher, cfg, corpus)


def _load_member(spec: str, cfg: LabelConfig, corpus: Corpus) -> Teacher:
    if spec == "bm25":
        return BM25Teacher(corpus, cfg)
    if spec.startswith("bi:"):
        return BiEncoderTeacher(resolve_model(spec.removeprefix("bi:"), "bi-encoder teacher"), cfg)
    if spec.startswith("lm:"):
        return QueryLikelihoodTeacher(resolve_model(spec.removeprefix("lm:"), "query-likelihood teacher"), cfg)
    try:
        path = resolve_model(spec, "cross-encoder teacher")
    except GenqError as exc:
        raise GenqError(f"{exc} Offline alternatives: --teacher lm:google/gemma-3-270m (query likelihood, bundled), "
                        "bm25, bi:sentence-transformers/all-MiniLM-L6-v2 or an ensemble: of them.") from None
    return CrossEncoderTeacher(path, cfg)


def plan_tuples(mine_dir: Path, tuples_per_query: int, seed: int, total: int | None = None) -> tuple[list[Tuple], int]:
    """(query, positive, negative) tuples, round-robin over the queries (every query's first tuple, then every query's
    second, ...): ``tuples_per_query`` each or, with ``total``, ``total`` in all (the first ``total mod queries``
    queries get one more). A query's negatives are successive shuffles of its pool, so each is used once before any
    is used twice; seeded per query, so the plan does not depend on chunking."""
    queries: list[tuple[str, list[str], list[str]]] = []
    without_negatives = 0
    for line in (Path(mine_dir) / "hard-negatives.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        pool = negative_pool(row)
        if pool:
            queries.append((row["qid"], row["positives"], pool))
        else:
            without_negatives += 1
    if total is None:
        counts = [tuples_per_query] * len(queries)
    else:
        counts = [total // len(queries) + (i < total % len(queries)) for i in range(len(queries))] if queries else []
    picks = []
    for (qid, _, pool), count in zip(queries, counts, strict=True):
        rng, drawn = random.Random(f"{seed}:{qid}"), []
        while len(drawn) < count:
            drawn += rng.sample(pool, len(pool))
        picks.append(drawn[:count])
    tuples = [(qid, positives[r % len(positives)], picks[i][r])
              for r in range(max(counts, default=0)) for i, (qid, positives, _) in enumerate(queries) if r < counts[i]]
    return tuples, without_negatives


def run_label(cfg: LabelConfig, corpus: Corpus, generate_dir: Path, mine_dir: Path, stage_dir: Path,
              teacher: Teacher | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Label the planned tuples into ``stage_dir/gpl-training.jsonl`` (qid, positive, negative, margin)."""
    stage_dir = Path(stage_dir)
    queries, _ = read_generated(generate_dir, corpus)
    windows = read_positives(generate_dir)  # passage_windows: a query's positive is its window, as in training
    settings = fingerprint([cfg.model_dump(mode="json", exclude={"device", "batch_size"}), read_manifest(mine_dir)["settings_hash"]])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("label: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    members, weights = teacher_members(cfg)
    tuples, without_negatives = plan_tuples(mine_dir, cfg.tuples_per_query, cfg.seed, cfg.tuples)
    if not tuples:
        raise GenqError(f"{mine_dir}: no query has a mined negative; nothing to label")
    if without_negatives:
        logger.warning("%d queries have no mined negative and are skipped", without_negatives)
    chunk_dir = prepare_chunks(stage_dir, settings, cfg.model_dump(mode="json"), overwrite)
    chunks = [tuples[i : i + cfg.chunk_size] for i in range(0, len(tuples), cfg.chunk_size)]
    todo = [n for n in range(len(chunks)) if not chunk_file(chunk_dir, n).is_file()]
    started, labelled, truncated = time.perf_counter(), 0, 0
    if todo:
        teacher = teacher or load_teacher(cfg, corpus)
        before = teacher.truncated
        progress = tqdm(total=len(tuples), initial=len(tuples) - sum(len(chunks[n]) for n in todo), desc="pseudo-label", unit="tuple")
        for n in todo:
            rows = _label_chunk(chunks[n], queries, corpus, teacher, members, windows)
            write_jsonl(chunk_file(chunk_dir, n), rows)
            labelled += len(rows)
            progress.update(len(rows))
        progress.close()
        truncated = teacher.truncated - before
        if truncated:
            logger.warning("%d teacher inputs had their query (over %d tokens) or passage (over %d tokens) truncated",
                           truncated, cfg.max_query_tokens, cfg.max_length)
    seconds = time.perf_counter() - started
    out = stage_dir / "gpl-training.jsonl"
    scales = None
    if len(members) > 1:
        margins, scales = _combine_chunks(chunk_dir, len(chunks), members, weights, out)
    else:
        margins = [row["margin"] for row in merge_chunks(chunk_dir, len(chunks), out)]
    summary = {"tuples": len(tuples), "queries": len({qid for qid, _, _ in tuples}), "queries_without_negatives": without_negatives,
               "teacher": cfg.teacher, "member_margin_rms": scales,
               "truncated_this_run": truncated, "seconds_this_run": seconds,
               "tuples_per_s": labelled / seconds if labelled and seconds else None,
               "margin_mean": float(np.mean(margins)), "margin_std": float(np.std(margins)),
               "positive_margin_share": float(np.mean(np.asarray(margins) > 0))}
    mark_stage_complete(stage_dir, settings, summary)
    return summary


def _label_chunk(chunk: list[Tuple], queries: dict[str, str], corpus: Corpus, teacher: Teacher,
                 members: list[str], windows: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Score each distinct (query, document) pair of the chunk once, then take the margins (an ensemble's members'
    scores are kept instead, to be combined once every chunk is labelled). A query written for a passage window
    (``windows``) has that window as its positive text."""
    windows = windows or {}
    pairs = list(dict.fromkeys((qid, doc) for qid, pos, neg in chunk for doc in (pos, neg)))
    positive = {qid: pos for qid, pos, _ in chunk}

    def text(qid: str, doc: str) -> str:
        return windows[qid] if qid in windows and doc == positive[qid] else document_text(corpus[doc])

    scores = _score_with_oom_retry(teacher, [(queries[qid], text(qid, doc)) for qid, doc in pairs])
    score = dict(zip(pairs, scores.tolist(), strict=True))
    if scores.ndim == 2:
        return [{"qid": qid, "positive": pos, "negative": neg,
                 "scores": {m: [score[(qid, pos)][k], score[(qid, neg)][k]] for k, m in enumerate(members)}} for qid, pos, neg in chunk]
    return [{"qid": qid, "positive": pos, "negative": neg, "pos_score": score[(qid, pos)], "neg_score": score[(qid, neg)],
             "margin": score[(qid, pos)] - score[(qid, neg)]} for qid, pos, neg in chunk]


def _combine_chunks(chunk_dir: Path, count: int, members: list[str], weights: np.ndarray, out: Path) -> tuple[list[float], dict[str, float]]:
    """Write the ensemble's tuples into ``out``: score = sum over members of weight * member score / RMS of the
    member's margins over all tuples, margin = score(q, p+) - score(q, p-). Returns the margins and each RMS."""

    def chunk_rows() -> Iterator[dict[str, Any]]:
        for n in range(count):
            yield from (json.loads(line) for line in chunk_file(chunk_dir, n).open(encoding="utf-8"))

    squares, n_rows = np.zeros(len(members)), 0
    for row in chunk_rows():
        squares += np.array([(row["scores"][m][0] - row["scores"][m][1]) ** 2 for m in members])
        n_rows += 1
    rms = np.sqrt(squares / max(n_rows, 1))
    factors = weights / np.where(rms > 0, rms, 1.0)  # a member whose margins are all 0 adds nothing either way
    margins: list[float] = []

    def combined() -> Iterator[dict[str, Any]]:
        for row in chunk_rows():
            pos, neg = (float(sum(f * row["scores"][m][side] for f, m in zip(factors, members, strict=True))) for side in (0, 1))
            margins.append(pos - neg)
            yield {"qid": row["qid"], "positive": row["positive"], "negative": row["negative"], "pos_score": pos,
                   "neg_score": neg, "margin": pos - neg, "scores": row["scores"]}

    write_jsonl(out, combined())
    return margins, dict(zip(members, rms.tolist(), strict=True))


def _score_with_oom_retry(teacher: Teacher, pairs: list[tuple[str, str]]) -> np.ndarray:
    """On CUDA out-of-memory, halve the teacher's batch and score again (said once per halving)."""
    while True:
        try:
            return teacher.score(pairs)
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower() or teacher.batch_size == 1:
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            teacher.batch_size //= 2
            logger.warning("out of memory scoring pairs; teacher batch size lowered to %d (label.batch_size)", teacher.batch_size)
