"""The reindex copy in one process against the same copy on a Ray cluster with 1 and 2 workers, plus a Ray run
with workers SIGKILLed during the copy.

    scripts/opensearch-local.sh start
    python bench/reindex_ray.py [--docs 1500] [--kills 5]

Loads SciFact (or its first ``--docs`` documents by id: a subset, say so when quoting the figures) into a live index
(`reindex-ray-bench-src`, one shard), then reindexes it: once in one process, then with ``reindex.ray`` on a local
Ray cluster started in this process (``ray.init(address="local")``, this machine's cores) with 1 and 2 workers, then
2 workers again with ``--kills`` actor processes SIGKILLed (one after every third finished unit). docs/s = documents
copied / copy seconds (the Ray runs include starting their actors and loading the model in each, not starting the
cluster); ``steady_docs_per_s`` counts from the first finished unit to the last. Each target is checked against the
source (``lost``: source ids missing from it) and deleted afterwards.
Writes bench/results/reindex_ray.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

from common import SCIFACT, write_results
from upgrade_scifact import load_live_index

from genq_search import distributed
from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.data import load_collection
from genq_search.encoders import load_encoder
from genq_search.engines import connect
from genq_search.index import run_reindex

SOURCE = "reindex-ray-bench-src"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--docs", type=int, default=0, help="the first N documents by id (0: all of SciFact)")
    parser.add_argument("--unit-docs", type=int, default=100)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    corpus = load_collection(args.data, split="test").corpus
    if args.docs:
        corpus = {d: corpus[d] for d in sorted(corpus)[: args.docs]}
    cfg = BackendConfig(engine="opensearch", url=args.url)
    cluster = connect(cfg)
    load_live_index(cluster, SOURCE, corpus, 0.9, 0.4, "english")
    source_ids = cluster.all_ids([SOURCE])
    encoder = load_encoder(args.model, "cpu")
    runs: list[dict[str, Any]] = []

    def reindex(name: str, **ray: Any) -> dict[str, Any]:
        finished: list[tuple[float, int]] = []
        real = distributed.record
        kills: list[int] = []

        def timed(state: Any, unit: Any, result: dict[str, Any]) -> None:
            real(state, unit, result)
            finished.append((time.perf_counter(), result["written"]))
            if len(kills) < ray.get("kills", 0) and len(finished) % 3 == 2:
                kills.append(result["pid"])
                os.kill(result["pid"], signal.SIGKILL)  # the worker is on its next unit: Ray restarts it, redoes that

        distributed.record = timed
        try:
            options = {k: v for k, v in ray.items() if k != "kills"}
            result = run_reindex(cfg, CorpusConfig(source_index=SOURCE), ReindexConfig(alias=f"reindex-ray-bench-{name}", **options),
                                 SOURCE, encoder, Path(f"runs/bench-reindex-ray/{name}-{time.time_ns()}"))
        finally:
            distributed.record = real
        target = result.state.target
        lost = len(source_ids - cluster.all_ids([target]))
        row: dict[str, Any] = {
            "name": name, "backend": "opensearch", "model": args.model, "metrics": {},
            "workers": ray.get("ray_workers", 0), "copied": result.state.copied, "copy_s": result.stages_s["copy_s"],
            "docs_per_s": result.state.copied / result.stages_s["copy_s"], "verified_ids": result.verified_ids,
            "lost": lost, "documents_in_target": cluster.count(target), "kills": len(kills)}
        if len(finished) > 1:
            docs = sum(w for _, w in finished[1:])
            row["steady_docs_per_s"] = docs / (finished[-1][0] - finished[0][0])
            row["units"] = len(finished)
        print({k: v for k, v in row.items() if k != "metrics"}, flush=True)
        cluster.client.indices.delete(index=target)
        return row

    runs.append(reindex("single-process"))
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - start
    try:
        for workers in (1, 2):
            runs.append(reindex(f"ray-{workers}-worker{'s' if workers > 1 else ''}", ray="local", ray_workers=workers,
                                ray_unit_docs=args.unit_docs))
        if args.kills:
            runs.append(reindex(f"ray-2-workers-{args.kills}-kills", ray="local", ray_workers=2,
                                ray_unit_docs=args.unit_docs, kills=args.kills))
    finally:
        ray.shutdown()
    single, one, two = (r["docs_per_s"] for r in runs[:3])
    subset = f"the first {len(corpus):,} SciFact documents by id (a subset)" if args.docs else f"SciFact's {len(corpus):,} documents"
    path = write_results("reindex_ray", {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started, "documents": len(corpus),
        "runs": runs,
        "ray": {"version": ray.__version__, "cluster_start_s": ray_start_s, "unit_docs": args.unit_docs,
                "overhead_at_equal_cores": 1 - two / single, "parallel_efficiency": two / (2 * one),
                "kills": sum(r["kills"] for r in runs), "kills_lost_documents": sum(r["lost"] for r in runs if r["kills"])},
        "notes": (f"{subset} from a live OpenSearch index (one shard) copied by `genq-search reindex` with passage "
                  f"vectors from {args.model} (PyTorch, CPU). single-process: the usual pipelined copy (encoder and "
                  "bulk writer threads, torch on every core); ray-N: `--ray local --ray-workers N`, work units of "
                  f"{args.unit_docs} _seq_no numbers, one CPU and one torch thread per worker actor, each loading the "
                  "model itself (included in copy_s). overhead_at_equal_cores = 1 - ray-2 / single-process docs/s (both "
                  "use the whole machine); parallel_efficiency = ray-2 / (2 x ray-1). The OpenSearch node and the "
                  f"driver share the same {os.cpu_count()} cores. The kill run SIGKILLs the actor that returned every "
                  "third unit (it is on its next one); lost = source ids missing from the target after verification."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
