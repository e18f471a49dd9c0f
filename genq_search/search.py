"""Retrieval: build (or reuse) an index for a collection and an encoder, then run BM25, dense or hybrid search."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from genq_search.config import (
    BackendConfig,
    CompareConfig,
    CorpusConfig,
    EncoderConfig,
    Engine,
)
from genq_search.data import (
    Collection,
    Queries,
    Results,
    corpus_fingerprint,
    fingerprint,
    mark_stage_complete,
    stage_is_complete,
)
from genq_search.encoders import Encoder, encode_passages_cached, load_encoder
from genq_search.engines.base import SearchBackend
from genq_search.errors import GenqError
from genq_search.fusion import FusionMethod, Retrieval
from genq_search.passages import split_documents

logger = logging.getLogger(__name__)


class Mode(StrEnum):
    BM25 = "bm25"
    DENSE = "dense"
    HYBRID_RRF = "hybrid-rrf"
    HYBRID_MINMAX = "hybrid-minmax"
    HYBRID_ZSCORE = "hybrid-zscore"
    HYBRID_TUNED = "hybrid-tuned"  # the fusion chosen on the synthetic dev set (labelfree.tune_fusion)

    @property
    def fusion(self) -> FusionMethod | None:
        return {
            Mode.HYBRID_RRF: FusionMethod.RRF,
            Mode.HYBRID_MINMAX: FusionMethod.MINMAX,
            Mode.HYBRID_ZSCORE: FusionMethod.ZSCORE,
        }.get(self)


def parse_modes(modes: list[str]) -> list[Mode]:
    try:
        return [Mode(m) for m in modes]
    except ValueError:
        bad = next(m for m in modes if m not in Mode._value2member_map_)
        raise GenqError(f"unknown retrieval mode '{bad}' (choose from {', '.join(m.value for m in Mode)})") from None


@dataclass
class Timings:
    encode_s: float = 0.0
    index_s: float = 0.0
    passages: int = 0


def build_index(
    collection: Collection,
    encoder: Encoder | None,
    corpus_cfg: CorpusConfig,
    encoder_cfg: EncoderConfig,
    backend_cfg: BackendConfig,
    run_dir: Path,
    label: str,
    separate_index: bool = False,
) -> tuple[SearchBackend, Timings]:
    """Index the collection (BM25 text + passage vectors when an encoder is given) in the configured backend.

    The embedded index is persisted under ``run_dir/index/<label>`` and reused when its settings match. An
    OpenSearch index records in ``_meta`` which model, passage settings and corpus wrote it and is searched only
    with exactly those; ``separate_index`` (several models compared) gives each model ``<index>-<label>``.
    """
    timings = Timings()
    max_tokens = corpus_cfg.passage_tokens if corpus_cfg.passage_tokens is not None else (encoder.max_seq_length if encoder else 0)
    passages = split_documents(collection.corpus, encoder.tokenizer if encoder else None, max_tokens, corpus_cfg.passage_stride)
    timings.passages = len(passages)
    vectors = None
    if encoder is not None:
        start = time.perf_counter()
        vectors = encode_passages_cached(encoder, [p.text for p in passages], run_dir / "embeddings", encoder_cfg.batch_size,
                                         encoder_cfg.ray, encoder_cfg.ray_workers)
        timings.encode_s = time.perf_counter() - start
    start = time.perf_counter()
    if backend_cfg.engine is not Engine.EMBEDDED:
        from genq_search.engines import cluster_backend

        name = backend_cfg.index or f"genq-{corpus_fingerprint(collection.corpus)[:8]}-{label}"
        if backend_cfg.index and separate_index:
            name = f"{backend_cfg.index}-{label}"
        meta: dict[str, object] = {"corpus": corpus_fingerprint(collection.corpus)}  # BM25 alone needs nothing more
        if encoder is not None:
            meta.update({"model": encoder.name, "model_fingerprint": encoder.fingerprint(), "passage_tokens": max_tokens,
                         "passage_stride": corpus_cfg.passage_stride})
        backend: SearchBackend = cluster_backend(backend_cfg, name)
        if not backend.reusable(len(collection.corpus), encoder.dim if encoder else None, meta):
            backend.index(collection.corpus, passages, vectors, meta)
    else:
        from genq_search.engines.embedded import EmbeddedBackend

        index_dir = run_dir / "index" / label
        settings = fingerprint(
            [corpus_fingerprint(collection.corpus), encoder.fingerprint() if encoder else None, max_tokens,
             corpus_cfg.passage_stride, backend_cfg.token_pattern, backend_cfg.bm25_k1, backend_cfg.bm25_b]
        )
        if stage_is_complete(index_dir, settings):
            backend = EmbeddedBackend.load(index_dir)
        else:
            backend = EmbeddedBackend(backend_cfg.token_pattern, backend_cfg.bm25_k1, backend_cfg.bm25_b)
            backend.index(collection.corpus, passages, vectors)
            backend.save(index_dir, {"model": encoder.name if encoder else None})
            mark_stage_complete(index_dir, settings, {"documents": backend.count(), "passages": len(passages)})
    timings.index_s = time.perf_counter() - start
    return backend, timings


def search(
    backend: SearchBackend, retrieval: Retrieval, queries: Queries, encoder: Encoder | None, cfg: CompareConfig,
    batch_size: int = 64,
) -> Results:
    """Rank the documents for every query (a document by its best passage) as ``retrieval`` says: BM25, dense or a
    fusion of both over the top ``cfg.fusion_depth`` of each."""
    if retrieval.method == "bm25":
        return backend.lexical_search(queries, cfg.k)
    if retrieval.method == "dense" and backend.embeds_queries:
        return backend.neural_search(queries, cfg.k)
    if encoder is None:
        raise GenqError(f"'{retrieval.name}' needs a bi-encoder")
    qids = list(queries)
    vectors = encoder.encode_queries([queries[q] for q in qids], batch_size=batch_size)
    if retrieval.fusion is None:
        return backend.vector_search(qids, vectors, cfg.k)
    return backend.hybrid_search({q: queries[q] for q in qids}, vectors, cfg.k, method=retrieval.fusion,
                                 weights=retrieval.weights, rrf_k=retrieval.rrf_k or cfg.rrf_k, depth=cfg.fusion_depth)


def load_encoders(models: dict[str, str], encoder_cfg: EncoderConfig) -> dict[str, Encoder]:
    return {
        label: load_encoder(spec, encoder_cfg.device, encoder_cfg.normalize, encoder_cfg.max_seq_length, encoder_cfg.dtype)
        for label, spec in models.items()
    }
