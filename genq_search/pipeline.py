"""Drivers that chain stages: ``compare`` (retrieval comparison) and ``adapt`` (generate → [pretrain →] [mine → label
→] train → compare → model gate)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from genq_search.config import RunConfig
from genq_search.data import Collection, Results, write_json
from genq_search.errors import GenqError
from genq_search.evaluate import Comparison, mean_scores
from genq_search.fusion import Retrieval
from genq_search.search import Mode, build_index, load_encoders, parse_modes, search

logger = logging.getLogger(__name__)


def load_run_collection(cfg: RunConfig, with_qrels: bool = True) -> Collection:
    """The run's documents (BEIR folder or live index) and, when asked and configured, its labelled queries."""
    from genq_search.sources import load_source_collection

    return load_source_collection(cfg.corpus, cfg.backend, with_qrels=with_qrels)


def generation_windows(cfg: RunConfig) -> Any:
    """How the index will split documents (``passages.PassageWindows``) when ``generate.passage_windows``: the base
    model's tokenizer, ``corpus.passage_tokens`` or the max sequence length the trained model is indexed with
    (``encoder.max_seq_length``, else ``train.max_seq_length`` capped by the model), ``corpus.passage_stride``."""
    if not cfg.generate.passage_windows:
        return None
    from genq_search.data import fingerprint
    from genq_search.encoders import SentenceTransformerEncoder, model_fingerprint
    from genq_search.passages import PassageWindows
    from genq_search.train import set_max_seq_length

    encoder = SentenceTransformerEncoder(cfg.train.base_model, device="cpu")
    set_max_seq_length(encoder.model, cfg.encoder.max_seq_length or cfg.train.max_seq_length)
    tokens = cfg.corpus.passage_tokens if cfg.corpus.passage_tokens is not None else encoder.model.max_seq_length
    key = fingerprint([model_fingerprint(encoder.path), tokens, cfg.corpus.passage_stride])
    return PassageWindows(encoder.tokenizer, tokens, cfg.corpus.passage_stride, key)


def run_compare(cfg: RunConfig, out_dir: Path | None = None, gate: tuple[str, str] | None = None) -> tuple[Comparison, dict[str, Any]]:
    """Evaluate every configured mode for every configured model on the labelled queries and, label-free, on the
    synthetic dev set of ``<run_dir>/generate`` (when there is one); tune the hybrid on the dev set, measure how far
    label-free agrees with labels, and write the report into ``out_dir``. Without labelled queries the report is the
    label-free one. ``gate = (zero-shot label, adapted label)`` adds the model gate of ``adapt``."""
    from genq_search import labelfree
    from genq_search.report import write_compare_html

    started = time.perf_counter()
    out_dir = out_dir or cfg.run_dir / "compare"
    c = cfg.compare
    if cfg.backend.model_id and (cfg.backend.engine not in ("opensearch", "auto") or len(c.models) != 1):
        raise GenqError("backend.model_id (--model-id): the cluster embeds the queries with one model, so compare exactly "
                        "one --model (the one the index was built with) on --backend opensearch")
    modes = parse_modes(c.modes)
    collection = load_run_collection(cfg)
    dev = labelfree.read_dev_set(cfg.run_dir / "generate", collection.corpus)
    if dev is None and not collection.qrels:
        raise GenqError(f"no labelled queries and no synthetic dev set in {cfg.run_dir / 'generate'}: run "
                        "`genq-search generate` with this run directory first, or pass labelled queries")
    if dev is None and Mode.HYBRID_TUNED in modes:
        raise GenqError(f"mode 'hybrid-tuned' tunes the fusion on the synthetic dev set and there is none in "
                        f"{cfg.run_dir / 'generate'}: run `genq-search generate` first (generate.dev_queries > 0)")
    labelled = Comparison(collection.qrels, collection.queries, c.metrics, c.baseline, c.alpha) if collection.qrels else None
    label_free = None
    if dev is not None:
        label_free = Comparison(dev.qrels, dev.queries, list(dict.fromkeys([*c.metrics, "ndcg@10"])), c.baseline, c.alpha,
                                label="synthetic dev queries (each with its source document as the one relevant document)")
    summary: dict[str, Any] = {"documents": len(collection.corpus), "queries": len(collection.queries), "stages_s": {}, "runs": {},
                               "dev_set": None if dev is None else {"queries": len(dev.queries), "documents": dev.documents,
                                                                    "too_small": len(dev.queries) < c.min_dev_queries}}
    tuned: dict[str, dict[str, Any]] = {}
    grid_agreement: dict[str, dict[str, Any]] = {}
    lexical: dict[str, Results] = {}  # BM25 candidates per query set: the same for every model

    dense_modes = [m for m in modes if m is not Mode.BM25]
    encoders = load_encoders(c.models, cfg.encoder) if dense_modes else {"lexical": None}
    for position, (label, encoder) in enumerate(encoders.items()):
        backend, timings = build_index(collection, encoder, cfg.corpus, cfg.encoder, cfg.backend, cfg.run_dir, label,
                                       separate_index=len(encoders) > 1)
        summary["stages_s"][f"index-{label}"] = timings.index_s
        if encoder is not None:
            summary["stages_s"][f"encode-{label}"] = timings.encode_s
            summary.setdefault("passages", {})[label] = timings.passages
            if timings.encode_s > 0.5:
                summary.setdefault("encode_passages_per_s", {})[label] = timings.passages / timings.encode_s
        candidates = None
        if dev is not None:
            start = time.perf_counter()
            candidates = labelfree.retrieve_candidates(backend, dev.queries, encoder, c, cfg.encoder.batch_size, lexical.get("dev"))
            lexical["dev"] = candidates.lexical
            if encoder is not None:
                tuned[label], _ = labelfree.tune_fusion(candidates, dev.qrels, c)
                if labelled is not None:  # the same grid on labels, to measure agreement (never to choose)
                    on_labels = labelfree.retrieve_candidates(backend, collection.queries, encoder, c, cfg.encoder.batch_size,
                                                              lexical.get("labels"))
                    lexical["labels"] = on_labels.lexical
                    grid = labelfree.grid_scores(on_labels, collection.qrels, labelfree.fusion_grid(c))
                    grid_agreement[label] = labelfree.grid_agreement(tuned[label], mean_scores(grid))
            summary["stages_s"][f"label-free-{label}"] = time.perf_counter() - start
        run_modes = ([Mode.BM25] if position == 0 and Mode.BM25 in modes else []) + dense_modes  # BM25 once: it does not depend on the model
        for mode in run_modes:
            name = "bm25" if mode is Mode.BM25 else f"{mode.value}-{label}"
            model = None if mode is Mode.BM25 else encoder.name
            retrieval = labelfree.mode_retrieval(mode, c, tuned.get(label) if mode is Mode.HYBRID_TUNED else None)
            fusion = {"fusion": retrieval.name} if mode is Mode.HYBRID_TUNED else {}
            if labelled is not None:
                _timed_search(labelled, summary, name, backend, retrieval, collection, encoder, cfg, model=model, **fusion)
            if label_free is not None and candidates is not None:
                label_free.add(name, labelfree.results_for(candidates, retrieval, c.k), backend=backend.name, model=model)

    comparison = labelled or label_free
    assert comparison is not None
    label_means = labelfree.ndcg_means(labelled) if labelled is not None else None
    free_means = labelfree.ndcg_means(label_free) if label_free is not None else {}
    summary["label_free"] = {name: mean_scores(scores) for name, scores in label_free.scores.items()} if label_free else {}
    summary["tuned_fusion"] = tuned
    contrasts = labelfree.run_contrasts(modes, list(encoders), set(free_means))
    summary["agreement"] = {**labelfree.agreement(free_means, label_means, contrasts), "fusion_grid": grid_agreement}
    if labelled is not None and free_means:
        labelled.columns["label-free ndcg@10"] = free_means
    if gate is not None:
        summary["gate"] = _gate(cfg, gate, labelled, label_free)
    contrast = tuple(c.contrast) if c.contrast else None
    extra = {k: summary[k] for k in ("dev_set", "label_free", "tuned_fusion", "agreement", "gate") if k in summary}
    title = "Retrieval comparison" if labelled is not None else "Retrieval comparison (label-free: no labelled queries)"
    comparison.write(out_dir, contrast, title=title, appendix=labelfree.report_section(summary, label_free, labelled is not None),  # type: ignore[arg-type]
                     extra=extra)
    summary["wall_s"] = time.perf_counter() - started
    write_json(out_dir / "summary.json", summary)
    write_compare_html(out_dir, labelled, label_free, collection.corpus, summary, title)  # report.html beside report.md
    return comparison, summary


def _gate(cfg: RunConfig, gate: tuple[str, str], labelled: Comparison | None, label_free: Comparison | None) -> dict[str, Any]:
    """The model gate on the dense runs of the zero-shot and the adapted model (``labelfree.model_gate``)."""
    from genq_search.labelfree import model_gate, ndcg_per_query

    baseline, adapted = (f"dense-{label}" for label in gate)
    main = labelled or label_free
    if main is None or not {baseline, adapted} <= main.results.keys():
        raise GenqError("the model gate compares the dense runs of both models: add the mode 'dense'")

    def pair(comparison: Comparison | None) -> tuple[dict[str, float], dict[str, float]] | None:
        return None if comparison is None else (ndcg_per_query(comparison, baseline), ndcg_per_query(comparison, adapted))

    verdict = model_gate(pair(label_free), pair(labelled), cfg.compare.models[gate[0]], cfg.compare.models[gate[1]],
                         cfg.gate, cfg.compare.alpha, cfg.compare.min_dev_queries, overrated=cfg.method == "genq")
    (logger.info if verdict["passed"] else logger.warning)("model gate %s: %s", "passed" if verdict["passed"] else "failed",
                                                           verdict["reason"])
    return verdict


def _timed_search(
    comparison: Comparison, summary: dict[str, Any], name: str, backend: Any, retrieval: Retrieval,
    collection: Collection, encoder: Any, cfg: RunConfig, model: str | None, **extra: str,
) -> None:
    start = time.perf_counter()
    results = search(backend, retrieval, collection.queries, encoder, cfg.compare, cfg.encoder.batch_size)
    elapsed = time.perf_counter() - start
    metrics = comparison.add(name, results, backend=backend.name, model=model, **extra)
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
    stages["mine"] = run_mine(cfg.mine, collection.corpus, generate_dir, cfg.run_dir / "mine", bm25, overwrite=overwrite,
                              ray=cfg.encoder.ray, ray_workers=cfg.encoder.ray_workers)
    stages["mine_s"] = time.perf_counter() - start
    start = time.perf_counter()
    stages["label"] = run_label(cfg.label, collection.corpus, generate_dir, cfg.run_dir / "mine", cfg.run_dir / "label", overwrite=overwrite)
    stages["label_s"] = time.perf_counter() - start
    start = time.perf_counter()
    train_cfg = cfg.train.model_copy(update={"base_model": base_model})
    stages["train"] = run_train(train_cfg, collection.corpus, generate_dir, train_stage_dir(cfg.run_dir, "gpl"), label_dir=cfg.run_dir / "label",
                                eval_collection=eval_collection(cfg), overwrite=overwrite)
    stages["train_s"] = time.perf_counter() - start
    return stages


def eval_collection(cfg: RunConfig) -> Collection | None:
    """Labelled queries for evaluation during training (``train.eval_split``), if configured."""
    if not cfg.train.eval_split:
        return None
    from genq_search.sources import load_source_collection

    return load_source_collection(cfg.corpus, cfg.backend, split=cfg.train.eval_split)


def run_adapt(cfg: RunConfig, overwrite: bool = False) -> tuple[Comparison, dict[str, Any]]:
    """corpus -> generate -> [TSDAE] -> train (GenQ) or mine -> label -> train (GPL) -> compare; finished stages are skipped.

    The comparison covers BM25, the zero-shot base model, the adapted model(s), their hybrids with BM25 and the hybrid
    tuned on the dev set; ``summary["gate"]`` says whether the adapted model beat the zero-shot one
    (``labelfree.model_gate``) and which model to keep.
    """
    from genq_search.generate import run_generate
    from genq_search.pretrain import run_pretrain
    from genq_search.train import run_train, train_stage_dir

    if cfg.method not in ADAPT_METHODS:
        raise GenqError(f"unknown adapt method '{cfg.method}' ({', '.join(ADAPT_METHODS)})")
    collection = load_run_collection(cfg, with_qrels=True)
    stages: dict[str, Any] = {"method": cfg.method}
    start = time.perf_counter()
    stages["generate"] = run_generate(cfg.generate, collection.corpus, cfg.run_dir / "generate", overwrite=overwrite,
                                      windows=generation_windows(cfg))
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
        stages["train"] = run_train(cfg.train, collection.corpus, cfg.run_dir / "generate", train_stage_dir(cfg.run_dir, "genq"),
                                    eval_collection=eval_collection(cfg), overwrite=overwrite)
        stages["train_s"] = time.perf_counter() - start
    else:
        stages.update(run_gpl_stages(cfg, collection, base, overwrite))
    adapted = cfg.method.replace("+", "-")
    models[adapted] = stages["train"]["model"]
    # the gate compares the dense runs; the tuned hybrid is the one to deploy when there is a dev set
    modes = [*cfg.compare.modes, "dense", *(["hybrid-tuned"] if (stages["generate"].get("dev") or {}).get("queries") else [])]
    compare_cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"models": models, "modes": list(dict.fromkeys(modes))})})
    comparison, summary = run_compare(compare_cfg, gate=("zeroshot", adapted))
    summary["adapt"] = stages
    write_json(cfg.run_dir / "adapt-summary.json", summary)
    return comparison, summary
