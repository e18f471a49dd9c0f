"""Capacity model of the reindex at scale, built only from figures measured by the other benchmarks.

    python bench/capacity.py        # after bench/reindex_ray.py, bench/encode.py (GPU run) and bench/upgrade_scifact.py

Workers (CPU cores or GPUs) and wall-clock hours to reindex 10M, 100M and 1B documents like SciFact's (abstracts,
~1.9 passages of 256 tokens each), for three encoders: all-MiniLM-L6-v2 in PyTorch on one CPU core (the Ray
benchmark's steady per-worker rate), the exported OpenVINO int8 bundle on CPU (the upgrade benchmark's encoder
alone, per core), and PyTorch on one H100 (the encode benchmark's GPU run). Each is scaled by the parallel
efficiency the Ray benchmark measured with two workers. What it leaves out, said in the results: the search
cluster's own bulk and HNSW ingest rate (not measured beyond one local node: at GPU rates the cluster, not the
encoder, is the likely bound) and the work-unit overhead on clusters larger than this machine.
Writes bench/results/capacity.json.
"""

from __future__ import annotations

import json
import math

from common import RESULTS, write_results

DOCUMENTS = (10_000_000, 100_000_000, 1_000_000_000)
HOURS = (24, 8, 1)  # target wall-clock times the worker counts are given for


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run bench/{name}.py first")
    return json.loads(path.read_text())


def main() -> None:
    ray, encode, upgrade = load("reindex_ray"), load("encode"), load("upgrade_scifact_elasticsearch")
    runs = {r["name"]: r for r in ray["runs"]}
    efficiency = ray["ray"]["parallel_efficiency"]
    cores = upgrade["machine"]["cores"]
    gpu = encode.get("gpu_run") or {}
    rates = {  # documents per second of one worker, measured
        "cpu-core-pytorch": {"docs_per_s": runs["ray-1-worker"]["steady_docs_per_s"], "worker": "CPU core",
                             "source": f"reindex_ray.json: ray-1-worker steady rate ({ray['machine']['cpu']})"},
        "cpu-core-openvino-int8": {"docs_per_s": upgrade["upgrade"]["encoder_docs_per_s"] / cores, "worker": "CPU core",
                                   "source": f"upgrade_scifact_elasticsearch.json: encoder alone / {cores} cores "
                                             f"({upgrade['upgrade']['encoder_variant']}, {upgrade['machine']['cpu']})"},
    }
    if gpu:
        rates["gpu-pytorch"] = {"docs_per_s": gpu["throughput"]["encode_docs_per_s"]["torch-fp32"], "worker": "GPU",
                                "source": f"encode.json: gpu_run torch-fp32 ({gpu['machine']['gpu']})"}
    rows = []
    for name, rate in rates.items():
        effective = rate["docs_per_s"] * efficiency
        for documents in DOCUMENTS:
            worker_hours = documents / effective / 3600
            rows.append({"encoder": name, "worker": rate["worker"], "documents": documents,
                         "worker_hours": worker_hours,
                         **{f"workers_for_{h}h": math.ceil(worker_hours / h) for h in HOURS}})
    for row in rows:
        print(f"{row['encoder']:>24} {row['documents']:>13,}: {row['worker_hours']:>10,.0f} worker-hours; "
              + ", ".join(f"{row[f'workers_for_{h}h']:,} for {h} h" for h in HOURS))
    path = write_results("capacity", {
        "dataset": "scifact", "parallel_efficiency": efficiency, "rates": rates, "rows": rows,
        "notes": ("Worker-hours = documents / (one worker's measured docs/s x the 2-worker parallel efficiency of the Ray "
                  "benchmark) / 3600; workers for a target time = worker-hours / hours, rounded up. Documents like "
                  "SciFact's abstracts; longer documents cost in proportion to their 256-token passages. Not in the "
                  f"model: the search cluster's bulk + HNSW ingest rate (one local node kept up with the encoder here: the "
                  f"reindex ran at {100 * upgrade['upgrade']['reindex_vs_encoder']:.1f}% of it; at GPU rates size the "
                  "cluster's data nodes for the write rate) and work-unit overhead on clusters larger than this machine "
                  f"({100 * ray['ray']['overhead_at_equal_cores']:.1f}% at equal cores here)."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
