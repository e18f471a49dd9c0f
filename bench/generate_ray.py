"""Query generation in one process against the same generation on a local Ray cluster with 1 and 2 workers.

    python bench/generate_ray.py [--documents 48] [--chunk-size 8]

The first ``--documents`` SciFact documents by id (a subset: say so when quoting the figures), Gemma-3 270M Q4_K_M
on llama.cpp (the offline package), 3 queries per document, no dev set. One process with every core of this machine
(``single``) and with one thread (``single-1-thread``, ``generate.threads = 1``), then ``generate.ray`` on a Ray
cluster started in this process (``ray.init(address="local")``, this machine's cores) with 1 and 2 workers of one
thread each. docs/s = documents / seconds of the run, loading the model included (and, on Ray, starting the actors,
not the cluster). Each run's chunks, queries and qrels are compared byte for byte with ``single-1-thread``'s
(``identical``): llama.cpp's sums round differently with another thread count, so only runs with the same threads
per generator can be identical. Writes bench/results/generate_ray.json.
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


GPL_RULE_DOCUMENTS = 250_000 // 3  # the GPL rule's 250K queries at 3 a document


def outputs(stage: Path) -> dict[str, str]:
    """What a generate stage wrote: chunks, queries, qrels; not its manifest (timings) nor settings.json (the config)."""
    return {str(p.relative_to(stage)): p.read_text() for p in sorted(stage.rglob("*"))
            if p.is_file() and p.name not in {"manifest.json", "settings.json"}}


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

    def generate(name: str, **settings: Any) -> dict[str, Any]:
        stage = args.run_dir / f"{name}-{stamp}"
        cfg = GenerateConfig(**SETTINGS, chunk_size=args.chunk_size, **settings)
        started = time.perf_counter()
        summary = run_generate(cfg, corpus, stage)
        seconds = time.perf_counter() - started
        row = {"name": name, "workers": settings.get("ray_workers", 0), "documents": len(corpus),
               "queries": summary["queries"], "seconds": seconds, "docs_per_s": len(corpus) / seconds,
               "threads": cfg.threads, "identical": outputs(stage) == outputs(args.run_dir / f"single-1-thread-{stamp}")
               if name != "single-1-thread" else True}
        print(row, flush=True)
        runs.append(row)
        return row

    generate("single-1-thread", threads=1)
    generate("single")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            generate(f"ray-{workers}", ray="auto", ray_workers=workers, threads=1)
    finally:
        ray.shutdown()
    by_name = {r["name"]: r for r in runs}
    single, single_1, one, two = by_name["single"], by_name["single-1-thread"], by_name["ray-1"], by_name["ray-2"]
    write_results("generate_ray", {
        "setup": {"documents": len(corpus), "subset": f"the first {len(corpus)} SciFact documents by id",
                  **SETTINGS, "chunk_size": args.chunk_size, "cluster": "ray.init(address='local') on this machine"},
        "runs": runs,
        "ray_2_vs_single": two["docs_per_s"] / single["docs_per_s"],
        "ray_1_vs_single_1_thread": one["docs_per_s"] / single_1["docs_per_s"],
        "parallel_efficiency_2_workers": two["docs_per_s"] / (2 * one["docs_per_s"]),
        "ray_identical_to_one_process_at_equal_threads": one["identical"] and two["identical"],
        "gpl_rule_core_hours": GPL_RULE_DOCUMENTS / one["docs_per_s"] / 3600,  # one worker's rate, one core each
    })


if __name__ == "__main__":
    main()
