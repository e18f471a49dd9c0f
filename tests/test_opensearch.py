"""Integration tests against a real OpenSearch (scripts/opensearch-local.sh; OPENSEARCH_URL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import bulk_load, new_name

from genq_search.config import BackendConfig
from genq_search.data import load_collection
from genq_search.engines.base import VECTOR_FIELD
from genq_search.engines.embedded import EmbeddedBackend
from genq_search.errors import GenqError
from genq_search.fusion import FusionMethod, fuse
from genq_search.passages import Passage

pytestmark = pytest.mark.integration


def backend_for(cfg: BackendConfig, index: str, **changes: object):
    from genq_search.engines import cluster_backend

    return cluster_backend(cfg.model_copy(update=changes), index)


def random_collection(n_docs: int = 60, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    corpus = {f"d{i:03d}": {"title": f"title {i}", "text": f"alpha beta word{i % 9} gamma{i % 4}"} for i in range(n_docs)}
    passages = [Passage(f"d{i:03d}#{j}", f"d{i:03d}", "") for i in range(n_docs) for j in range(1 + i % 3)]
    vectors = np.abs(rng.normal(size=(len(passages), dim))).astype(np.float32)  # positive dots: affine k-NN scores
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return corpus, passages, vectors


def test_index_and_bm25_round_trip(cfg: BackendConfig, names: list[str], beir_dir: Path) -> None:
    collection = load_collection(beir_dir)
    backend = backend_for(cfg, new_name(names))
    backend.index(collection.corpus, [], None)
    assert backend.count() == 6
    results = backend.lexical_search(collection.queries, k=3)
    assert next(iter(results["q2"])) == "d4"
    assert next(iter(results["q3"])) == "d6"
    settings = backend.cluster.client.indices.get_settings(index=backend.index_name)[backend.index_name]["settings"]["index"]
    assert settings["refresh_interval"] == "1s"  # restored after the load


def test_knn_returns_the_exact_nearest_documents(cfg: BackendConfig, names: list[str]) -> None:
    corpus, passages, vectors = random_collection()
    remote = backend_for(cfg, new_name(names))
    remote.index(corpus, passages, vectors)
    local = EmbeddedBackend()
    local.index(corpus, passages, vectors)
    queries = np.abs(np.random.default_rng(7).normal(size=(5, vectors.shape[1]))).astype(np.float32)
    qids = [f"q{i}" for i in range(5)]
    got, expected = remote.vector_search(qids, queries, 10), local.vector_search(qids, queries, 10)
    for qid in qids:
        assert list(got[qid]) == list(expected[qid])
        assert list(got[qid].values()) == pytest.approx(list(expected[qid].values()), abs=1e-4)


def test_each_document_keeps_its_own_passage_vectors(cfg: BackendConfig, names: list[str]) -> None:
    corpus, passages, vectors = random_collection()
    passages += [Passage(f"d007#{j}", "d007", "") for j in range(2, 166)]  # a long document among short ones
    extra = np.abs(np.random.default_rng(1).normal(size=(164, vectors.shape[1])))
    vectors = np.vstack([vectors, extra / np.linalg.norm(extra, axis=1, keepdims=True)]).astype(np.float32)
    backend = backend_for(cfg, new_name(names))
    backend.index(corpus, passages, vectors)
    for doc_id in ("d006", "d007", "d008"):  # k-NN 3.6's derived source put other documents' vectors into d007's _source
        stored = backend.cluster.client.get(index=backend.index_name, id=doc_id)["_source"][VECTOR_FIELD]
        rows = [row for row, passage in enumerate(passages) if passage.doc_id == doc_id]
        np.testing.assert_allclose([p["vector"] for p in stored], vectors[rows], atol=1e-6)


def test_hybrid_uses_the_shared_fusion_and_matches_server_side(cfg: BackendConfig, names: list[str]) -> None:
    corpus, passages, vectors = random_collection()
    index = new_name(names)
    remote = backend_for(cfg, index)
    remote.index(corpus, passages, vectors)
    queries = {"q0": "word3 gamma1", "q1": "alpha word5", "q2": "title 17 gamma2"}
    qvecs = np.abs(np.random.default_rng(3).normal(size=(3, vectors.shape[1]))).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    depth = 20
    lexical, dense = remote.lexical_search(queries, depth), remote.vector_search(list(queries), qvecs, depth)
    client_side = remote.hybrid_search(queries, qvecs, depth, FusionMethod.MINMAX, (0.3, 0.7), depth=depth)
    assert client_side == fuse([lexical, dense], FusionMethod.MINMAX, [0.3, 0.7], k=depth)
    server = backend_for(cfg, index, server_side_hybrid=True)
    if FusionMethod.MINMAX not in remote.cluster.server_fusions():  # Elasticsearch without rank-rrf; OpenSearch without neural-search
        with pytest.raises(GenqError, match="cannot fuse minmax on the server"):
            server.hybrid_search(queries, qvecs, depth, FusionMethod.MINMAX, (0.3, 0.7), depth=depth)
        return
    server_side = server.hybrid_search(queries, qvecs, depth, FusionMethod.MINMAX, (0.3, 0.7), depth=depth)
    for qid in queries:
        top_server, top_client = list(server_side[qid])[:5], list(client_side[qid])[:5]
        assert top_server == top_client, qid
        assert [server_side[qid][d] for d in top_server] == pytest.approx([client_side[qid][d] for d in top_client], abs=1e-3)  # Lucene scores are float32


def test_bulk_bodies_with_and_without_gzip(cfg: BackendConfig, names: list[str]) -> None:
    """orjson bodies (numpy values, non-ASCII text) land intact, plain and gzip-compressed (``http_compress``)."""
    index = new_name(names)
    corpus, passages, vectors = random_collection(n_docs=2, dim=8)
    backend_for(cfg, index).index(corpus, passages, vectors)
    for compress in (False, True):
        backend = backend_for(cfg, index, http_compress=compress)
        if cfg.engine == "opensearch":  # elasticsearch-py keeps it in its node configs
            assert backend.cluster.client.transport.get_connection().http_compress is compress
        doc_id = f"gz-{compress}"
        vector = np.linspace(-1, 1, 8, dtype=np.float32)
        ok, failures = backend.bulk([{"_index": index, "_id": doc_id, "_source": {
            "title": "Größe — 大小", "text": "naïve café", "count": np.int64(3), VECTOR_FIELD: [{"vector": vector}]}}], progress=False)
        assert (ok, failures) == (1, [])
        source = backend.cluster.client.get(index=index, id=doc_id)["_source"]
        assert (source["title"], source["text"], source["count"]) == ("Größe — 大小", "naïve café", 3)
        assert np.allclose(source[VECTOR_FIELD][0]["vector"], vector, atol=1e-7)


def test_safety_errors(cfg: BackendConfig, names: list[str], beir_dir: Path) -> None:
    from conftest import client_of as connect

    collection = load_collection(beir_dir)
    index = new_name(names)
    backend_for(cfg, index).index(collection.corpus, [], None)
    with pytest.raises(GenqError, match=f"index '{index}' already exists; pass --overwrite"):
        backend_for(cfg, index).index(collection.corpus, [], None)
    backend_for(cfg, index, overwrite=True).index(collection.corpus, [], None)  # explicit overwrite works
    with pytest.raises(GenqError, match="cannot reach .* at http://127.0.0.1:1"):
        connect(cfg.model_copy(update={"url": "http://127.0.0.1:1", "timeout_s": 2}))
    vec_index = new_name(names)
    corpus, passages, vectors = random_collection(n_docs=5, dim=8)
    backend = backend_for(cfg, vec_index)
    backend.index(corpus, passages, vectors)
    with pytest.raises(GenqError, match="vector dimension mismatch: index .* holds 8-d vectors, the model gives 4"):
        backend.reusable(5, 4, {})
    # a document whose vector has the wrong dimension fails alone, reported with its id
    ok, failures = backend.bulk([
        {"_index": vec_index, "_id": "good", "_source": {"title": "", "text": "x", "passages": [{"vector": [0.1] * 8}]}},
        {"_index": vec_index, "_id": "bad", "_source": {"title": "", "text": "y", "passages": [{"vector": [0.1] * 3}]}},
    ], progress=False)
    assert ok == 1 and [i for i, _ in failures] == ["bad"]
    # a read-only index gives a clear message
    backend.cluster.client.indices.put_settings(index=vec_index, body={"index.blocks.write": True})
    try:
        with pytest.raises(GenqError, match="index is read-only or blocked while writing"):
            try:
                backend.cluster.client.index(index=vec_index, id="z", body={"text": "z"})
            except Exception as exc:  # noqa: BLE001
                raise backend.cluster.explain(exc, "writing") from None
    finally:
        backend.cluster.client.indices.put_settings(index=vec_index, body={"index.blocks.write": False})


def make_source(cfg: BackendConfig, name: str, n_docs: int) -> dict[str, dict[str, object]]:
    """A plain 'existing' index with its own analyser: unicode, a large doc and docs with no title."""
    from conftest import client_of as connect

    client = connect(cfg)
    client.indices.create(index=name, body={
        "settings": {"index": {"number_of_shards": 2, "number_of_replicas": 0},
                     "analysis": {"analyzer": {"folded": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase"]}}}},
        "mappings": {"properties": {"title": {"type": "text", "analyzer": "folded"}, "text": {"type": "text"},
                                    "year": {"type": "integer"}}},
    })
    docs: dict[str, dict[str, object]] = {}
    for i in range(n_docs):
        doc: dict[str, object] = {"text": f"document {i} about topic{i % 11} — naïve café 東京 {i}", "year": 2000 + i % 20}
        if i % 5:
            doc["title"] = f"Title {i} ünïcödé"
        if i == 7:
            doc["text"] = "long " * 5000
        docs[f"id-{i:04d}"] = doc

    bulk_load(cfg, ({"_index": name, "_id": k, "_source": v} for k, v in docs.items()))
    return docs


def test_compare_against_the_cluster(cfg: BackendConfig, names: list[str], tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from conftest import SAMPLE
    from typer.testing import CliRunner

    from genq_search.cli import app

    index = new_name(names)
    result = CliRunner().invoke(app, ["compare", "--backend", cfg.engine.value, "--url", cfg.url, "--index", index,
                                      "--corpus", str(SAMPLE), "--run-dir", str(tmp_path), "--model", f"tiny={tiny_bi_encoder}",
                                      "--mode", "bm25", "--mode", "dense", "--mode", "hybrid-rrf"])
    assert result.exit_code == 0, result.output
    metrics = {r["name"]: r for r in json.loads((tmp_path / "compare" / "metrics.json").read_text())["runs"]}
    assert metrics["bm25"]["backend"] == cfg.engine.value and metrics["bm25"]["metrics"]["ndcg@10"] > 0.5
    # the same index is reused by a second run
    again = CliRunner().invoke(app, ["compare", "--backend", cfg.engine.value, "--url", cfg.url, "--index", index,
                                     "--corpus", str(SAMPLE), "--run-dir", str(tmp_path), "--model", f"tiny={tiny_bi_encoder}",
                                     "--mode", "bm25"])
    assert again.exit_code == 0, again.output


def test_gpl_mining_takes_bm25_negatives_from_the_cluster(cfg: BackendConfig, names: list[str], tiny_t5: Path,
                                                          tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from conftest import SAMPLE
    from conftest import client_of as connect
    from typer.testing import CliRunner

    from genq_search.cli import app

    index = new_name(names)
    config = tmp_path / "gpl.toml"
    config.write_text(f"""
run_dir = "{tmp_path / 'run'}"
[corpus]
path = "{SAMPLE}"
[generate]
generator = "{tiny_t5}"
queries_per_passage = "1"
max_passages = 8
max_new_tokens = 8
min_query_words = 1
[mine]
retrievers = ["{tiny_bi_encoder}"]
negatives = 4
""")
    runner = CliRunner()
    assert runner.invoke(app, ["generate", "--config", str(config), "--device", "cpu"]).exit_code == 0
    result = runner.invoke(app, ["mine", "--config", str(config), "--bm25", "--backend", cfg.engine.value, "--url", cfg.url,
                                 "--index", index, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert connect(cfg).count(index=index)["count"] == 787  # the whole sample corpus, BM25 only
    rows = [json.loads(line) for line in (tmp_path / "run" / "mine" / "hard-negatives.jsonl").open()]
    assert rows and all(len(r["negatives"]["bm25"]) <= 4 and not set(r["positives"]) & set(r["negatives"]["bm25"]) for r in rows)
    assert sum(len(r["negatives"]["bm25"]) == 4 for r in rows) >= len(rows) // 2  # (random queries may match few documents)
