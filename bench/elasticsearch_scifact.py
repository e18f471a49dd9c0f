"""SciFact (test) in a real Elasticsearch: the dense_vector ``index_options`` (hnsw, int8_hnsw, bbq_hnsw) compared on
relevance and kNN latency, next to OpenSearch's Lucene HNSW and the embedded exact search with the same vectors.

    scripts/elasticsearch-local.sh start; scripts/opensearch-local.sh start
    python bench/elasticsearch_scifact.py [--url http://127.0.0.1:9210] [--opensearch-url http://127.0.0.1:9200]

The passage vectors are encoded once (all-MiniLM-L6-v2, the run directory's embedding cache) and indexed into one
index per setting; BM25 and the hybrid (client-side min-max, 0.5) use each index's own BM25. Latency: one kNN request
per query (k 100), after a warm-up pass. Writes bench/results/elasticsearch_index_options.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from common import SCIFACT, print_table, write_results

from genq_search.config import RunConfig
from genq_search.encoders import load_encoder
from genq_search.engines import connect
from genq_search.evaluate import evaluate
from genq_search.fusion import FusionMethod, fuse
from genq_search.pipeline import load_run_collection
from genq_search.search import build_index

METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in samples)
    q = statistics.quantiles(ms, n=100)
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "mean": round(statistics.fmean(ms), 2)}


def measure(cfg: RunConfig, collection: Any, encoder: Any, label: str, qvecs: Any) -> tuple[list[dict[str, Any]], dict[str, float], float]:
    """Index (vectors from the cache), score dense / BM25 / hybrid, time one kNN request per query."""
    backend, timings = build_index(collection, encoder, cfg.corpus, cfg.encoder, cfg.backend, cfg.run_dir, label)
    qids = list(collection.queries)
    dense = backend.vector_search(qids, qvecs, 100)
    lexical = backend.lexical_search(collection.queries, 100)
    hybrid = fuse([lexical, dense], FusionMethod.MINMAX, [0.5, 0.5], k=100)
    engine = cfg.backend.engine.value
    runs = [{"name": f"{name}-{label}", "backend": engine, "model": MODEL if name != "bm25" else None,
             "metrics": evaluate(collection.qrels, results, METRICS)}
            for name, results in [("dense", dense), ("hybrid-minmax", hybrid), ("bm25", lexical)]]
    latency: dict[str, float] = {}
    if hasattr(backend, "cluster"):
        cluster, samples = backend.cluster, []
        for rounds in range(2):  # the first pass warms the graph and caches
            for vector in qvecs:
                start = time.perf_counter()
                cluster.search(backend.index_name, {"size": 100, "_source": False, **cluster.knn_body(vector.tolist(), 100)}, "kNN")
                if rounds:
                    samples.append(time.perf_counter() - start)
        latency = percentiles(samples)
    return runs, latency, timings.index_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:9210")
    parser.add_argument("--opensearch-url", default="http://127.0.0.1:9200", help="'' skips the OpenSearch reference")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-es-scifact"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    args = parser.parse_args()
    started = time.perf_counter()
    base = {"run": {"run_dir": args.run_dir}, "corpus": {"path": args.data}}
    collection = load_run_collection(RunConfig.load(None, base))
    encoder = load_encoder(MODEL)
    qvecs = encoder.encode_queries([collection.queries[q] for q in collection.queries])
    settings = [("embedded", "exact", {"engine": "embedded"})]
    settings += [("elasticsearch", options, {"engine": "elasticsearch", "url": args.url, "index_options": options})
                 for options in ("hnsw", "int8_hnsw", "bbq_hnsw")]
    if args.opensearch_url:
        settings.append(("opensearch", "lucene-hnsw", {"engine": "opensearch", "url": args.opensearch_url}))
    runs, latency, index_s, versions = [], {}, {}, {}
    for engine, options, backend in settings:
        label = f"{engine}-{options}".replace("_", "-")
        cfg = RunConfig.load(None, {**base, "backend": {**backend, "index": f"genq-bench-{label}", "replicas": 0,
                                                          "overwrite": True}})
        if engine != "embedded":
            versions[engine] = connect(cfg.backend).version
        got, latency[label], index_s[label] = measure(cfg, collection, encoder, label, qvecs)
        runs += got
        print(f"{label}: dense nDCG@10 {100 * got[0]['metrics']['ndcg@10']:.2f}, kNN p50 {latency[label].get('p50')} ms")
    print_table(runs, METRICS)
    path = write_results("elasticsearch_index_options", {
        "dataset": "scifact", "split": "test", "wall_s": round(time.perf_counter() - started, 1),
        "engine": {"name": "elasticsearch", "version": versions.get("elasticsearch")},
        "engine_versions": versions, "runs": runs, "latency_ms": latency, "index_s": index_s,
        "notes": ("Same passage vectors (all-MiniLM-L6-v2, 384-d) in every index; one kNN request per query (k 100, "
                  "num_candidates = ef_search 256), 300 test queries, second pass timed; BM25 is the node's standard "
                  "analyzer (the integ-test node has no analysis-common); hybrid = client-side min-max 0.5."),
    })
    print(f"-> {path}")


if __name__ == "__main__":
    main()
