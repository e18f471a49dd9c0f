"""Synthetic query generation (GenQ / GPL stage 1): a seq2seq doc2query model or a few-shot causal LM.

Output in BEIR style inside the stage directory: ``gen-queries.jsonl`` and ``gen-qrels/train.tsv`` (query -> source
document). Work is done in chunks written atomically to ``chunks/``; each chunk is generated with its own seed
(``seed + chunk index``), so an interrupted run resumes where it stopped and gives exactly the output of an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from genq_search.config import GenerateConfig
from genq_search.data import (
    corpus_fingerprint,
    Corpus,
    Qrels,
    Queries,
    chunk_file,
    fingerprint,
    mark_stage_complete,
    prepare_chunks,
    read_manifest,
    read_qrels,
    read_queries,
    stage_is_complete,
    write_jsonl,
    write_qrels,
)
from genq_search.encoders import pick_device
from genq_search.errors import GenqError
from genq_search.models import resolve_model
from genq_search.passages import document_text

logger = logging.getLogger(__name__)

GPL_TOTAL_QUERIES = 250_000
POST_PROCESSING = {"min_query_words", "max_query_words", "filter_top_k", "filter_model"}
DEFAULT_PROMPT = (
    "Example 1:\nDocument: The Manhattan Project was a research and development undertaking during World War II that "
    "produced the first nuclear weapons.\nRelevant query: who led the development of the first nuclear weapons\n\n"
    "Example 2:\nDocument: Vitamin D helps the body absorb calcium; deficiency can lead to soft, weak bones "
    "(rickets in children, osteomalacia in adults).\nRelevant query: what does vitamin d deficiency cause\n\n"
    "Example 3:\nDocument: {document}\nRelevant query:"
)


def read_generated(generate_dir: Path, corpus: Corpus) -> tuple[Queries, Qrels]:
    """Generated queries and their source documents; a source missing from the corpus is an error naming the query."""
    qrels_path = Path(generate_dir) / "gen-qrels" / "train.tsv"
    queries = read_queries(Path(generate_dir) / "gen-queries.jsonl")
    qrels = read_qrels(qrels_path)
    for qid, judged in qrels.items():
        if qid not in queries:
            raise GenqError(f"{qrels_path}: query '{qid}' is not in gen-queries.jsonl")
        missing = [d for d in judged if d not in corpus]
        if missing:
            raise GenqError(f"{qrels_path}: the positive {missing[0]!r} of query '{qid}' is not in the corpus")
    return queries, qrels


class QueryGenerator(Protocol):
    def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]: ...


def _sampling(cfg: GenerateConfig) -> dict[str, Any]:
    return {"do_sample": True, "top_p": cfg.top_p, "top_k": cfg.top_k, "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens}


class Seq2SeqGenerator:
    """doc2query T5/BART (default ``BeIR/query-gen-msmarco-t5-base-v1``)."""

    def __init__(self, path: str, cfg: GenerateConfig):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.cfg, self.device = cfg, pick_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(self.device).eval()

    def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
        import torch

        torch.manual_seed(seed)
        inputs = self.tokenizer(documents, truncation=True, max_length=self.cfg.max_input_tokens, padding=True,
                                return_tensors="pt", return_token_type_ids=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_return_sequences=per_document, **_sampling(self.cfg))
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [texts[i * per_document : (i + 1) * per_document] for i in range(len(documents))]


def load_causal_lm(path: str, device: str) -> tuple[Any, Any]:
    """Tokenizer (left padding) and model of a decoder-only LM from a folder or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    location = Path(path)
    if location.suffix == ".gguf":
        kwargs["gguf_file"], path = location.name, str(location.parent)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()


class CausalGenerator:
    """InPars-style few-shot prompting of a decoder-only LM (HF id, folder, or a ``.gguf`` file)."""

    def __init__(self, path: str, cfg: GenerateConfig):
        self.cfg, self.device = cfg, pick_device(cfg.device)
        self.tokenizer, self.model = load_causal_lm(path, self.device)
        probe = self.tokenizer.decode(self.tokenizer("a\nb", add_special_tokens=False)["input_ids"])
        self.stop = {"stop_strings": ["\n"], "tokenizer": self.tokenizer} if "\n" in probe else {}  # end at the line break
        self.template = cfg.prompt_template or DEFAULT_PROMPT
        if "{document}" not in self.template:
            raise GenqError("the prompt template must contain '{document}'")

    def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
        import torch

        torch.manual_seed(seed)
        truncated = [self._truncate(d) for d in documents]
        prompts = [self.template.replace("{document}", d) for d in truncated]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_return_sequences=per_document, pad_token_id=self.tokenizer.pad_token_id,
                                      **self.stop, **_sampling(self.cfg))
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        texts = [t.split("\n")[0] for t in texts]  # the query ends at the first line break
        return [texts[i * per_document : (i + 1) * per_document] for i in range(len(documents))]

    def _truncate(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=self.cfg.max_input_tokens)["input_ids"]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_generator(cfg: GenerateConfig) -> QueryGenerator:
    path = resolve_model(cfg.model, "query generator")
    kind = cfg.kind
    if kind == "auto":
        if path.endswith(".gguf"):
            kind = "causal"
        else:
            from transformers import AutoConfig

            kind = "seq2seq" if AutoConfig.from_pretrained(path).is_encoder_decoder else "causal"
    if kind not in {"seq2seq", "causal"}:
        raise GenqError(f"unknown generator kind '{cfg.kind}' (seq2seq, causal or auto)")
    return Seq2SeqGenerator(path, cfg) if kind == "seq2seq" else CausalGenerator(path, cfg)


def plan_documents(corpus: Corpus, cfg: GenerateConfig) -> tuple[list[str], int]:
    """Documents to generate for and queries per document (GPL rule for ``auto``), reproducible for a seed."""
    ids = sorted(corpus)
    if cfg.queries_per_passage == "auto":
        per_document = max(3, math.ceil(GPL_TOTAL_QUERIES / len(ids)))
        if 3 * len(ids) > GPL_TOTAL_QUERIES:
            ids = sorted(random.Random(cfg.seed).sample(ids, GPL_TOTAL_QUERIES // 3))
    else:
        try:
            per_document = int(cfg.queries_per_passage)
        except ValueError:
            raise GenqError(f"queries_per_passage must be an integer or 'auto', got {cfg.queries_per_passage!r}") from None
        if per_document < 1:
            raise GenqError("queries_per_passage must be at least 1")
    if cfg.max_passages is not None and len(ids) > cfg.max_passages:
        ids = sorted(random.Random(cfg.seed).sample(ids, cfg.max_passages))
    return ids, per_document


@dataclass
class CleanStats:
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "too_short": 0, "too_long": 0, "duplicate": 0, "degenerate": 0})


def round_trip_filter(generated: list[tuple[str, str, str]], corpus: Corpus, cfg: GenerateConfig, cache_dir: Path,
                      stats: CleanStats) -> list[tuple[str, str, str]]:
    """Keep a query only if its source document ranks in the top ``filter_top_k`` for it under ``filter_model``
    (round-trip consistency, Alberti et al. 2019; Promptagator)."""
    from genq_search.backends.embedded import EmbeddedBackend
    from genq_search.encoders import encode_passages_cached, load_encoder
    from genq_search.passages import split_documents

    encoder = load_encoder(cfg.filter_model, cfg.device)
    passages = split_documents(corpus, encoder.tokenizer, encoder.max_seq_length, 32)
    backend = EmbeddedBackend()
    backend.index(corpus, passages, encode_passages_cached(encoder, [p.text for p in passages], cache_dir))
    qids = [qid for qid, _, _ in generated]
    hits = backend.vector_search(qids, encoder.encode_queries([q for _, q, _ in generated], progress=True), cfg.filter_top_k or 1)
    kept = [row for row in generated if row[2] in hits[row[0]]]
    stats.dropped["round_trip"] = len(generated) - len(kept)
    stats.kept = len(kept)
    return kept


def clean_queries(candidates: list[str], cfg: GenerateConfig, stats: CleanStats) -> list[str]:
    """Strip, drop empty / too short / too long / degenerate (repetitive) and duplicate queries of one document."""
    kept: list[str] = []
    seen: set[str] = set()
    for raw in candidates:
        query = " ".join(raw.replace("Relevant query:", "").split()).strip(" \"'")
        words = query.split()
        reason = None
        if not query:
            reason = "empty"
        elif len(words) < cfg.min_query_words:
            reason = "too_short"
        elif len(words) > cfg.max_query_words:
            reason = "too_long"
        elif len(words) >= 4 and len({w.lower() for w in words}) / len(words) < 0.5:
            reason = "degenerate"
        elif re.sub(r"\W+", " ", query.lower()).strip() in seen:
            reason = "duplicate"
        if reason:
            stats.dropped[reason] += 1
            continue
        seen.add(re.sub(r"\W+", " ", query.lower()).strip())
        kept.append(query)
        stats.kept += 1
    return kept


def run_generate(cfg: GenerateConfig, corpus: Corpus, stage_dir: Path, generator: QueryGenerator | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Generate queries for the corpus into ``stage_dir``; finished chunks are reused on a rerun."""
    stage_dir = Path(stage_dir)
    ids, per_document = plan_documents(corpus, cfg)
    corpus_hash = corpus_fingerprint(corpus)
    settings = fingerprint([cfg.model_dump(mode="json", exclude={"device", "batch_size"}), corpus_hash])
    # chunks hold raw generations: clean-up and filter settings may change without regenerating them
    chunk_settings = fingerprint([cfg.model_dump(mode="json", exclude=POST_PROCESSING | {"device", "batch_size"}), corpus_hash])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("generate: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    chunk_dir = prepare_chunks(stage_dir, chunk_settings, cfg.model_dump(mode="json"), overwrite)
    chunks = [ids[i : i + cfg.chunk_size] for i in range(0, len(ids), cfg.chunk_size)]
    todo = [n for n in range(len(chunks)) if not chunk_file(chunk_dir, n).is_file()]
    started, generated_docs = time.perf_counter(), 0
    if todo:
        generator = generator or load_generator(cfg)
        progress = tqdm(total=len(ids), initial=sum(len(chunks[n]) for n in range(len(chunks)) if n not in todo),
                        desc="generate queries", unit="doc")
        for n in todo:
            rows = []
            for start in range(0, len(chunks[n]), cfg.batch_size):
                batch = chunks[n][start : start + cfg.batch_size]
                seed = cfg.seed + n * 100_003 + start
                outputs = _generate_with_oom_retry(generator, [document_text(corpus[d]) for d in batch], per_document, seed)
                rows += [{"doc_id": d, "candidates": qs} for d, qs in zip(batch, outputs, strict=True)]
                progress.update(len(batch))
            write_jsonl(chunk_file(chunk_dir, n), rows)
            generated_docs += len(chunks[n])
        progress.close()
    seconds = time.perf_counter() - started
    stats = CleanStats()
    generated: list[tuple[str, str, str]] = []  # (qid, query, doc_id)
    for n in range(len(chunks)):
        for line in chunk_file(chunk_dir, n).open(encoding="utf-8"):
            row = json.loads(line)
            for i, query in enumerate(clean_queries(row["candidates"], cfg, stats)):
                generated.append((f"genq-{row['doc_id']}-{i}", query, row["doc_id"]))
    if cfg.filter_top_k:
        generated = round_trip_filter(generated, corpus, cfg, stage_dir.parent / "embeddings", stats)
    qrels: dict[str, dict[str, int]] = {qid: {doc_id: 1} for qid, _, doc_id in generated}
    write_jsonl(stage_dir / "gen-queries.jsonl", ({"_id": qid, "text": query} for qid, query, _ in generated))
    write_qrels(stage_dir / "gen-qrels" / "train.tsv", qrels)
    summary = {
        "documents": len(ids), "queries_per_passage": per_document, "queries": stats.kept, "dropped": stats.dropped,
        "generator": cfg.model, "seconds_this_run": seconds,
        "passages_per_s": generated_docs / seconds if generated_docs and seconds else None,
        "queries_per_s": generated_docs * per_document / seconds if generated_docs and seconds else None,
    }
    if not qrels:
        raise GenqError(f"no query survived clean-up ({stats.dropped}); check the generator and the length bounds")
    mark_stage_complete(stage_dir, settings, summary)
    return summary


def _generate_with_oom_retry(generator: QueryGenerator, texts: list[str], per_document: int, seed: int) -> list[list[str]]:
    """On CUDA out-of-memory, halve the batch (same seed per half) and say so."""
    try:
        return generator.generate(texts, per_document, seed)
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower() or len(texts) == 1:
            raise
        import torch

        torch.cuda.empty_cache()
        half = len(texts) // 2
        logger.warning("out of memory generating %d documents at once; retrying in batches of %d (lower --batch-size)", len(texts), half)
        return _generate_with_oom_retry(generator, texts[:half], per_document, seed) + \
            _generate_with_oom_retry(generator, texts[half:], per_document, seed + 1)
