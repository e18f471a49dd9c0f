"""GPL (and TSDAE+GPL) on BEIR SciFact with what works offline here: the Gemma-3 270M queries of the GenQ benchmark,
all-MiniLM-L6-v2 as base model and miner (plus BM25), and Gemma-3 270M query likelihood (log P(q | d)) as the
pseudo-label teacher in place of the cross-encoder; compared with zero-shot and GenQ on the test queries.

    python bench/genq_scifact.py --max-passages 400 --run-dir runs/bench-genq     # first: the generated queries
    python bench/gpl_scifact.py --max-passages 400 --run-dir runs/bench-genq [--tsdae]

Every stage is resumable (rerun the same command). Writes bench/results/gpl_scifact.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import SCIFACT, print_table, versus_zeroshot, write_results

from genq_search.config import RunConfig
from genq_search.generate import run_generate
from genq_search.label import run_label
from genq_search.mine import run_mine
from genq_search.pipeline import lexical_backend, load_run_collection, run_compare
from genq_search.pretrain import run_pretrain
from genq_search.train import run_train

METRICS = ["ndcg@10", "recall@100", "mrr@10"]
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-genq"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--max-passages", type=int, default=400, help="as in the GenQ benchmark run that generated the queries")
    parser.add_argument("--teacher", default="lm:google/gemma-3-270m")
    parser.add_argument("--tuples-per-query", type=int, default=2)
    parser.add_argument("--label-batch-size", type=int, default=8)
    parser.add_argument("--teacher-max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--tsdae", action="store_true", help="also TSDAE pre-training + GPL")
    parser.add_argument("--tsdae-sentences", type=int, default=4000)
    parser.add_argument("--extra-model", action="append", default=[], metavar="LABEL=PATH", help="another model to compare")
    args = parser.parse_args()
    started = time.perf_counter()
    settings = {
        "run": {"run_dir": args.run_dir, "method": "gpl"},
        "corpus": {"path": args.data},
        "generate": {"generator": "google/gemma-3-270m", "queries_per_passage": "3", "max_passages": args.max_passages,
                     "batch_size": 4, "max_input_tokens": 256, "chunk_size": 32},
        "mine": {"retrievers": [BASE], "bm25": True, "negatives": 50},
        "label": {"teacher": args.teacher, "tuples_per_query": args.tuples_per_query, "batch_size": args.label_batch_size,
                  "max_length": args.teacher_max_length, "chunk_size": 128},
        "pretrain": {"max_sentences": args.tsdae_sentences, "batch_size": 8},
        "train": {"base_model": BASE, "epochs": args.epochs, "batch_size": 32, "learning_rate": args.learning_rate},
        "compare": {"metrics": METRICS, "modes": ["bm25", "dense", "hybrid-rrf", "hybrid-minmax"]},
    }
    cfg = RunConfig.load(None, settings)
    collection = load_run_collection(cfg)
    corpus = collection.corpus
    stages: dict[str, float] = {}
    summaries: dict[str, dict] = {}

    def stage(name: str, func, *a, **kw) -> dict:
        t0 = time.perf_counter()
        summaries[name] = func(*a, **kw)
        stages[name] = time.perf_counter() - t0
        return summaries[name]

    gen_dir = args.run_dir / "generate"
    stage("generate", run_generate, cfg.generate, corpus, gen_dir)
    stage("mine", run_mine, cfg.mine, corpus, gen_dir, args.run_dir / "mine", lexical_backend(cfg, collection))
    stage("label", run_label, cfg.label, corpus, gen_dir, args.run_dir / "mine", args.run_dir / "label")
    models = {"zeroshot": BASE}
    for name in ("genq", "genq-filtered"):  # the GenQ benchmark's models, when present, for a side-by-side table
        if (args.run_dir / f"train-{name}" / "manifest.json").is_file():
            models[name] = str(args.run_dir / f"train-{name}" / "model")
    models.update(dict(spec.split("=", 1) for spec in args.extra_model))
    gpl = stage("train-gpl", run_train, cfg.train, corpus, gen_dir, args.run_dir / "train-gpl", label_dir=args.run_dir / "label")
    models["gpl"] = gpl["model"]
    if args.tsdae:
        tsdae = stage("pretrain-tsdae", run_pretrain, cfg.pretrain, corpus, BASE, args.run_dir / "pretrain-tsdae")
        models["tsdae"] = tsdae["model"]
        tsdae_cfg = cfg.train.model_copy(update={"base_model": tsdae["model"]})
        models["tsdae-gpl"] = stage("train-tsdae-gpl", run_train, tsdae_cfg, corpus, gen_dir, args.run_dir / "train-tsdae-gpl",
                                    label_dir=args.run_dir / "label")["model"]
    # one truncated 256-token passage per document, as in the GenQ benchmark
    compare_cfg = RunConfig.load(None, {**settings, "corpus": {"path": args.data, "passage_tokens": 0},
                                        "compare": {**settings["compare"], "models": models}})
    comparison, summary = run_compare(compare_cfg, args.run_dir / "compare-gpl")
    stages.update(summary["stages_s"])
    rows = [{"name": r["name"], "backend": r["backend"], "model": r.get("model"), "metrics": r["metrics"]} for r in comparison.table()]
    print_table(rows, METRICS)
    samples = [json.loads(line) for line in (args.run_dir / "label" / "gpl-training.jsonl").open()][:8]
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (gen_dir / "gen-queries.jsonl").open()}
    label_samples = [{"query": queries[s["qid"]], "positive_title": corpus[s["positive"]]["title"][:100],
                      "negative_title": corpus[s["negative"]]["title"][:100], "margin": round(s["margin"], 3)} for s in samples]
    write_results("gpl_scifact", {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started, "runs": rows,
        "versus_zeroshot_ndcg@10": versus_zeroshot(comparison), "stages_s": stages,
        "stages": {k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in summaries.items()},
        "label_samples": label_samples,
        "notes": (f"GPL with offline parts: the GenQ benchmark's Gemma-3 270M queries (3 per document, {args.max_passages} random "
                  f"SciFact documents, seed 42); negatives mined with all-MiniLM-L6-v2 (top 50) and BM25 (top 50) over all 5,183 "
                  f"documents; teacher {args.teacher} (query likelihood: mean per-token log P(query | 'Document: d\\nRelevant query:'), "
                  f"documents truncated to {args.teacher_max_length} tokens) instead of a cross-encoder, which cannot be fetched "
                  f"here; {args.tuples_per_query} tuples per query, each with a fresh negative. MarginMSE, all-MiniLM-L6-v2, "
                  f"{args.epochs} epoch, batch 32, lr {args.learning_rate}, 10% warm-up, student score = calibrated scale x cosine (train-gpl manifest). "
                  f"{'TSDAE: ' + str(args.tsdae_sentences) + ' random corpus sentences, 1 epoch, batch 8, lr 3e-5. ' if args.tsdae else ''}"
                  f"Evaluation truncates each document to one 256-token passage. CPU only (2 cores)."),
    })
    print(json.dumps(label_samples[:4], indent=1))


if __name__ == "__main__":
    main()
