"""Drivers that chain stages: ``compare`` (retrieval comparison) and ``adapt`` (generate → train → compare)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from genq_search.config import RunConfig
from genq_search.data import Collection, load_collection, write_json
from genq_search.errors import GenqError
from genq_search.evaluate import Comparison
from genq_search.search import Mode, build_index, load_encoders, parse_modes, search

logger = logging.getLogger(__name__)


def load_run_collection(cfg: RunConfig, with_qrels: bool = True) -> Collection:
    c = cfg.corpus
    return load_collection(c.path, c.split, c.id_field, c.title_field, c.text_field, with_qrels=with_qrels)


def run_compare(cfg: RunConfig, out_dir: Path | None = None) -> tuple[Comparison, dict[str, Any]]:
    """Evaluate every configured mode for every configured model; write the report into ``out_dir``."""
    started = time.perf_counter()
    out_dir = out_dir or cfg.run_dir / "compare"
    modes = parse_modes(cfg.compare.modes)
    collection = load_run_collection(cfg)
    comparison = Comparison(collection.qrels, collection.queries, cfg.compare.metrics, cfg.compare.baseline)
    summary: dict[str, Any] = {"documents": len(collection.corpus), "queries": len(collection.queries), "stages_s": {}, "runs": {}}

    dense_modes = [m for m in modes if m is not Mode.BM25]
    encoders = load_encoders(cfg.compare.models, cfg.encoder) if dense_modes else {"lexical": None}
    for position, (label, encoder) in enumerate(encoders.items()):
        backend, timings = build_index(collection, encoder, cfg.corpus, cfg.encoder, cfg.backend, cfg.run_dir, label)
        summary["stages_s"][f"index-{label}"] = timings.index_s
        if encoder is not None:
            summary["stages_s"][f"encode-{label}"] = timings.encode_s
            summary.setdefault("passages", {})[label] = timings.passages
            if timings.encode_s > 0.5:
                summary.setdefault("encode_passages_per_s", {})[label] = timings.passages / timings.encode_s
        if position == 0 and Mode.BM25 in modes:  # BM25 does not depend on the model: run it once
            _timed_search(comparison, summary, "bm25", backend, Mode.BM25, collection, None, cfg, model=None)
        for mode in dense_modes:
            name = f"{mode.value}-{label}"
            _timed_search(comparison, summary, name, backend, mode, collection, encoder, cfg, model=encoder.name)

    contrast = tuple(cfg.compare.contrast) if cfg.compare.contrast else None
    comparison.write(out_dir, contrast)  # type: ignore[arg-type]
    summary["wall_s"] = time.perf_counter() - started
    write_json(out_dir / "summary.json", summary)
    return comparison, summary


def _timed_search(
    comparison: Comparison, summary: dict[str, Any], name: str, backend: Any, mode: Mode,
    collection: Collection, encoder: Any, cfg: RunConfig, model: str | None,
) -> None:
    start = time.perf_counter()
    results = search(backend, mode, collection.queries, encoder, cfg.compare, cfg.encoder.batch_size)
    elapsed = time.perf_counter() - start
    metrics = comparison.add(name, results, backend=backend.name, model=model)
    summary["runs"][name] = {"search_s": elapsed, "metrics": metrics}
    logger.info("%s: nDCG@10 %.4f (%.1fs)", name, metrics.get("ndcg@10", float("nan")), elapsed)


ADAPT_METHODS = ("genq", "gpl", "tsdae+gpl")


def lexical_backend(cfg: RunConfig, collection: Collection) -> Any:
    """A BM25-only index of the corpus in the configured backend (for mining BM25 negatives)."""
    bm25_collection = Collection(collection.corpus, {}, {})
    corpus_cfg = cfg.corpus.model_copy(update={"passage_tokens": 0})
    return build_index(bm25_collection, None, corpus_cfg, cfg.encoder, cfg.backend, cfg.run_dir, "lexical")[0]


def run_gpl_stages(cfg: RunConfig, collection: Collection, base_model: str, overwrite: bool = False) -> dict[str, Any]:
    """mine -> label -> train (MarginMSE) on the generated queries in ``run_dir/generate``."""
    from genq_search.label import run_label
    from genq_search.mine import run_mine
    from genq_search.train import run_train, train_stage_dir

    stages: dict[str, Any] = {}
    generate_dir = cfg.run_dir / "generate"
    start = time.perf_counter()
    bm25 = lexical_backend(cfg, collection) if cfg.mine.bm25 else None
    stages["mine"] = run_mine(cfg.mine, collection.corpus, generate_dir, cfg.run_dir / "mine", bm25, overwrite=overwrite)
    stages["mine_s"] = time.perf_counter() - start
    start = time.perf_counter()
    stages["label"] = run_label(cfg.label, collection.corpus, generate_dir, cfg.run_dir / "mine", cfg.run_dir / "label", overwrite=overwrite)
    stages["label_s"] = time.perf_counter() - start
    start = time.perf_counter()
    train_cfg = cfg.train.model_copy(update={"method": "gpl", "base_model": base_model})
    stages["train"] = run_train(train_cfg, collection.corpus, generate_dir, train_stage_dir(cfg.run_dir, "gpl"), label_dir=cfg.run_dir / "label",
                                eval_collection=eval_collection(cfg), overwrite=overwrite)
    stages["train_s"] = time.perf_counter() - start
    return stages


def eval_collection(cfg: RunConfig) -> Collection | None:
    """Labelled queries for evaluation during training (``train.eval_split``), if configured."""
    if not cfg.train.eval_split:
        return None
    c = cfg.corpus
    return load_collection(c.path, cfg.train.eval_split, c.id_field, c.title_field, c.text_field)


def run_adapt(cfg: RunConfig, overwrite: bool = False) -> tuple[Comparison, dict[str, Any]]:
    """corpus -> generate -> [TSDAE] -> train (GenQ) or mine -> label -> train (GPL) -> compare; finished stages are skipped.

    The comparison covers BM25, the zero-shot base model, the adapted model(s) and their hybrids with BM25.
    """
    from genq_search.generate import run_generate
    from genq_search.pretrain import run_pretrain
    from genq_search.train import run_train, train_stage_dir

    if cfg.method not in ADAPT_METHODS:
        raise GenqError(f"unknown adapt method '{cfg.method}' ({', '.join(ADAPT_METHODS)})")
    collection = load_run_collection(cfg, with_qrels=True)
    stages: dict[str, Any] = {"method": cfg.method}
    start = time.perf_counter()
    stages["generate"] = run_generate(cfg.generate, collection.corpus, cfg.run_dir / "generate", overwrite=overwrite)
    stages["generate_s"] = time.perf_counter() - start
    models = {"zeroshot": cfg.train.base_model}
    base = cfg.train.base_model
    if cfg.method.startswith("tsdae+"):
        start = time.perf_counter()
        stages["pretrain"] = run_pretrain(cfg.pretrain, collection.corpus, base, cfg.run_dir / "pretrain-tsdae", overwrite=overwrite)
        stages["pretrain_s"] = time.perf_counter() - start
        base = models["tsdae"] = stages["pretrain"]["model"]
    if cfg.method == "genq":
        start = time.perf_counter()
        train_cfg = cfg.train.model_copy(update={"method": "genq"})
        stages["train"] = run_train(train_cfg, collection.corpus, cfg.run_dir / "generate", train_stage_dir(cfg.run_dir, "genq"),
                                    eval_collection=eval_collection(cfg), overwrite=overwrite)
        stages["train_s"] = time.perf_counter() - start
    else:
        stages.update(run_gpl_stages(cfg, collection, base, overwrite))
    models[cfg.method.replace("+", "-")] = stages["train"]["model"]
    compare_cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"models": models})})
    comparison, summary = run_compare(compare_cfg)
    summary["adapt"] = stages
    write_json(cfg.run_dir / "adapt-summary.json", summary)
    return comparison, summary
