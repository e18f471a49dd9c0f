"""What the reindex's client and node settings cost: the same SciFact copy under each setting, against the encoder alone.

    scripts/opensearch-local.sh start
    python bench/reindex_settings.py [--bundle runs/bench-upgrade/bundle]

Loads SciFact into `reindex-bench-src` (the upgrade bench's live-index layout), times the bundle encoding the reindex's
own passages alone (before and after the runs), then reindexes the source once per setting (HNSW ef_construction,
gzip request bodies, the bulk body serializer). Each target's dense nDCG@10 on the 300 test queries and its top-10
overlap with the first target say what the HNSW setting costs in relevance. One process, node otherwise idle.
Writes bench/results/reindex_settings.json; the targets are deleted afterwards.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import SCIFACT, write_results
from upgrade_scifact import encoder_alone, load_live_index

import genq_search.engines.opensearch as backend_module
from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.data import load_collection
from genq_search.engines import cluster_backend, connect
from genq_search.evaluate import evaluate
from genq_search.index import run_reindex
from genq_search.onnx_encoder import OnnxEncoder

SOURCE = "reindex-bench-src"
SETTINGS = {  # name -> (ef_construction, http_compress, serializer)
    "ef256-gzip-json": (256, True, "json"),  # the settings before this bench
    "ef256-json": (256, False, "json"),
    "ef100-json": (100, False, "json"),
    "ef100-orjson": (100, False, "orjson"),  # today's defaults
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--bundle", type=Path, default=Path("runs/bench-upgrade/bundle"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    started = time.perf_counter()
    collection = load_collection(args.data, split="test")
    base = BackendConfig(engine="opensearch", url=args.url)
    cluster = connect(base)
    client = cluster.client
    load_live_index(cluster, SOURCE, collection.corpus, 0.9, 0.4, "english")
    corpus = CorpusConfig(source_index=SOURCE)
    encoder = OnnxEncoder(args.bundle, provider="cpu")
    before, _ = encoder_alone(encoder, collection.corpus, corpus.read_batch, corpus.passage_stride)
    qids = list(collection.queries)
    qvecs = encoder.encode_queries([collection.queries[q] for q in qids])
    default_serializer = backend_module._orjson_serializer  # connect()'s; the "json" settings swap in the base class
    rows: list[dict[str, Any]] = []
    first_top: dict[str, set[str]] | None = None  # the first target's top 10 per query
    for name in args.settings:
        ef, compress, serializer = SETTINGS[name]
        cfg = base.model_copy(update={"ef_construction": ef, "http_compress": compress})
        if serializer == "json":
            backend_module._orjson_serializer = lambda os_: os_.serializer.JSONSerializer()
        try:
            result = run_reindex(cfg, corpus, ReindexConfig(alias=f"reindex-bench-{name}"), SOURCE, encoder,
                                 Path(f"runs/bench-reindex-settings/{name}-{time.time_ns()}"))
        finally:
            backend_module._orjson_serializer = default_serializer
        dense = cluster_backend(cfg, result.state.target).vector_search(qids, qvecs, 100)
        top = {q: set(sorted(dense[q], key=dense[q].get, reverse=True)[:10]) for q in qids}
        first_top = first_top or top
        docs_per_s = result.state.copied / result.stages_s["copy_s"]
        rows.append({"name": name, "ef_construction": ef, "http_compress": compress, "serializer": serializer,
                     "reindex_docs_per_s": docs_per_s, "reindex_vs_encoder": docs_per_s / before,
                     "dense": evaluate(collection.qrels, dense, ["ndcg@10", "recall@100"]),
                     "top10_overlap_with_first": sum(len(top[q] & first_top[q]) for q in qids) / (10 * len(qids))})
        print(rows[-1], flush=True)
        client.indices.delete(index=result.state.target)
    after, _ = encoder_alone(encoder, collection.corpus, corpus.read_batch, corpus.passage_stride)
    path = write_results("reindex_settings", {
        "dataset": "scifact", "split": "test", "wall_s": time.perf_counter() - started,
        "encoder_docs_per_s": {"before": before, "after": after, "variant": encoder.variant},
        "runs": [{"name": r["name"], "backend": "opensearch", "model": str(args.bundle), "metrics": r["dense"],
                  **{k: v for k, v in r.items() if k not in ("name", "dense")}} for r in rows],
        "notes": ("SciFact's 5,183 documents from a live index (english analyzer) copied by `genq-search reindex` with "
                  "256-token passage vectors (9,631 passages) from the bundle's fastest CPU variant; reindex docs/s = "
                  "documents copied / copy seconds; ratio against the bundle encoding the same passages alone (before "
                  "the runs). OpenSearch 2.19.1 local node (768 MB heap) on the same 2 cores; Lucene HNSW m=16; "
                  "1,000-document reads, 500-document bulks on a second thread."),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
