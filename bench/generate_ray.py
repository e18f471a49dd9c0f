"""Query generation in one process against the same generation on a local Ray cluster with 1 and 2 workers.

    python bench/generate_ray.py [--documents 48] [--chunk-size 8]

The first ``--documents`` SciFact documents by id (a subset: say so when quoting the figures), Gemma-3 270M Q4_K_M
on llama.cpp (the offline package), 3 queries per document, no dev set. One process with every core of this machine,
then ``generate.ray`` on a Ray cluster started in this process (``ray.init(address="local")``, this machine's cores)
with 1 and 2 workers of one core each. docs/s = documents / generation seconds (the Ray runs include starting their
actors and loading the model in each, not starting the cluster). Every Ray run's chunks, queries and qrels are
compared with the single process's, byte for byte (``identical``). Writes bench/results/generate_ray.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import SCIFACT, write_results

from genq_search.config import GenerateConfig
from genq_search.data import load_collection
from genq_search.generate import run_generate

SETTINGS = {"generator": "google/gemma-3-270m", "runtime": "llama.cpp", "queries_per_passage": "3", "max_input_tokens": 256,
            "max_new_tokens": 64, "device": "cpu", "dev_queries": 0}


def outputs(stage: Path) -> dict[str, str]:
    return {str(p.relative_to(stage)): p.read_text() for p in sorted(stage.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-generate-ray"))
    args = parser.parse_args()
    import ray

    corpus = load_collection(args.data, with_qrels=False).corpus
    corpus = {d: corpus[d] for d in sorted(corpus)[: args.documents]}
    stamp = time.time_ns()
    runs: list[dict[str, Any]] = []

    def generate(name: str, **ray_settings: Any) -> dict[str, Any]:
        stage = args.run_dir / f"{name}-{stamp}"
        cfg = GenerateConfig(**SETTINGS, chunk_size=args.chunk_size, **ray_settings)
        started = time.perf_counter()
        summary = run_generate(cfg, corpus, stage)
        seconds = time.perf_counter() - started
        row = {"name": name, "workers": ray_settings.get("ray_workers", 0), "documents": len(corpus),
               "queries": summary["queries"], "seconds": seconds, "docs_per_s": len(corpus) / seconds,
               "identical": outputs(stage) == outputs(args.run_dir / f"single-{stamp}") if runs else True}
        print(row, flush=True)
        runs.append(row)
        return row

    generate("single")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            generate(f"ray-{workers}", ray="auto", ray_workers=workers)
    finally:
        ray.shutdown()
    by_name = {r["name"]: r for r in runs}
    single, one, two = by_name["single"], by_name["ray-1"], by_name["ray-2"]
    write_results("generate_ray", {
        "setup": {"documents": len(corpus), "subset": f"the first {len(corpus)} SciFact documents by id",
                  **SETTINGS, "chunk_size": args.chunk_size, "cluster": "ray.init(address='local') on this machine"},
        "runs": runs,
        "ray_2_vs_single": two["docs_per_s"] / single["docs_per_s"],
        "parallel_efficiency_2_workers": two["docs_per_s"] / (2 * one["docs_per_s"]),
        "all_identical": all(r["identical"] for r in runs),
    })


if __name__ == "__main__":
    main()
