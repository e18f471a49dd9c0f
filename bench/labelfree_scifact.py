"""Label-free verdicts on SciFact: every run scored on the synthetic dev set and on the real test qrels.

    python bench/labelfree_scifact.py [--train-documents 200] [--dev-queries 1000] [--tuples-per-query 2]
    python bench/labelfree_scifact.py --ablations windows,likelihood,budget     # then: resumes, adds the ablation models
    python bench/labelfree_scifact.py --run-dir runs/bench-labelfree-full --train-documents 3516 --teachers "" \
        --results labelfree_scifact_full     # GenQ on every document outside the dev pool

Runs (all-MiniLM-L6-v2 base, Gemma-3 270M GGUF generator on llama.cpp, everything offline):
- BM25, zero-shot dense, GenQ (MultipleNegativesRankingLoss on round-trip-filtered queries),
- GPL with each offline teacher: ``bm25``, ``bi:`` the zero-shot bi-encoder, ``lm:`` Gemma-3 query likelihood, and the
  ensemble of the three (margins normalised by their RMS, equal weights); negatives mined with all-MiniLM-L6-v2 + BM25,
- for every model: dense, min-max / z-score hybrids at lexical weight 0.1 … 0.9, RRF k ∈ {10, 30, 60, 100}, and the
  hybrid tuned on the synthetic dev set (``hybrid-tuned``), against the fixed 50/50 min-max hybrid and the better input.
- ``--ablations``: GenQ trained on queries generated per indexed passage window, and on queries kept by the generator's
  own likelihood (6 sampled, the 3 most likely kept: as many as the base run), each against the base GenQ run, all on
  the same dev set; and GPL with the BM25 teacher on ``--budget-tuples-per-query`` tuples per query (a fresh negative each,
  as many training steps more) against the base run's ``--tuples-per-query``.

Agreement: sign of Δ nDCG@10 on the dev set vs the qrels for every pair of runs and Kendall's τ of the run ordering;
significance by paired t-test over the 300 test queries. The dev set is chosen from documents kept out of training;
nothing is tuned on the test queries. Each stage resumes (rerun the same command).
Writes bench/results/labelfree_scifact.json (or ``--results``).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import time
from pathlib import Path
from typing import Any

from common import SCIFACT, write_results

from genq_search.config import RunConfig
from genq_search.data import (
    iter_jsonl,
    mark_stage_complete,
    read_manifest,
    stage_is_complete,
    write_jsonl,
)
from genq_search.evaluate import paired_p_value
from genq_search.generate import run_generate
from genq_search.label import run_label
from genq_search.labelfree import _kendall, ndcg_per_query
from genq_search.mine import run_mine
from genq_search.pipeline import (
    generation_windows,
    lexical_backend,
    load_run_collection,
    run_compare,
)
from genq_search.train import run_train

BASE = "sentence-transformers/all-MiniLM-L6-v2"
GENERATOR = "google/gemma-3-270m"
TEACHERS = {"bm25": "bm25", "bi": f"bi:{BASE}", "lm": f"lm:{GENERATOR}"}
MODES = ["bm25", "dense", "hybrid-minmax", "hybrid-zscore", "hybrid-rrf", "hybrid-tuned"]
METRICS = ["ndcg@10", "recall@100", "mrr@10"]


def derive_member_labels(ensemble_dir: Path, member: str, out_dir: Path) -> Path:
    """A single teacher's labels from the ensemble's rows (each row keeps every member's raw scores of the same tuples,
    so this equals labelling with that teacher alone, without scoring the pairs again)."""
    ensemble = read_manifest(ensemble_dir)
    settings = f"{ensemble['settings_hash']}:{member}"
    if not stage_is_complete(out_dir, settings):
        rows = []
        for _, row in iter_jsonl(ensemble_dir / "gpl-training.jsonl"):
            pos, neg = row["scores"][member]
            rows.append({"qid": row["qid"], "positive": row["positive"], "negative": row["negative"],
                         "pos_score": pos, "neg_score": neg, "margin": pos - neg})
        write_jsonl(out_dir / "gpl-training.jsonl", rows)
        mark_stage_complete(out_dir, settings, {"tuples": len(rows), "teacher": member, "derived_from": str(ensemble_dir)})
    return out_dir


def run_config(args: argparse.Namespace, run_dir: Path, **generate: Any) -> RunConfig:
    return RunConfig.load(None, {
        "run": {"run_dir": run_dir},
        "corpus": {"path": args.data},
        "encoder": {"dtype": args.dtype},
        "generate": {"generator": GENERATOR, "queries_per_passage": "3", "max_passages": args.train_documents, "batch_size": 4,
                     "max_input_tokens": 256, "filter_top_k": 10, "dev_queries": args.dev_queries, "chunk_size": 32, **generate},
        "mine": {"retrievers": [BASE], "bm25": True, "negatives": 50},
        "label": {"tuples_per_query": args.tuples_per_query, "batch_size": 8, "max_length": 256, "chunk_size": 128},
        "train": {"base_model": BASE, "epochs": 1, "batch_size": 32, "learning_rate": 2e-5},
        "compare": {"metrics": METRICS, "modes": MODES},
    })


def gpl_notes(args: argparse.Namespace) -> str:
    """The GPL part of the results' notes: the teachers and ablations this invocation ran."""
    if not args.teachers:
        return "No GPL run. "
    described = {"bm25": "bm25", "bi": "bi (zero-shot all-MiniLM-L6-v2)", "lm": "lm (Gemma-3 270M query likelihood)"}
    teachers = " / ".join(described[t] for t in args.teachers)
    if len(args.teachers) > 1:
        teachers += (" and their RMS-normalised equal-weight ensemble (single-teacher labels are the ensemble's member "
                     "columns: the same tuples and scores)")
    trained = f"; GPL trained with {', '.join(args.gpl_teachers)} only" if args.gpl_teachers else ""
    budget = (f" ({args.budget_tuples_per_query} in the budget ablation, BM25 teacher)" if "budget" in args.ablations else "")
    tuples = f"{args.tuples_per_query} tuple{'s' if args.tuples_per_query != 1 else ''}"
    return (f"GPL: negatives from all-MiniLM-L6-v2 and BM25 (top 50), {tuples} per query{budget}, "
            f"teachers {teachers}{trained}. ")


def adapt_models(args: argparse.Namespace, cfg: RunConfig, collection: Any, stages: dict[str, Any]) -> dict[str, str]:
    """GenQ and GPL with every teacher on the run's generated queries; returns label -> model path."""
    gen_dir = cfg.run_dir / "generate"
    start = time.perf_counter()
    models = {"zeroshot": BASE}
    models["genq"] = run_train(cfg.train, collection.corpus, gen_dir,
                               cfg.run_dir / "train")["model"]
    stages["train-genq_s"] = time.perf_counter() - start
    if not args.teachers:
        return models
    start = time.perf_counter()
    run_mine(cfg.mine, collection.corpus, gen_dir, cfg.run_dir / "mine", lexical_backend(cfg, collection))
    stages["mine_s"] = time.perf_counter() - start
    start = time.perf_counter()
    members = [TEACHERS[t] for t in args.teachers]
    label_dirs: dict[str, Path] = {}
    if len(members) > 1:  # one scoring pass for every member; single teachers are its columns
        ensemble = cfg.label.model_copy(update={"teacher": "ensemble:" + "+".join(members)})
        stages["label-ensemble"] = run_label(ensemble, collection.corpus, gen_dir, cfg.run_dir / "mine", cfg.run_dir / "label-ensemble")
        label_dirs["ensemble"] = cfg.run_dir / "label-ensemble"
        for name in args.teachers:
            label_dirs[name] = derive_member_labels(label_dirs["ensemble"], TEACHERS[name], cfg.run_dir / f"label-{name}")
    else:
        label = cfg.label.model_copy(update={"teacher": members[0]})
        stages[f"label-{args.teachers[0]}"] = run_label(label, collection.corpus, gen_dir, cfg.run_dir / "mine", cfg.run_dir / f"label-{args.teachers[0]}")
        label_dirs[args.teachers[0]] = cfg.run_dir / f"label-{args.teachers[0]}"
    stages["label_s"] = time.perf_counter() - start
    for name, label_dir in label_dirs.items():
        if args.gpl_teachers and name not in args.gpl_teachers:
            continue
        start = time.perf_counter()
        train = cfg.train
        models[f"gpl-{name}"] = run_train(train, collection.corpus, gen_dir, cfg.run_dir / f"train-gpl-{name}", label_dir=label_dir)["model"]
        stages[f"train-gpl-{name}_s"] = time.perf_counter() - start
    if "budget" in args.ablations:  # the paper's lever: more tuples (steps x batch), each with a freshly sampled negative
        start = time.perf_counter()
        label = cfg.label.model_copy(update={"teacher": TEACHERS["bm25"], "tuples_per_query": args.budget_tuples_per_query})
        stages["label-bm25-budget"] = run_label(label, collection.corpus, gen_dir, cfg.run_dir / "mine", cfg.run_dir / "label-bm25-budget")
        train = cfg.train
        models["gpl-bm25-budget"] = run_train(train, collection.corpus, gen_dir, cfg.run_dir / "train-gpl-bm25-budget",
                                              label_dir=cfg.run_dir / "label-bm25-budget")["model"]
        stages["gpl-bm25-budget_s"] = time.perf_counter() - start
    return models


def verdicts(comparison: Any, summary: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """Per model: tuned hybrid vs fixed 50/50 min-max vs the better input (real labels); adapted vs zero-shot with p."""
    labels = {name: row["metrics"]["ndcg@10"] for name, row in summary["runs"].items()}
    out: dict[str, Any] = {}
    for model in models:
        dense, tuned, fixed = f"dense-{model}", f"hybrid-tuned-{model}", f"hybrid-minmax-{model}"
        better = max(("bm25", dense), key=lambda n: labels[n])
        choice = summary["tuned_fusion"][model]
        row = {"tuned_fusion": choice["setting"], "tuned_decided": choice["decided"], "tuned_reason": choice["reason"],
               "tuned_hybrid": labels[tuned], "fixed_minmax_0.5": labels[fixed], "better_input": better,
               "better_input_ndcg": labels[better], "tuned_minus_better_input": labels[tuned] - labels[better],
               "best_grid_on_labels": summary["agreement"]["fusion_grid"].get(model)}
        if model != "zeroshot":
            for mode in ("dense", "hybrid-tuned"):
                a, b = f"{mode}-zeroshot", f"{mode}-{model}"
                row[f"{mode}_vs_zeroshot"] = {"delta": labels[b] - labels[a], "p_value": paired_p_value(
                    ndcg_per_query(comparison, a), ndcg_per_query(comparison, b))}
        out[model] = row
    return out


def pair_agreement(label_free: dict[str, float], labels: dict[str, float]) -> dict[str, Any]:
    """Every pair of runs: does the dev set give the sign of the difference the qrels give? Kendall's τ of the order."""
    names = sorted(label_free.keys() & labels.keys())
    pairs = list(itertools.combinations(names, 2))
    same = [(a, b) for a, b in pairs if (label_free[a] - label_free[b]) * (labels[a] - labels[b]) > 0]
    big = [(a, b) for a, b in pairs if abs(labels[a] - labels[b]) >= 0.01]
    same_big = [(a, b) for a, b in big if (a, b) in set(same)]
    return {"runs": len(names), "pairs": len(pairs), "same_sign": len(same), "pairs_label_delta_ge_1pt": len(big),
            "same_sign_label_delta_ge_1pt": len(same_big),
            "kendall_tau": _kendall([label_free[n] for n in names], [labels[n] for n in names])}


def ablation(args: argparse.Namespace, base: RunConfig, name: str, collection: Any, stages: dict[str, Any], **generate: Any) -> str:
    """GenQ on another generate setting, with the base run's dev set (the same yardstick: its chunks are copied)."""
    cfg = run_config(args, args.run_dir.parent / f"{args.run_dir.name}-{name}", **generate)
    dev = cfg.run_dir / "generate" / "dev"
    if not dev.exists():
        shutil.copytree(base.run_dir / "generate" / "dev", dev)
        shutil.copytree(base.run_dir / "embeddings", cfg.run_dir / "embeddings", dirs_exist_ok=True)
    start = time.perf_counter()
    stages[f"generate-{name}"] = run_generate(cfg.generate, collection.corpus, cfg.run_dir / "generate",
                                              windows=generation_windows(cfg))
    stages[f"generate-{name}_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model = run_train(cfg.train, collection.corpus, cfg.run_dir / "generate", cfg.run_dir / "train")["model"]
    stages[f"train-{name}_s"] = time.perf_counter() - start
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-labelfree"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--train-documents", type=int, default=200, help="documents the generator writes training queries for")
    parser.add_argument("--dev-queries", type=int, default=1000, help="synthetic dev set size (the recorded runs used 1000; the product's default is 500)")
    parser.add_argument("--tuples-per-query", type=int, default=2, help="GPL tuples per query (each a fresh negative)")
    parser.add_argument("--teachers", default="bm25,bi,lm", help="GPL teachers (comma-separated; with two or more the ensemble too)")
    parser.add_argument("--dtype", default="bfloat16", help="encoder dtype for the comparison (bfloat16: ~1.7x faster here)")
    parser.add_argument("--gpl-teachers", default="", help="train GPL only with these teachers (e.g. ensemble,bm25; default: all)")
    parser.add_argument("--ablations", default="", help="comma-separated: windows, likelihood, budget")
    parser.add_argument("--budget-tuples-per-query", type=int, default=8, help="budget ablation: GPL (BM25 teacher) tuples per query")
    parser.add_argument("--results", default="labelfree_scifact", help="bench/results/<name>.json to write")
    args = parser.parse_args()
    args.teachers = [t for t in args.teachers.split(",") if t]
    args.gpl_teachers = [t for t in args.gpl_teachers.split(",") if t]
    trainable = set(args.teachers) | ({"ensemble"} if len(args.teachers) > 1 else set())
    if unknown := sorted(set(args.teachers) - set(TEACHERS)) + sorted(set(args.gpl_teachers) - trainable):
        parser.error(f"unknown or untrained teacher(s) {unknown}: --teachers takes {sorted(TEACHERS)}, --gpl-teachers those "
                     "given to --teachers (and ensemble with two or more)")
    started = time.perf_counter()
    cfg = run_config(args, args.run_dir)
    collection = load_run_collection(cfg)
    stages: dict[str, Any] = {}
    start = time.perf_counter()
    stages["generate"] = run_generate(cfg.generate, collection.corpus, cfg.run_dir / "generate")
    stages["generate_s"] = time.perf_counter() - start
    args.ablations = [a for a in args.ablations.split(",") if a]
    models = adapt_models(args, cfg, collection, stages)
    if "windows" in args.ablations:
        models["genq-windows"] = ablation(args, cfg, "windows", collection, stages, passage_windows=True)
    if "likelihood" in args.ablations:
        # twice the samples, the 3 most likely kept: as many training queries as the base run, chosen by likelihood
        models["genq-likelihood"] = ablation(args, cfg, "likelihood", collection, stages, samples_per_passage=6)
    compare_cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"models": models})})
    comparison, summary = run_compare(compare_cfg)
    labels = {name: row["metrics"]["ndcg@10"] for name, row in summary["runs"].items()}
    free = {name: m["ndcg@10"] for name, m in summary["label_free"].items()}
    result_verdicts = verdicts(comparison, summary, list(models))
    agreement = pair_agreement(free, labels)
    for name, value in labels.items():
        print(f"{name:>28}: labels {100 * value:.1f}   label-free {100 * free.get(name, float('nan')):.1f}")
    for model, row in result_verdicts.items():
        print(model, {k: v for k, v in row.items() if k != "best_grid_on_labels"})
    print("agreement:", agreement)
    gen = stages["generate"]
    path = write_results(args.results, {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started,
        "runs": [{"name": name, "backend": "embedded", "model": next((path for label, path in models.items() if name.endswith(f"-{label}")), None),
                  "metrics": row["metrics"], "label_free": summary["label_free"].get(name)} for name, row in summary["runs"].items()],
        "dev_set": summary["dev_set"], "tuned_fusion": summary["tuned_fusion"], "verdicts": result_verdicts,
        "agreement": {"all_pairs": agreement, "product": summary["agreement"]},
        "stages_s": {k: v for k, v in stages.items() if k.endswith("_s")},
        "generate": {k: gen.get(k) for k in ("documents", "queries", "dropped", "runtime", "dev")},
        "labels": {k: {f: v.get(f) for f in ("tuples", "queries", "member_margin_rms", "tuples_per_s", "positive_margin_share")}
                   for k, v in stages.items() if k.startswith("label-") and isinstance(v, dict)},
        "notes": (f"SciFact, 5,183 documents, 300 test queries (reported; never used to choose). Generator Gemma-3 270M "
                  f"(GGUF, llama.cpp), 3 queries for {args.train_documents} random documents, round-trip filter top 10 under "
                  f"all-MiniLM-L6-v2; synthetic dev set of up to {args.dev_queries} queries from documents kept out of training "
                  f"(lexical-gap filter: at most {cfg.generate.dev_max_overlap:.0%} of a query's content words in its source). {gpl_notes(args)}All models "
                  "all-MiniLM-L6-v2, 1 epoch, batch 32, lr 2e-5, 10% warm-up. Hybrid tuned on the dev set over min-max and "
                  f"z-score at lexical weight 0.0-1.0 by 0.1 and RRF k 10/30/60/100. Corpus encoded in {args.dtype}, split into "
                  "256-token passages (stride 32), a document scored by its best passage. CPU only (2 cores). stages_s: "
                  "seconds of this invocation (a stage finished by an earlier one is skipped and shows about 0)."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
