"""The cluster interface on real nodes: engine detection, the engine named wrongly, sources a reindex must refuse,
Elasticsearch's vector index options. The contract tests (test_opensearch, test_reindex, test_upgrade) run on every
engine through the parametrised ``cfg`` fixture."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import client_of, engine_cfg, new_name
from test_opensearch import random_collection

from genq_search.config import (
    BackendConfig,
    CorpusConfig,
    Engine,
    ReindexConfig,
    RunConfig,
)
from genq_search.errors import GenqError

pytestmark = pytest.mark.integration


def test_the_engine_is_detected_from_the_node(cfg: BackendConfig) -> None:
    from genq_search.engines import connect, detect_engine

    assert detect_engine(cfg) is Engine(cfg.engine)
    cluster = connect(cfg.model_copy(update={"engine": Engine.AUTO}))
    assert cluster.engine == cfg.engine and cluster.major >= 2


def test_a_node_of_the_other_engine_is_one_line(cfg: BackendConfig) -> None:
    from genq_search.engines import connect

    other = "elasticsearch" if cfg.engine == "opensearch" else "opensearch"
    with pytest.raises(GenqError, match=f"runs {cfg.engine}, not {other}"):
        connect(cfg.model_copy(update={"engine": Engine(other)}))


@pytest.mark.parametrize(("url", "message"), [
    ("opensearch://host:notaport", "the port is not a number"),
    ("htp//host", "is not a cluster URL"),
    ("garbage", "is not a cluster URL"),
])
def test_bad_urls_are_refused_before_anything_runs(url: str, message: str) -> None:
    with pytest.raises(GenqError, match=message):
        RunConfig.load(None, {"backend": {"url": url}})


def test_url_scheme_names_the_engine() -> None:
    assert RunConfig.load(None, {"backend": {"url": "elasticsearchs://es.example:9243"}}).backend.engine is Engine.ELASTICSEARCH
    cfg = RunConfig.load(None, {"corpus": {"path": "elasticsearch://127.0.0.1:9210/docs"}})
    assert (cfg.corpus.source_index, cfg.backend.url, cfg.backend.engine) == ("docs", "http://127.0.0.1:9210", Engine.EMBEDDED)
    with pytest.raises(GenqError, match="the URL names elasticsearch but engine is opensearch"):
        RunConfig.load(None, {"backend": {"url": "elasticsearch://h:9200", "engine": "opensearch"}})
    old = RunConfig.load(None, {"backend": {"kind": "opensearch", "engine": "faiss"}}).backend  # names of earlier versions
    assert (old.engine, old.knn_library.value) == (Engine.OPENSEARCH, "faiss")


def _source_index(cfg: BackendConfig, names: list[str], mappings: dict) -> str:
    client = client_of(cfg)
    name = new_name(names, "src")
    client.indices.create(index=name, body={"settings": {"number_of_replicas": 0}, "mappings": mappings})
    return name


@pytest.mark.parametrize(("mappings", "message"), [
    ({"_source": {"enabled": False}, "properties": {"text": {"type": "text"}}}, "has _source disabled"),
    ({"properties": {"text": {"type": "text"}, "passages": {"type": "keyword"}}}, "not a genq-search vector field"),
])
def test_sources_a_reindex_cannot_copy_are_refused_and_nothing_is_written(cfg: BackendConfig, names: list[str], tmp_path,
                                                                          tiny_bi_encoder, mappings: dict, message: str) -> None:
    from genq_search.encoders import load_encoder
    from genq_search.index import run_reindex

    source, alias = _source_index(cfg, names, mappings), new_name(names, "live")
    client = client_of(cfg)
    client.index(index=source, id="a", body={"text": "one document"}, refresh=True)
    encoder = load_encoder(str(tiny_bi_encoder), device="cpu")
    with pytest.raises(GenqError, match=message):
        run_reindex(cfg, CorpusConfig(), ReindexConfig(alias=alias), source, encoder, tmp_path)
    assert not client.indices.exists(index=f"{alias}-v1") and not client.indices.exists_alias(name=alias)


def test_semantic_text_fields_are_refused() -> None:
    """The local nodes have no inference module to create one; the check on the mapping the cluster would return."""
    from genq_search.index import check_source_mappings

    with pytest.raises(GenqError, match=r"semantic_text fields \(meta.summary\)"):
        check_source_mappings({"properties": {"meta": {"properties": {"summary": {"type": "semantic_text"}}}}}, "docs", 384)


@pytest.fixture
def es_names():
    """Fresh index names on the Elasticsearch node, deleted after the test."""
    from conftest import fresh_names

    yield from fresh_names(engine_cfg("elasticsearch"))


@pytest.mark.parametrize("options", ["hnsw", "int8_hnsw", "bbq_hnsw"])
def test_elasticsearch_vector_index_options_find_the_nearest_documents(es_names: list[str], options: str) -> None:
    from genq_search.engines import cluster_backend

    names = es_names
    cfg = engine_cfg("elasticsearch").model_copy(update={"index_options": options})
    corpus, passages, vectors = random_collection(n_docs=40, dim=64)
    backend = cluster_backend(cfg, new_name(names, options.replace("_", "-")))
    backend.index(corpus, passages, vectors)
    queries = vectors[[0, 7, 30]]
    found = backend.vector_search(["a", "b", "c"], queries, 5)
    for qid, row, vector in zip("abc", [0, 7, 30], queries, strict=True):
        assert passages[row].doc_id in list(found[qid])[:2], (options, qid)  # quantised scores may tie the runner-up
        best = float(np.max(vectors[[i for i, p in enumerate(passages) if p.doc_id == passages[row].doc_id]] @ vector))
        assert found[qid][passages[row].doc_id] == pytest.approx(best, abs=0.05 if options != "hnsw" else 1e-3)
    if options == "bbq_hnsw":
        small = cfg.model_copy(update={"overwrite": True})
        with pytest.raises(GenqError, match="bbq_hnsw needs vectors of 64 or more dimensions"):
            cluster_backend(small, new_name(names, "bbq-small")).index(*random_collection(n_docs=3, dim=16))
