"""SciFact (test) in a real OpenSearch: BM25 / k-NN / hybrid quality, indexing throughput, query latency.

    scripts/opensearch-local.sh start
    python bench/opensearch_scifact.py [--url http://127.0.0.1:9200] [--run-dir runs/bench-scifact]

Uses the embedding cache of bench/scifact_baselines.py when the run directory is shared. Writes
bench/results/opensearch_scifact.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import SCIFACT, print_table, write_results

from genq_search.config import CorpusConfig, ReindexConfig, RunConfig
from genq_search.data import read_queries
from genq_search.encoders import load_encoder
from genq_search.engines import cluster_backend, connect
from genq_search.fusion import FusionMethod
from genq_search.index import run_reindex
from genq_search.pipeline import load_run_collection, run_compare
from genq_search.search import build_index

METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in samples)
    q = statistics.quantiles(ms, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "mean": statistics.fmean(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-scifact"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--latency-queries", type=int, default=1000)
    args = parser.parse_args()
    started = time.perf_counter()
    index = "genq-bench-scifact"
    overrides = {
        "run": {"run_dir": args.run_dir},
        "corpus": {"path": args.data},
        "backend": {"kind": "opensearch", "url": args.url, "index": index, "replicas": 0, "overwrite": True},
        "compare": {"models": {"zeroshot": MODEL}, "metrics": METRICS,
                    "modes": ["bm25", "dense", "hybrid-rrf", "hybrid-minmax"]},
    }
    cfg = RunConfig.load(None, overrides)
    collection = load_run_collection(cfg)
    encoder = load_encoder(MODEL)
    # 1. bulk load with precomputed (cached) vectors
    backend, timings = build_index(collection, encoder, cfg.corpus, cfg.encoder, cfg.backend, cfg.run_dir, "zeroshot")
    bulk_docs_per_s = len(collection.corpus) / timings.index_s
    # 2. quality, client-side fusion (the index is reused now)
    cfg = RunConfig.load(None, {**overrides, "backend": {**overrides["backend"], "overwrite": False}})
    comparison, summary = run_compare(cfg, args.run_dir / "compare-opensearch")
    rows = [{"name": r["name"].replace("bm25", "bm25-opensearch") if r["name"] == "bm25" else f"{r['name']}-opensearch",
             "backend": "opensearch", "model": r.get("model"), "metrics": r["metrics"]} for r in comparison.table()]
    # 3. server-side hybrid (neural-search normalisation pipeline)
    server_cfg = cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"server_side_hybrid": True})})
    server = cluster_backend(server_cfg.backend, index)
    qids = list(collection.queries)
    qvecs = encoder.encode_queries([collection.queries[q] for q in qids])
    from genq_search.evaluate import evaluate

    for method, label in [(FusionMethod.MINMAX, "hybrid-minmax-zeroshot-server"), (FusionMethod.RRF, "hybrid-rrf-zeroshot-server")]:
        try:
            results = server.hybrid_search(collection.queries, qvecs, 100, method, (0.5, 0.5), 60, depth=100)
            rows.append({"name": f"{label}-opensearch", "backend": "opensearch", "model": MODEL,
                         "metrics": evaluate(collection.qrels, results, METRICS)})
        except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
            print(f"server-side {method}: {exc}")
    # 4. latency over 1,000 queries, warm cache, one query at a time
    all_queries = read_queries(args.data / "queries.jsonl")
    texts = list(all_queries.values())[: args.latency_queries]
    vectors = encoder.encode_queries(texts)
    lat: dict[str, list[float]] = {"bm25": [], "knn": [], "hybrid-client-minmax": [], "hybrid-server-minmax": []}
    for warm in (True, False):
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            if warm and i >= 100:
                break
            for name, call in [
                ("bm25", lambda text=text: backend.lexical_search({"q": text}, 10)),
                ("knn", lambda vector=vector: backend.vector_search(["q"], vector[None, :], 10)),
                ("hybrid-client-minmax", lambda text=text, vector=vector: backend.hybrid_search({"q": text}, vector[None, :], 10, FusionMethod.MINMAX)),
                ("hybrid-server-minmax", lambda text=text, vector=vector: server.hybrid_search({"q": text}, vector[None, :], 10, FusionMethod.MINMAX)),
            ]:
                t0 = time.perf_counter()
                call()
                if not warm:
                    lat[name].append(time.perf_counter() - t0)
    latency = {k: percentiles(v) for k, v in lat.items()}
    # 5. encode + index pipelined: reindex the BM25-only copy with vectors
    client = connect(cfg.backend).client
    source = "genq-bench-scifact-source"
    client.indices.delete(index=f"{source}*", ignore_unavailable=True)
    client.indices.delete(index="genq-bench-scifact-live*", ignore_unavailable=True)
    plain = cluster_backend(cfg.backend.model_copy(update={"overwrite": True}), source)
    plain.index(collection.corpus, [], None)
    t0 = time.perf_counter()
    result = run_reindex(cfg.backend, CorpusConfig(), ReindexConfig(alias="genq-bench-scifact-live"), source, encoder, args.run_dir)
    reindex_s = time.perf_counter() - t0
    print_table(rows, METRICS)
    for name, stats in latency.items():
        print(f"{name:>22}: p50 {stats['p50']:.1f} ms  p95 {stats['p95']:.1f} ms  p99 {stats['p99']:.1f} ms")
    print(f"bulk with precomputed vectors: {bulk_docs_per_s:.0f} docs/s; reindex encode+index: {result.docs_per_s:.1f} docs/s")
    path = write_results("opensearch_scifact", {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started, "runs": rows,
        "throughput": {"index_docs_per_s": {"bulk-precomputed-vectors": bulk_docs_per_s,
                                            "reindex-encode-and-index": result.docs_per_s}},
        "latency_ms": latency,
        "stages_s": {"bulk-index": timings.index_s, "reindex": reindex_s, **summary["stages_s"]},
        "notes": ("OpenSearch 2.19.1 single node (integ-test zip + k-NN 2.19.1.0 + neural-search, 768 MB heap) on the same "
                  f"2-core machine as the client. k-NN: lucene HNSW, innerproduct, m={cfg.backend.hnsw_m}, "
                  f"ef_construction={cfg.backend.ef_construction}, ef_search={cfg.backend.ef_search}, "
                  "nested passages (256-token windows, max-passage). BM25: Lucene defaults k1=1.2 b=0.75, multi_match "
                  "best_fields over title+text (tie_breaker 0.5), standard analyzer. Latency: one query per request, "
                  f"{len(texts)} SciFact queries after 100 warm-up queries; dense latency excludes query encoding. "
                  "Reindex throughput includes CPU encoding with all-MiniLM-L6-v2 (PyTorch) pipelined with bulk writes."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
