"""GPL stage 2: hard-negative mining. For every generated query, the top-k documents of one or more dense retrievers
(and optionally BM25 through the configured backend), minus the query's own positive, are stored as candidate
negatives (ids only) in ``hard-negatives.jsonl``. Work is chunked and written atomically, so a rerun resumes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genq_search.config import MineConfig
from genq_search.data import (
    Corpus,
    Qrels,
    Queries,
    chunk_file,
    corpus_fingerprint,
    fingerprint,
    mark_stage_complete,
    merge_chunks,
    prepare_chunks,
    read_manifest,
    stage_is_complete,
    write_jsonl,
)
from genq_search.encoders import Encoder, encode_passages_cached, load_encoder
from genq_search.engines.base import SearchBackend
from genq_search.engines.embedded import exact_top_k
from genq_search.errors import GenqError
from genq_search.generate import read_generated
from genq_search.passages import document_text

logger = logging.getLogger(__name__)


def run_mine(cfg: MineConfig, corpus: Corpus, generate_dir: Path, stage_dir: Path,
             bm25_backend: SearchBackend | None = None, overwrite: bool = False, ray: str | None = None,
             ray_workers: int | None = None) -> dict[str, Any]:
    """Mine ``cfg.negatives`` negatives per query and retriever into ``stage_dir/hard-negatives.jsonl``; ``ray``: the
    retrievers encode the corpus on that Ray cluster (``encoder.ray``)."""
    stage_dir = Path(stage_dir)
    queries, qrels = read_generated(generate_dir, corpus)
    if cfg.bm25 and bm25_backend is None:
        raise GenqError("mine.bm25 is set but no lexical backend was given")
    if len(corpus) < 2:
        raise GenqError("mining needs at least 2 documents (a positive and a negative)")
    negatives = cfg.negatives
    if negatives > len(corpus) - 1:
        negatives = len(corpus) - 1
        logger.warning("mine.negatives %d exceeds the %d other documents of the corpus; mining %d negatives per query",
                       cfg.negatives, len(corpus) - 1, negatives)
    sources = [*cfg.retrievers, *(["bm25"] if cfg.bm25 else [])]
    if not sources:
        raise GenqError("no retriever to mine with: set mine.retrievers and/or mine.bm25")
    settings = fingerprint([cfg.hashed({"device", "batch_size"}), negatives,
                            read_manifest(generate_dir).get("settings_hash"), corpus_fingerprint(corpus)])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("mine: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    chunk_dir = prepare_chunks(stage_dir, settings, cfg.model_dump(mode="json"), overwrite)

    qids = list(qrels)
    chunks = [qids[i : i + cfg.chunk_size] for i in range(0, len(qids), cfg.chunk_size)]
    todo = [n for n in range(len(chunks)) if not chunk_file(chunk_dir, n).is_file()]
    started = time.perf_counter()
    if todo:
        doc_ids = list(corpus)  # corpus order: the same texts as an unsplit index, so the embedding cache is shared
        dense = _load_dense(cfg, corpus, doc_ids, stage_dir.parent / "embeddings", ray, ray_workers)
        for n in tqdm(todo, desc="mine negatives", unit="chunk"):
            rows = _mine_chunk(chunks[n], queries, qrels, dense, doc_ids, bm25_backend if cfg.bm25 else None, negatives, cfg.batch_size)
            write_jsonl(chunk_file(chunk_dir, n), rows)
    seconds = time.perf_counter() - started
    pool_sizes = [len(negative_pool(row)) for row in merge_chunks(chunk_dir, len(chunks), stage_dir / "hard-negatives.jsonl")]
    summary = {"queries": len(qids), "retrievers": sources, "negatives": negatives, "seconds_this_run": seconds,
               "mean_distinct_negatives": float(np.mean(pool_sizes)) if pool_sizes else 0.0,
               "queries_without_negatives": int(sum(1 for s in pool_sizes if s == 0))}
    mark_stage_complete(stage_dir, settings, summary)
    return summary


def negative_pool(row: dict[str, Any]) -> list[str]:
    """The distinct negatives of one mined row across retrievers, in retriever order."""
    return list(dict.fromkeys(doc for ranked in row["negatives"].values() for doc in ranked))


def _load_dense(cfg: MineConfig, corpus: Corpus, doc_ids: list[str], cache_dir: Path, ray: str | None = None,
                ray_workers: int | None = None) -> list[tuple[str, Encoder, np.ndarray]]:
    """Each retriever with its document matrix (one truncated passage per document, as in GPL); cached on disk."""
    texts = [document_text(corpus[d]) for d in doc_ids]
    dense = []
    for spec in cfg.retrievers:
        try:
            encoder = load_encoder(spec, cfg.device)
        except GenqError as exc:
            raise GenqError(f"{exc} Offline alternative: --retriever sentence-transformers/all-MiniLM-L6-v2 (bundled).") from None
        dense.append((spec, encoder, encode_passages_cached(encoder, texts, cache_dir, cfg.batch_size, ray, ray_workers)))
    return dense


def _mine_chunk(qids: list[str], queries: Queries, qrels: Qrels, dense: list[tuple[str, Encoder, np.ndarray]],
                doc_ids: list[str], bm25: SearchBackend | None, negatives: int, batch_size: int) -> list[dict[str, Any]]:
    depth = negatives + max(len(qrels[q]) for q in qids)  # room for the positives that get removed
    ranked: dict[str, dict[str, list[str]]] = {q: {} for q in qids}
    for name, encoder, matrix in dense:
        vectors = encoder.encode_queries([queries[q] for q in qids], batch_size=batch_size)
        _, rows = exact_top_k(vectors.astype(np.float32), matrix, min(depth, len(doc_ids)))
        for qid, hit_rows in zip(qids, rows, strict=True):
            ranked[qid][name] = [doc_ids[r] for r in hit_rows]
    if bm25 is not None:
        hits = bm25.lexical_search({q: queries[q] for q in qids}, depth)
        for qid in qids:
            ranked[qid]["bm25"] = [d for d, _ in sorted(hits.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))]
    return [{"qid": q, "positives": sorted(qrels[q]),
             "negatives": {name: [d for d in docs if d not in qrels[q]][:negatives] for name, docs in ranked[q].items()}}
            for q in qids]
