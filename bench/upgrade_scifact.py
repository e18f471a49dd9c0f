"""SciFact as a live index, upgraded in place by `genq-search upgrade` while a writer changes its documents.

    scripts/opensearch-local.sh start
    python bench/upgrade_scifact.py [--url http://127.0.0.1:9200] [--run-dir runs/bench-upgrade] [--max-passages 120]
    scripts/elasticsearch-local.sh start
    python bench/upgrade_scifact.py --engine elasticsearch [--url http://127.0.0.1:9210] [--run-dir runs/bench-upgrade-es]

Same script for both engines (the `english` analyzer where the node has it: OpenSearch's local node assembles
analysis-common, Elasticsearch's integ-test node has none, so `standard` there).
1. Loads SciFact into `scifact-bench-src` (title and text with the `english` analyzer, BM25 k1=0.9 b=0.4) behind the
   alias `scifact-bench`, and a second copy with Lucene's default BM25 (k1=1.2, b=0.75); scores BM25 on both with
   BEIR's query (multi_match best_fields, tie_breaker 0.5) and the Anserini multifield query (most_fields).
2. Runs `upgrade` on the alias (GenQ with the offline models on a documented subset, label-free dev set, model gate,
   SciFact's test qrels as labelled validation) while a writer thread adds, updates and deletes documents during the
   reindex; checks that the upgraded index equals the source afterwards (ids and sources) and that the alias moved.
3. Scores the upgraded index itself (BM25, k-NN with the bundle, hybrid with the tuned fusion) and times the bundle's
   own encoding of the corpus, to compare with the reindex's documents/s.
Writes bench/results/upgrade_scifact.json (upgrade_scifact_elasticsearch.json for Elasticsearch).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path
from typing import Any

from common import SCIFACT, write_results

from genq_search.config import RunConfig
from genq_search.data import load_collection
from genq_search.engines import cluster_backend, connect
from genq_search.evaluate import evaluate
from genq_search.fusion import Retrieval, fuse

SOURCE, ALIAS, DEFAULT_BM25 = "scifact-bench-src", "scifact-bench", "scifact-bench-bm25-default"
METRICS = ["ndcg@10", "recall@100", "mrr@10"]


def load_live_index(cluster: Any, name: str, corpus: dict[str, dict[str, str]], k1: float, b: float, analyzer: str) -> float:
    """A user's index of the corpus (``analyzer`` on title and text, BM25 ``k1``/``b``), written through the engine
    interface's bulk (429s retried); returns the load's seconds."""
    client = cluster.client
    client.indices.delete(index=name, ignore_unavailable=True)
    client.indices.create(index=name, body={
        "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0,
                               "similarity": {"default": {"type": "BM25", "k1": k1, "b": b}}}},
        "mappings": {"properties": {"title": {"type": "text", "analyzer": analyzer}, "text": {"type": "text", "analyzer": analyzer}}}})
    start = time.perf_counter()
    _, failures, _ = cluster.bulk(({"_index": name, "_id": d, "_source": v} for d, v in corpus.items()), f"load {name}",
                                  total=len(corpus))
    if failures:
        raise RuntimeError(f"{len(failures)} documents failed to load into {name}, e.g. {failures[0]}")
    cluster.refresh([name])
    return time.perf_counter() - start


def encoder_alone(encoder: Any, corpus: dict[str, dict[str, str]], read_batch: int, stride: int) -> tuple[float, int]:
    """The encoder alone on the reindex's own work: the same passages (documents split as the reindex splits them), in
    batches of the reindex's read size, so "reindex docs/s / encoder docs/s" measures what bulk writes cost.
    Returns (documents/s, passages)."""
    from genq_search.passages import split_documents

    items, passages, start = list(corpus.items()), 0, time.perf_counter()
    for i in range(0, len(items), read_batch):
        texts = [p.text for p in split_documents(dict(items[i : i + read_batch]), encoder.tokenizer, encoder.max_seq_length, stride)]
        passages += len(texts)
        encoder.encode_passages(texts, batch_size=64, progress=False)
    return len(items) / (time.perf_counter() - start), passages


def bm25(client: Any, index: str, queries: dict[str, str], kind: str) -> dict[str, dict[str, float]]:
    extra = {"tie_breaker": 0.5} if kind == "best_fields" else {}
    results = {}
    qids = list(queries)
    for start in range(0, len(qids), 50):
        lines: list[dict[str, Any]] = []
        for qid in qids[start : start + 50]:
            lines += [{"index": index}, {"size": 100, "_source": False, "query": {"multi_match": {
                "query": queries[qid], "type": kind, "fields": ["title", "text"], **extra}}}]
        for qid, item in zip(qids[start : start + 50], client.msearch(body=lines)["responses"], strict=True):
            results[qid] = {h["_id"]: h["_score"] for h in item["hits"]["hits"]}
    return results


def writer(client: Any, target: str, ids: list[str], count: int, log: dict[str, Any]) -> None:
    """Once the reindex has created its target, add, update and delete source documents (through the index name)."""
    deadline = time.time() + 7200
    while not client.indices.exists(index=target) and time.time() < deadline:
        time.sleep(0.5)
    rng = random.Random(7)
    pool = list(ids)
    rng.shuffle(pool)
    for n in range(count):
        kind = ("added", "updated", "deleted")[n % 3]
        if kind == "added":
            client.index(index=SOURCE, id=f"live-{n}", body={"title": "Live write", "text": f"A document written while the index was upgraded ({n})."})
        elif kind == "updated":
            client.update(index=SOURCE, id=pool.pop(), body={"doc": {"text": f"Updated during the upgrade ({n})."}})
        else:
            client.delete(index=SOURCE, id=pool.pop())
        log[kind] += 1
        time.sleep(0.2)
    log["finished_at"] = time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=["opensearch", "elasticsearch"], default="opensearch")
    parser.add_argument("--url", default=None, help="default: the local node of --engine (9200 / 9210)")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-upgrade"))
    parser.add_argument("--max-passages", type=int, default=120, help="documents the generator writes training queries for")
    parser.add_argument("--dev-queries", type=int, default=240, help="synthetic dev set size (queries)")
    parser.add_argument("--writes", type=int, default=300, help="adds/updates/deletes during the reindex")
    parser.add_argument("--generator", default="google/gemma-3-270m")
    parser.add_argument("--gate-margin", type=float, default=0.0,
                        help="model gate margin; a negative one lets a barely trained model through, to measure the deployment")
    args = parser.parse_args()
    engine = args.engine
    args.url = args.url or ("http://127.0.0.1:9210" if engine == "elasticsearch" else "http://127.0.0.1:9200")
    analyzer = "standard" if engine == "elasticsearch" else "english"  # Elasticsearch's integ-test node has no analysis-common
    started = time.perf_counter()
    collection = load_collection(args.data, "test")
    cfg = RunConfig.model_validate({
        "run_dir": str(args.run_dir), "method": "genq",
        "corpus": {"path": f"{engine}://{args.url.split('://')[1]}/{ALIAS}", "queries": str(args.data / "queries.jsonl"),
                   "qrels": str(args.data / "qrels" / "test.tsv")},
        "generate": {"model": args.generator, "queries_per_passage": "3", "max_passages": args.max_passages, "batch_size": 4,
                     "max_input_tokens": 256, "filter_top_k": 10, "dev_queries": args.dev_queries},
        "train": {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "epochs": 1, "batch_size": 32},
        "compare": {"modes": ["bm25", "dense", "hybrid-minmax", *(["hybrid-tuned"] if args.dev_queries else [])]},
        "gate": {"margin": args.gate_margin},
        "reindex": {"verify_sample": 200},
    })
    cluster = connect(cfg.backend)
    client = cluster.client
    behind = set(client.indices.get_alias(name=ALIAS)) if client.indices.exists_alias(name=ALIAS) else set()
    if behind != {SOURCE}:  # no live index yet, or a finished upgrade moved the alias: start again from a fresh one
        for old in cluster.matching(f"{ALIAS}-v*"):  # by name (Elasticsearch refuses wildcard deletes); the alias goes with them
            client.indices.delete(index=old, ignore_unavailable=True)
        load_s = load_live_index(cluster, SOURCE, collection.corpus, 0.9, 0.4, analyzer)
        client.indices.update_aliases(body={"actions": [{"add": {"index": SOURCE, "alias": ALIAS}}]})
    else:  # a rerun resumes the upgrade of the same live index
        load_s = None
    load_live_index(cluster, DEFAULT_BM25, collection.corpus, 1.2, 0.75, analyzer)
    runs = []
    for index, kind, name in [(SOURCE, "most_fields", f"bm25-{engine}-{analyzer}-multifield"),
                              (SOURCE, "best_fields", f"bm25-{engine}-{analyzer}-k1-0.9"),
                              (DEFAULT_BM25, "best_fields", f"bm25-{engine}-{analyzer}-beir-query")]:
        metrics = evaluate(collection.qrels, bm25(client, index, collection.queries, kind), METRICS)
        runs.append({"name": name, "backend": engine, "model": None, "metrics": metrics})
        print(f"{name}: nDCG@10 {100 * metrics['ndcg@10']:.2f}")
    client.indices.delete(index=DEFAULT_BM25)
    source_ids = sorted(collection.corpus)
    log: dict[str, Any] = {"added": 0, "updated": 0, "deleted": 0}
    thread = threading.Thread(target=writer, args=(client, f"{ALIAS}-v1", source_ids, args.writes, log), daemon=True)
    thread.start()
    from genq_search.upgrade import run_upgrade

    report = run_upgrade(cfg)
    thread.join(timeout=5)
    client.indices.refresh(index=f"{SOURCE},{ALIAS}")
    src_ids, dst_ids = cluster.all_ids([SOURCE]), cluster.all_ids([report["index_after"]])
    lost = len(src_ids - dst_ids) + len(dst_ids - src_ids)
    sample = random.Random(3).sample(sorted(src_ids), 300)
    src = {d["_id"]: d["_source"] for d in client.mget(index=SOURCE, body={"ids": sample})["docs"]}
    dst = {d["_id"]: {k: v for k, v in d["_source"].items() if k != "passages"} for d in client.mget(index=ALIAS, body={"ids": sample})["docs"]}
    differing = sum(src[i] != dst[i] for i in sample)
    # the upgraded index itself: BM25, k-NN with the bundle's query vectors, hybrid with the tuned fusion
    from genq_search.onnx_encoder import OnnxEncoder

    encoder = OnnxEncoder(report["bundle"], provider="cpu")
    backend = cluster_backend(cfg.backend, ALIAS)
    qids = list(collection.queries)
    qvecs = encoder.encode_queries([collection.queries[q] for q in qids])
    dense = backend.vector_search(qids, qvecs, 100)
    lexical = bm25(client, ALIAS, collection.queries, "most_fields")
    search = Retrieval.from_dict(report["search"])
    tuned = {"dense": dense, "bm25": lexical}.get(search.method) or fuse(
        [lexical, dense], search.fusion, list(search.weights), rrf_k=search.rrf_k or 60, k=100)
    for name, results in [("dense-genq-upgraded-index", dense), ("hybrid-tuned-genq-upgraded-index", tuned)]:
        metrics = evaluate(collection.qrels, results, METRICS)
        runs.append({"name": name, "backend": engine, "model": report["bundle"], "metrics": metrics})
    for name, row in report["runs"].items():
        runs.append({"name": name, "backend": "embedded", "model": None, "metrics": row["metrics"],
                     **({"label_free": report["label_free"].get(name)} if report.get("label_free") else {})})
    encoder_docs_per_s, passages = encoder_alone(encoder, {d: collection.corpus[d] for d in source_ids},
                                                 cfg.corpus.read_batch, cfg.corpus.passage_stride)
    rx = report["reindex"]
    reindex_docs_per_s = rx["copied"] / rx["stages_s"]["copy_s"] if rx["stages_s"].get("copy_s") else None
    for row in runs:
        print(f"{row['name']:>40}: " + "  ".join(f"{m} {100 * row['metrics'].get(m, float('nan')):.1f}" for m in METRICS))
    print(f"writes during the reindex: {log}; lost {lost}; sampled sources differing {differing}; "
          f"reindex {reindex_docs_per_s} docs/s vs encoder {encoder_docs_per_s:.1f} docs/s")
    path = write_results("upgrade_scifact" + ("_elasticsearch" if engine == "elasticsearch" else ""), {
        "engine": {"name": engine, "version": cluster.version},
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started, "runs": runs,
        "upgrade": {"source_documents": rx["source_documents"], "copied": rx["copied"], "caught_up": rx["caught_up"],
                    "deleted_caught_up": rx["deleted_caught_up"], "verified_ids": rx["verified_ids"], "lost": lost,
                    "sampled_sources_differing": differing, "writes": {k: log[k] for k in ("added", "updated", "deleted")},
                    "alias_switched": report["alias_move"]["to"] == report["index_after"], "alias_switch_s": report["alias_move"]["switch_s"],
                    "reindex_docs_per_s": reindex_docs_per_s, "encoder_docs_per_s": encoder_docs_per_s,
                    "reindex_vs_encoder": reindex_docs_per_s / encoder_docs_per_s if reindex_docs_per_s else None,
                    "encoder_passages": passages, "encoder_variant": encoder.variant,
                    "gate": report["gate"], "tuned_fusion": report["tuned_fusion"], "search": report["search"],
                    "changed_after_switch": rx["changed_after_switch"], "stages_s": {**report["stages_s"], **rx["stages_s"]}},
        "labelfree": {"agreement": report.get("agreement")},
        "stages_s": report["stages_s"], "load_live_index_s": load_s,
        "notes": (f"Live index: SciFact (5,183 abstracts) in {cluster.label} {cluster.version} (local node), "
                  f"{analyzer} analyzer on title and text, BM25 k1=0.9 b=0.4; a second copy with Lucene's default BM25 for BEIR's "
                  f"query. upgrade: GenQ, Gemma-3 270M (GGUF) writing 3 queries for {args.max_passages} random documents, round-trip "
                  f"filter top 10, a synthetic dev set of up to {args.dev_queries} queries from held-out documents, all-MiniLM-L6-v2 "
                  f"1 epoch batch 32 lr 2e-5, gate margin {args.gate_margin} on the dev set and SciFact test qrels, ONNX bundle "
                  "(cpu profile), reindex "
                  f"with {args.writes} writes (1/3 adds, updates, deletes) by a second thread during the reindex. Embedded runs "
                  f"are the upgrade's own comparison (rank_bm25); '*-upgraded-index' runs search the upgraded {cluster.label} index."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
