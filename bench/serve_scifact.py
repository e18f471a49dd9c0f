"""The adapted model inside the cluster: query latency and ingest throughput through `genq-search serve`.

    scripts/opensearch-local.sh start
    python bench/upgrade_scifact.py ...          # once: leaves the upgraded SciFact index behind the alias scifact-bench
    python bench/serve_scifact.py [--bundle runs/bench-upgrade/bundle] [--queries 1000] [--ingest-docs 500]

1. Starts `genq-search serve` on the upgrade's bundle (its own process, as a team would run it) and registers the
   remote models and the ingest pipeline on the upgraded index with `register_bundle` (parity-checked).
2. Query latency over SciFact queries (test, then train), the modes interleaved query by query after a warm-up:
   client-side encode (the bundle, batch 1) + nested k-NN; server-side `neural` (the cluster calls the endpoint);
   server-side hybrid (BM25 + neural, the deployed search pipeline); client-side encode + the same hybrid. nDCG@10 of
   each on the 300 test queries shows that both sides retrieve the same.
3. Ingest, per bundle variant (--variants, default int8 then fp32; the endpoint restarted with it): the same SciFact
   documents into a fresh index twice, timed side by side: the client-side reindex (read, split, encode with the
   bundle, bulk) and plain bulk writes through the ingest pipeline (the cluster calls /v1/passages); the vectors of
   both are compared passage by passage (int8 quantises activations per batch, so its vectors depend on the batch).
Writes bench/results/serve_scifact.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, SCIFACT, write_results

from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.data import load_collection
from genq_search.encoders import row_cosines
from genq_search.engines.opensearch import connect, neural_query, passage_query
from genq_search.engines.opensearch.mlcommons import register_bundle
from genq_search.evaluate import evaluate
from genq_search.onnx_encoder import OnnxEncoder

ALIAS = "scifact-bench"
FIELDS = ["title", "text"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_endpoint(bundle: Path, port: int, variant: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "genq_search.cli", "serve", "--bundle", str(bundle), "--port", str(port),
                                "--device", "cpu", "--variant", variant])
    for _ in range(120):
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the endpoint did not start")


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()), "n": len(ms)}


def knn(vector: list[float], k: int = 100) -> dict[str, Any]:
    return passage_query("knn", {"vector": vector, "k": k})


def query_latency(client: Any, encoder: OnnxEncoder, model_id: str, pipeline: str, queries: dict[str, str],
                  warmup: int) -> tuple[dict[str, list[float]], dict[str, dict[str, dict[str, float]]]]:
    """Per mode: wall seconds per query (encode + search) and the top-100 results."""
    lexical = lambda text: {"multi_match": {"query": text, "fields": FIELDS, "type": "best_fields", "tie_breaker": 0.5}}
    modes = {
        "knn-client-encode": lambda t: ({"size": 100, "query": knn(encoder.encode_queries([t])[0].tolist())}, {}),
        "neural-server": lambda t: ({"size": 100, "query": neural_query(model_id, t, 100)}, {}),
        "hybrid-server": lambda t: ({"size": 100, "query": {"hybrid": {"queries": [lexical(t), neural_query(model_id, t, 100)]}}},
                                    {"search_pipeline": pipeline}),
        "hybrid-client-encode": lambda t: ({"size": 100, "query": {"hybrid": {"queries": [
            lexical(t), knn(encoder.encode_queries([t])[0].tolist())]}}}, {"search_pipeline": pipeline}),
    }
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
    for n, (qid, text) in enumerate(queries.items()):
        for mode, build in modes.items():
            start = time.perf_counter()
            body, params = build(text)
            hits = client.search(index=ALIAS, body={**body, "_source": False}, params=params)["hits"]["hits"]
            elapsed = time.perf_counter() - start
            if n >= warmup:
                seconds[mode].append(elapsed)
            results[mode][qid] = {h["_id"]: float(h["_score"]) for h in hits}
    return seconds, results


def ingest(client: Any, cfg: BackendConfig, encoder: OnnxEncoder, docs: dict[str, dict[str, str]],
           pipeline: str, run_dir: Path) -> dict[str, Any]:
    """The same documents through the client-side reindex and through the ingest pipeline; docs/s and vector parity."""
    from opensearchpy import helpers

    from genq_search.index import run_reindex

    source, through = "scifact-serve-src", "scifact-serve-ingest"
    for name in (source, through, "scifact-serve-live-v1"):
        client.indices.delete(index=name, ignore_unavailable=True)
    client.indices.create(index=source, body={"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}},
                                              "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}})
    helpers.bulk(client, ({"_index": source, "_id": d, "_source": v} for d, v in docs.items()), refresh=True)
    start = time.perf_counter()
    run_reindex(cfg, CorpusConfig(), ReindexConfig(alias="scifact-serve-live"), source, encoder, run_dir)
    reindex_s = time.perf_counter() - start
    mapping = client.indices.get_mapping(index="scifact-serve-live-v1")["scifact-serve-live-v1"]["mappings"]
    client.indices.create(index=through, body={"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0, "knn": True,
                                                                      "default_pipeline": pipeline, **connect(BackendConfig(engine="opensearch", url=client.transport.hosts[0]["host"])).vector_index_settings()}},
                                               "mappings": mapping})
    start = time.perf_counter()
    ok, errors = helpers.bulk(client, ({"_index": through, "_id": d, "_source": v} for d, v in docs.items()), chunk_size=50,
                              refresh=True, raise_on_error=False, request_timeout=300)
    ingest_s = time.perf_counter() - start
    cosines, count_mismatch = [], 0
    for doc_id in list(docs)[:200]:
        a = np.asarray([p["vector"] for p in client.get(index="scifact-serve-live-v1", id=doc_id)["_source"]["passages"]])
        b = np.asarray([p["vector"] for p in client.get(index=through, id=doc_id)["_source"].get("passages", [])])
        if a.shape != b.shape:
            count_mismatch += 1
            continue
        cosines.extend(row_cosines(a, b).tolist())
    for name in (source, through, "scifact-serve-live-v1"):
        client.indices.delete(index=name, ignore_unavailable=True)
    return {"documents": len(docs), "reindex_docs_per_s": len(docs) / reindex_s, "ingest_docs_per_s": len(docs) / ingest_s,
            "ingest_errors": len(errors) if isinstance(errors, list) else errors, "ingest_written": ok,
            "passage_cosine_min": float(min(cosines)), "passage_cosine_mean": float(np.mean(cosines)),
            "passage_count_mismatches": count_mismatch, "compared_documents": 200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--bundle", type=Path, default=Path("runs/bench-upgrade/bundle"))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ingest-docs", type=int, default=500)
    parser.add_argument("--variants", default="int8,fp32", help="bundle variants: queries with the first, ingest with each")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-serve"))
    args = parser.parse_args()
    began = time.perf_counter()
    cfg = BackendConfig(engine="opensearch", url=args.url, replicas=0)
    client = connect(cfg).client
    collection = load_collection(SCIFACT, split="test")
    everything = load_collection(SCIFACT, split="train")
    ordered = {**collection.queries, **{q: t for q, t in everything.queries.items() if q not in collection.queries}}
    queries = dict(list(ordered.items())[: args.queries + args.warmup])
    docs = dict(list(collection.corpus.items())[: args.ingest_docs])
    pipeline = "genq-hybrid-min_max-0.5-0.5"
    client.transport.perform_request("PUT", f"/_search/pipeline/{pipeline}", body={"phase_results_processors": [
        {"normalization-processor": {"normalization": {"technique": "min_max"},
                                     "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [0.5, 0.5]}}}}]})
    ingested: dict[str, Any] = {}
    for n, variant in enumerate(args.variants.split(",")):  # the same variant on both sides: the reindex and the endpoint
        encoder = OnnxEncoder(args.bundle, variant=variant, provider="cpu")
        port = free_port()
        endpoint = start_endpoint(args.bundle, port, variant)
        try:
            registered = register_bundle(cfg, args.bundle, f"http://127.0.0.1:{port}", ALIAS, "genq-bench", configure=True)
            if n == 0:
                seconds, results = query_latency(client, encoder, registered["embedding_model_id"], pipeline, queries, args.warmup)
                first = registered
            ingested[variant] = ingest(client, cfg, encoder, docs, registered["ingest_pipeline"], args.run_dir / variant)
        finally:
            endpoint.terminate()
            endpoint.wait(timeout=30)
    test = set(collection.qrels)
    runs = [{"name": mode, "backend": "opensearch", "model": f"{args.bundle} ({args.variants.split(',')[0]})",
             "metrics": evaluate(collection.qrels, {q: r for q, r in res.items() if q in test}, ["ndcg@10", "recall@100"])}
            for mode, res in results.items()]
    version = client.info()["version"]["number"]
    payload = {
        "dataset": "scifact", "split": "test (nDCG) / test+train queries (latency)", "wall_s": time.perf_counter() - began,
        "runs": runs, "latency_ms": {m: percentiles(s) for m, s in seconds.items()},
        "serve": {"parity_cosine_mean": first["parity_mean_cosine"],
                  "passages_parity_cosine_mean": first["passages_parity_mean_cosine"],
                  "ingest_docs_per_s": {v: r["ingest_docs_per_s"] for v, r in ingested.items()},
                  "reindex_docs_per_s": {v: r["reindex_docs_per_s"] for v, r in ingested.items()},
                  "ingest": ingested, "opensearch_versions": [version], "registered": first},
        "notes": ("Single 2-core machine: OpenSearch, the endpoint (genq-search serve, ONNX Runtime) and this client share "
                  "the cores. Latency = wall time per query from text to hits, encoding included; modes interleaved per "
                  "query; the first --warmup queries are not timed. Ingest: client-side reindex vs bulk through the ml_inference "
                  "ingest pipeline calling /v1/passages, same documents."),
    }
    # one file for every OpenSearch version measured: this run's figures on top, each version's under by_version
    previous = json.loads((RESULTS / "serve_scifact.json").read_text()) if (RESULTS / "serve_scifact.json").is_file() else {}
    by_version = previous.get("by_version") or ({previous["serve"]["opensearch_versions"][0]: {
        k: previous[k] for k in ("date", "commit", "machine", "runs", "latency_ms", "serve")}} if previous else {})
    by_version[version] = {k: payload[k] for k in ("runs", "latency_ms", "serve")}
    payload["serve"]["opensearch_versions"] = sorted(by_version)
    path = write_results("serve_scifact", payload)
    record = json.loads(path.read_text())  # this run's date, commit and machine, as write_results recorded them
    by_version[version].update({k: record[k] for k in ("date", "commit", "machine")})
    path.write_text(json.dumps({**record, "by_version": by_version}, indent=2) + "\n")
    for mode, stats in payload["latency_ms"].items():
        print(f"{mode:>22}: p50 {stats['p50']:.1f} p95 {stats['p95']:.1f} p99 {stats['p99']:.1f} ms")
    for run in runs:
        print(f"{run['name']:>22}: nDCG@10 {100 * run['metrics']['ndcg@10']:.2f}")
    for variant, r in ingested.items():
        print(f"{variant}: ingest {r['ingest_docs_per_s']:.1f} docs/s vs reindex {r['reindex_docs_per_s']:.1f} docs/s; passage "
              f"cosine to the reindex's min {r['passage_cosine_min']:.5f} mean {r['passage_cosine_mean']:.5f}; {r['ingest_errors']} errors")
    print(path)


if __name__ == "__main__":
    main()
