"""How long the reindex's id verification takes, and how much memory it needs, as an index grows.

    scripts/opensearch-local.sh start
    python bench/verify_ids.py [--url http://127.0.0.1:9200] [--docs 1000000]

Loads ``--docs`` minimal documents (an id and a number) into a source index and a target with the same ids less
``--missing`` plus as many others, both with one shard, then times ``genq_search.index.compare_ids`` (the streamed
digest comparison behind the reindex's catch-up and final verification) in two cases: with the target equal to the source
(one scan of each), and with it differing (the differing buckets are read again: a second scan of each). Memory: the
peak of Python allocations (tracemalloc, in a second call that is not timed) during each comparison, against the same for reading the source's ids into
one set, as a comparison held in memory would. The time for 100M ids is this rate extrapolated (linear: one scan
per side) and says nothing about a cluster of several nodes, where the engine serves the scan from each shard.
The indices are deleted afterwards. Writes bench/results/verify_ids.json.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

from common import write_results

from genq_search.config import BackendConfig
from genq_search.engines import connect
from genq_search.index import ID_BUCKETS, compare_ids

SOURCE, TARGET = "verify-ids-bench-src", "verify-ids-bench-tgt"


def load(cluster: Any, index: str, ids: range, extra: int) -> None:
    """``index`` with one shard and a document per id of ``ids`` plus ``extra`` ids the source does not have."""
    client = cluster.client
    if client.indices.exists(index=index):
        client.indices.delete(index=index)
    client.indices.create(index=index, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0,
                                                          "refresh_interval": "-1"},
                                             "mappings": {"properties": {"n": {"type": "long"}}}})
    names = [f"doc-{i:010d}" for i in ids] + [f"extra-{i:06d}" for i in range(extra)]
    actions = ({"_index": index, "_id": name, "_source": {"n": n}} for n, name in enumerate(names))
    ok, failures, _ = cluster.bulk(actions, f"load {index}", total=len(names))
    assert ok == len(names) and not failures, failures[:3]
    client.indices.refresh(index=index)


def measured(work: Any) -> tuple[Any, float, float]:
    """``work()``'s result and seconds, and the peak MB of Python allocations of a second, traced call (tracing
    slows allocations, so it is not timed)."""
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    work()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--missing", type=int, default=10)
    args = parser.parse_args()
    began = time.perf_counter()
    cluster = connect(BackendConfig(url=args.url, bulk_docs=5000))
    load(cluster, SOURCE, range(args.docs), 0)
    runs: list[dict[str, Any]] = []
    try:
        load(cluster, TARGET, range(args.docs), 0)
        check, seconds, peak = measured(lambda: compare_ids(cluster, [SOURCE], TARGET, sample=1000))
        assert not check.missing and not check.extra and check.count == args.docs
        runs.append({"name": "equal", "ids_per_side": args.docs, "seconds": seconds, "ids_per_s": 2 * args.docs / seconds,
                     "peak_python_mb": peak})
        load(cluster, TARGET, range(args.missing, args.docs), args.missing)
        check, seconds, peak = measured(lambda: compare_ids(cluster, [SOURCE], TARGET, sample=1000))
        assert len(check.missing) == len(check.extra) == args.missing
        runs.append({"name": "differing", "ids_per_side": args.docs, "missing": args.missing, "extra": args.missing,
                     "seconds": seconds, "ids_per_s": 2 * args.docs / seconds, "peak_python_mb": peak})
        ids, seconds, peak = measured(lambda: cluster.all_ids([SOURCE]))
        assert len(ids) == args.docs
        del ids
        runs.append({"name": "one-set-in-memory", "ids_per_side": args.docs, "seconds": seconds,
                     "ids_per_s": args.docs / seconds, "peak_python_mb": peak})
    finally:
        for index in (SOURCE, TARGET):
            cluster.client.indices.delete(index=index, ignore_unavailable=True)
    equal = runs[0]
    hours_100m = 2 * 100_000_000 / equal["ids_per_s"] / 3600
    set_mb_100m = runs[2]["peak_python_mb"] * 100_000_000 / args.docs
    for run in runs:
        print(f"{run['name']:>18}: {run['seconds']:.1f} s, {run['ids_per_s']:,.0f} ids/s, peak {run['peak_python_mb']:.1f} MB")
    print(f"100M ids per side, equal: {hours_100m:.1f} h; one set of 100M ids: ~{set_mb_100m / 1024:.1f} GB")
    write_results("verify_ids", {
        "dataset": "synthetic ids", "split": None, "wall_s": time.perf_counter() - began,
        "engine": {"name": cluster.label, "version": cluster.version},
        "runs": runs,
        "verify": {"buckets": ID_BUCKETS, "ids_per_s": equal["ids_per_s"], "hours_for_100m_ids_per_side": hours_100m,
                   "peak_python_mb": max(runs[0]["peak_python_mb"], runs[1]["peak_python_mb"]),
                   "one_set_gb_for_100m_ids": set_mb_100m / 1024},
        "notes": f"{args.docs:,} ids per index (doc-0000000000 ...), one shard each, on the local node of "
                 "scripts/opensearch-local.sh sharing this machine's cores with the driver. ids_per_s counts the ids "
                 "of both sides over the comparison's seconds (the differing run reads each side twice). "
                 "peak_python_mb: tracemalloc's peak during the call (Python allocations; the client's buffers "
                 "included). hours_for_100m_ids_per_side extrapolates the equal run linearly; "
                 "one_set_gb_for_100m_ids extrapolates the one-set run's peak.",
    })


if __name__ == "__main__":
    main()
