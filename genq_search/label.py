"""GPL stage 3: pseudo-labels. Each training tuple (query, positive, negative sampled uniformly from the mined pool)
gets the teacher's margin ``score(q, p+) - score(q, p-)``. Teachers: a cross-encoder (GPL's default
``cross-encoder/ms-marco-MiniLM-L-6-v2``) or, with ``lm:<model>``, query likelihood under a causal LM
(mean per-token ``log P(query | document)``, the UPR approach), which works offline with the bundled Gemma-3 270M.
Tuples are labelled in chunks written atomically, so an interrupted run resumes to identical output."""

from __future__ import annotations

import json
import logging
import random
import time
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
from genq_search.generate import read_generated
from genq_search.mine import negative_pool
from genq_search.models import resolve_model
from genq_search.passages import document_text

logger = logging.getLogger(__name__)

Tuple = tuple[str, str, str]  # (query id, positive doc id, negative doc id)


class Teacher(Protocol):
    truncated: int
    batch_size: int

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One relevance score per (query, passage) pair; higher is more relevant."""
        ...


class CrossEncoderTeacher:
    """A sentence-transformers cross-encoder; raw logits (no sigmoid), as GPL uses them."""

    def __init__(self, path: str, cfg: LabelConfig):
        from sentence_transformers import CrossEncoder

        self.cfg, self.batch_size = cfg, cfg.batch_size
        self.model = CrossEncoder(path, device=pick_device(cfg.device), max_length=cfg.max_length)
        limit = getattr(self.model.model.config, "max_position_embeddings", None) or cfg.max_length
        self.max_length = min(cfg.max_length, limit)
        if self.max_length < cfg.max_length:
            logger.warning("the teacher has %d positions; label.max_length %d reduced to it", limit, cfg.max_length)
            self.model.max_length = self.max_length
        self.truncated = 0

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        lengths = self.model.tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation=False)["input_ids"]
        self.truncated += sum(len(ids) > self.max_length for ids in lengths)
        scores = self.model.predict([list(p) for p in pairs], batch_size=self.batch_size, show_progress_bar=False,
                                    activation_fn=torch.nn.Identity(), convert_to_numpy=True)
        return np.asarray(scores, dtype=np.float64).reshape(len(pairs))


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
            self.truncated += 1
            passage = tok.decode(passage_ids[: self.cfg.max_length], skip_special_tokens=True)
        prompt_ids = tok(self.cfg.lm_prompt.replace("{document}", passage))["input_ids"]
        query_ids = tok(" " + query.strip(), add_special_tokens=False)["input_ids"]
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


def load_teacher(cfg: LabelConfig) -> Teacher:
    if cfg.teacher.startswith("lm:"):
        return QueryLikelihoodTeacher(resolve_model(cfg.teacher.removeprefix("lm:"), "query-likelihood teacher"), cfg)
    try:
        path = resolve_model(cfg.teacher, "cross-encoder teacher")
    except GenqError as exc:
        raise GenqError(f"{exc} Offline alternative: --teacher lm:google/gemma-3-270m (query likelihood, bundled).") from None
    return CrossEncoderTeacher(path, cfg)


def plan_tuples(mine_dir: Path, tuples_per_query: int, seed: int) -> tuple[list[Tuple], int]:
    """(query, positive, negative) tuples: per query, negatives drawn uniformly without replacement from its pool
    (with replacement once the pool is used up); seeded per query, so the plan does not depend on chunking."""
    tuples: list[Tuple] = []
    without_negatives = 0
    for line in (Path(mine_dir) / "hard-negatives.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        pool = negative_pool(row)
        if not pool:
            without_negatives += 1
            continue
        rng = random.Random(f"{seed}:{row['qid']}")
        picks = rng.sample(pool, min(tuples_per_query, len(pool)))
        picks += [rng.choice(pool) for _ in range(tuples_per_query - len(picks))]
        positives = row["positives"]
        tuples += [(row["qid"], positives[i % len(positives)], neg) for i, neg in enumerate(picks)]
    return tuples, without_negatives


def run_label(cfg: LabelConfig, corpus: Corpus, generate_dir: Path, mine_dir: Path, stage_dir: Path,
              teacher: Teacher | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Label the planned tuples into ``stage_dir/gpl-training.jsonl`` (qid, positive, negative, margin)."""
    stage_dir = Path(stage_dir)
    queries, _ = read_generated(generate_dir, corpus)
    settings = fingerprint([cfg.model_dump(mode="json", exclude={"device", "batch_size"}), read_manifest(mine_dir)["settings_hash"]])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("label: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    tuples, without_negatives = plan_tuples(mine_dir, cfg.tuples_per_query, cfg.seed)
    if not tuples:
        raise GenqError(f"{mine_dir}: no query has a mined negative; nothing to label")
    if without_negatives:
        logger.warning("%d queries have no mined negative and are skipped", without_negatives)
    chunk_dir = prepare_chunks(stage_dir, settings, cfg.model_dump(mode="json"), overwrite)
    chunks = [tuples[i : i + cfg.chunk_size] for i in range(0, len(tuples), cfg.chunk_size)]
    todo = [n for n in range(len(chunks)) if not chunk_file(chunk_dir, n).is_file()]
    started, labelled, truncated = time.perf_counter(), 0, 0
    if todo:
        teacher = teacher or load_teacher(cfg)
        before = teacher.truncated
        progress = tqdm(total=len(tuples), initial=len(tuples) - sum(len(chunks[n]) for n in todo), desc="pseudo-label", unit="tuple")
        for n in todo:
            rows = _label_chunk(chunks[n], queries, corpus, teacher)
            write_jsonl(chunk_file(chunk_dir, n), rows)
            labelled += len(rows)
            progress.update(len(rows))
        progress.close()
        truncated = teacher.truncated - before
        if truncated:
            logger.warning("%d teacher inputs were longer than %d tokens and were truncated", truncated, cfg.max_length)
    seconds = time.perf_counter() - started
    margins = [row["margin"] for row in merge_chunks(chunk_dir, len(chunks), stage_dir / "gpl-training.jsonl")]
    summary = {"tuples": len(tuples), "queries_without_negatives": without_negatives, "teacher": cfg.teacher,
               "truncated_this_run": truncated, "seconds_this_run": seconds,
               "tuples_per_s": labelled / seconds if labelled and seconds else None,
               "margin_mean": float(np.mean(margins)), "margin_std": float(np.std(margins)),
               "positive_margin_share": float(np.mean(np.asarray(margins) > 0))}
    mark_stage_complete(stage_dir, settings, summary)
    return summary


def _label_chunk(chunk: list[Tuple], queries: dict[str, str], corpus: Corpus, teacher: Teacher) -> list[dict[str, Any]]:
    """Score each distinct (query, document) pair of the chunk once, then take the margins."""
    pairs = list(dict.fromkeys((qid, doc) for qid, pos, neg in chunk for doc in (pos, neg)))
    scores = _score_with_oom_retry(teacher, [(queries[qid], document_text(corpus[doc])) for qid, doc in pairs])
    score = dict(zip(pairs, scores.tolist(), strict=True))
    return [{"qid": qid, "positive": pos, "negative": neg, "pos_score": score[(qid, pos)], "neg_score": score[(qid, neg)],
             "margin": score[(qid, pos)] - score[(qid, neg)]} for qid, pos, neg in chunk]


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
