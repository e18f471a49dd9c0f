"""The adapted model inside the cluster: ML Commons zip and sentence-transformers layouts, the embedding endpoint,
registration on the real local node, remote models, neural/hybrid queries and the ingest pipeline for new writes."""

from __future__ import annotations

import json
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import new_name, sample_texts
from test_opensearch import make_source

from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.encoders import row_cosines
from genq_search.errors import GenqError
from genq_search.export import export_bundle, pool
from genq_search.onnx_encoder import OnnxEncoder

TEXTS = sample_texts(40)


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture(scope="module")
def encoder(bundle: Path) -> OnnxEncoder:
    """fp32, like the endpoint below: the variant that export measured fastest may be int8, whose dynamic quantisation
    gives one document alone other vectors than the same document in a batch (within its parity threshold)."""
    return OnnxEncoder(bundle, variant="fp32", provider="cpu")


class BackgroundServer:
    """The endpoint on a daemon thread: ``with BackgroundServer(app, port) as url: ...``."""

    def __init__(self, app: Any, port: int, host: str = "127.0.0.1"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise GenqError(f"the embedding endpoint did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(bundle: Path):
    from genq_search.serve import create_app

    with BackgroundServer(create_app(bundle, provider="cpu", passage_tokens=64, variant="fp32"), free_port()) as url:
        yield url


def post(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST ``body`` (GET without one) and decode the JSON answer."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="session")
def cfg(opensearch_cfg: BackendConfig) -> BackendConfig:
    """ML Commons is OpenSearch's: these tests run on the OpenSearch node only."""
    return opensearch_cfg


def test_ml_commons_zip_layout_and_model_config(bundle: Path, tiny_bi_encoder: Path) -> None:
    import onnx
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["ml_commons"]
    archive = bundle / entry["zip"]
    from genq_search.data import file_sha256

    assert entry["sha256"] == file_sha256(archive) and entry["bytes"] == archive.stat().st_size
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert len(names) == 2 and "tokenizer.json" in names and all("/" not in n for n in names)  # flat
        graph_name = next(n for n in names if n.endswith(".onnx"))
        tokenizer = json.loads(zf.read("tokenizer.json"))
        graph = onnx.load_from_string(zf.read(graph_name))
    model = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    assert tokenizer["truncation"]["max_length"] == model.max_seq_length  # the cluster truncates like the tool
    assert graph.ir_version <= 9 and max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) <= 19
    config = entry["model_config"]
    assert config["model_type"] == "bert" and config["embedding_dimension"] == 32 and config["pooling_mode"] == "MEAN"
    assert config["normalize_result"] is True and json.loads(config["all_config"])["model_type"] == "bert"
    # ML Commons' rule: token_type_ids is fed for bert/albert only, and the graph must take exactly the fed inputs
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert graph.graph.output[0].name == "last_hidden_state"
    # pooled the way ML Commons pools it (mean over the mask, then L2), the first output embeds like PyTorch
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    features = model.tokenizer(TEXTS, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="np")
    tokens = session.run(None, {n: features[n].astype(np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")})[0]
    pooled = pool(tokens, features["attention_mask"], "mean")
    assert row_cosines(pooled, model.encode(TEXTS)).min() >= 0.999


def test_sentence_transformers_folder_layout(bundle: Path, tiny_bi_encoder: Path) -> None:
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    folder = bundle / "sentence-transformers"
    assert (folder / "modules.json").is_file() and (folder / "onnx" / "model.onnx").is_file()
    # the layout every sentence-transformers release reads (ST <= 5 cannot import ST 6's own module paths)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"] for m in modules] == [f"sentence_transformers.models.{c}" for c in ("Transformer", "Pooling", "Normalize")]
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert json.loads((folder / "sentence_bert_config.json").read_text()) == {"max_seq_length": 64, "do_lower_case": False}
    reference = SentenceTransformer(str(tiny_bi_encoder), device="cpu").encode(TEXTS)
    reloaded = SentenceTransformer(str(folder), device="cpu")  # the PyTorch weights of the same folder
    assert row_cosines(reloaded.encode(TEXTS), reference).min() >= 0.9999
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    features = reloaded.tokenizer(TEXTS, padding=True, truncation=True, max_length=reloaded.max_seq_length, return_tensors="np")
    tokens = session.run(None, {i.name: features[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    pooled = pool(tokens, features["attention_mask"], "mean")
    assert row_cosines(pooled, reference).min() >= 0.999


ST_ONNX_SCRIPT = """
import json, sys
import numpy, sentence_transformers
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], backend="onnx", device="cpu")
numpy.save(sys.argv[2], model.encode(json.loads(sys.argv[3])))
print(sentence_transformers.__version__)
"""


def test_sentence_transformers_onnx_backend_loads_the_folder(bundle: Path, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    """The exported folder through sentence-transformers' own ``backend="onnx"`` loader: in this environment when it
    has optimum-onnx, else in the side environment of ``scripts/st-onnx-env.sh`` (ST 5 + optimum-onnx 0.1, which
    need transformers < 4.58; ``scripts/test.sh`` sets GENQ_ST_ONNX_PYTHON)."""
    import importlib.util
    import os
    import subprocess

    from sentence_transformers import SentenceTransformer

    folder = bundle / "sentence-transformers"
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("optimum.onnxruntime"):
        vectors = SentenceTransformer(str(folder), backend="onnx", device="cpu").encode(TEXTS)
    elif python := os.environ.get("GENQ_ST_ONNX_PYTHON"):
        done = subprocess.run([python, "-c", ST_ONNX_SCRIPT, str(folder), str(tmp_path / "v.npy"), json.dumps(TEXTS)],
                              check=False, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1].startswith("5.")  # a release other than ours read the folder
        vectors = np.load(tmp_path / "v.npy")
    else:
        pytest.skip("sentence-transformers' ONNX backend needs optimum-onnx (transformers < 4.58): "
                    "GENQ_ST_ONNX_PYTHON=$(scripts/st-onnx-env.sh) runs it in a side environment")
    reference = SentenceTransformer(str(tiny_bi_encoder), device="cpu").encode(TEXTS)
    assert row_cosines(vectors, reference).min() >= 0.999


def test_export_without_ecosystem_formats_writes_neither(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    manifest = export_bundle(str(tiny_bi_encoder), tmp_path / "b", profile="cpu", sample_texts=TEXTS[:8], formats=())
    assert "ml_commons" not in manifest and not (tmp_path / "b" / "ml-commons").exists()
    with pytest.raises(GenqError, match="unknown export format"):
        export_bundle(str(tiny_bi_encoder), tmp_path / "c", profile="cpu", sample_texts=TEXTS[:8], formats=("tflite",))
    assert not (tmp_path / "c").exists()


def test_endpoint_embeds_exactly_like_the_bundle_and_splits_like_the_reindex(endpoint: str, encoder: OnnxEncoder) -> None:
    from genq_search.passages import split_documents

    health = post(f"{endpoint}/health")
    assert health["status"] == "ok" and health["dimension"] == encoder.dim and health["passage_tokens"] == 64
    got = post(f"{endpoint}/v1/embeddings", {"input": TEXTS[:10], "model": "x"})
    vectors = np.asarray([d["embedding"] for d in sorted(got["data"], key=lambda d: d["index"])])
    np.testing.assert_allclose(vectors, encoder.encode_queries(TEXTS[:10]), atol=1e-6)
    docs = [{"title": "A title", "text": " ".join(TEXTS[:6])}, {"title": "", "text": ["first field", "second field"]},
            {"title": "only a title"}, {}]
    got = post(f"{endpoint}/v1/passages", {"documents": docs})["documents"]
    corpus = {"0": {"title": "A title", "text": " ".join(TEXTS[:6])}, "1": {"title": "", "text": "first field second field"},
              "2": {"title": "", "text": "only a title"}}
    windows = split_documents(corpus, encoder.tokenizer, 64, 32)
    expected = encoder.encode_passages([w.text for w in windows], progress=False)
    assert [len(d["passages"]) for d in got] == [sum(w.doc_id == str(i) for w in windows) for i in range(3)] + [0]
    assert len(got[0]["passages"]) > 1  # the long document was split into windows
    flat = np.asarray([p["vector"] for d in got for p in d["passages"]])
    np.testing.assert_allclose(flat, expected, atol=1e-6)


def test_required_settings() -> None:
    from genq_search.engines.opensearch.mlcommons import required_settings

    local = required_settings(None)
    assert local["plugins.ml_commons.allow_registering_model_via_local_file"] == "true"
    private = required_settings("http://127.0.0.1:8080")
    assert private["plugins.ml_commons.connector.private_ip_enabled"] == "true"
    assert private["plugins.ml_commons.trusted_connector_endpoints_regex"] == r"^http://127\.0\.0\.1:8080/.*$"
    assert "plugins.ml_commons.connector.private_ip_enabled" not in required_settings("https://embed.example.com")


def test_a_failed_deploy_is_one_line_with_the_fix() -> None:
    from genq_search.engines.opensearch.mlcommons import explain_task_error

    line = explain_task_error({"state": "FAILED", "error": '{"node1":"publish.djl.ai"}'}, "deploying model m1")
    assert "DJL" in line and "pre-seed" in line and "\n" not in line
    assert explain_task_error({"error": "out of memory"}, "deploying").endswith("out of memory")


@pytest.mark.integration
def test_register_uploads_in_chunks_to_registered_on_the_real_node(cfg: BackendConfig, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genq_search.engines import connect
    from genq_search.engines.opensearch import mlcommons

    cluster = mlcommons.MLCommons(connect(cfg))
    mlcommons.ensure_settings(cluster, None, configure=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    monkeypatch.setattr(mlcommons, "CHUNK_BYTES", manifest["ml_commons"]["bytes"] // 3 + 1)  # force several chunks
    result = mlcommons.register_local(cluster, bundle, manifest, "genq-test", deploy=False)
    assert result["state"] == "REGISTERED" and result["chunks"] == 3
    stored = cluster.call("GET", f"/_plugins/_ml/models/{result['model_id']}")
    assert stored["model_content_hash_value"] == manifest["ml_commons"]["sha256"] and stored["model_format"] == "ONNX"
    try:  # an offline node cannot deploy (DJL downloads a native library); a connected one deploys and must match
        deployed = mlcommons.register_local(cluster, bundle, manifest, "genq-test", deploy=True)
    except GenqError as exc:
        assert "DJL" in str(exc) and "pre-seed the DJL cache" in str(exc)
    else:
        assert deployed["state"] == "DEPLOYED"
        assert mlcommons.parity(cluster, deployed["model_id"], OnnxEncoder(bundle, variant="fp32", provider="cpu")) >= 0.999


@pytest.mark.integration
def test_register_refuses_a_modified_zip(cfg: BackendConfig, bundle: Path, tmp_path: Path) -> None:
    import shutil

    from genq_search.engines.opensearch.mlcommons import register_bundle

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    archive = next((copy / "ml-commons").glob("*.zip"))
    archive.write_bytes(archive.read_bytes() + b"x")
    with pytest.raises(GenqError, match="checksum mismatch"):
        register_bundle(cfg, copy, None, None, "genq-test", deploy=False, configure=True)


@pytest.mark.integration
def test_remote_model_neural_hybrid_and_ingest(cfg: BackendConfig, names: list[str], bundle: Path, encoder: OnnxEncoder,
                                               endpoint: str, tmp_path: Path) -> None:
    from conftest import client_of as connect

    from genq_search.engines.opensearch import neural_query
    from genq_search.engines.opensearch.mlcommons import register_bundle
    from genq_search.index import run_reindex

    client = connect(cfg)
    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 60)
    run_reindex(cfg, CorpusConfig(passage_tokens=64), ReindexConfig(alias=alias), source, encoder, tmp_path)
    with pytest.raises(GenqError, match="does not answer /health"):
        register_bundle(cfg, bundle, "http://127.0.0.1:9", alias, "genq-test", configure=True)
    result = register_bundle(cfg, bundle, endpoint, alias, "genq-test", configure=True)
    assert result["parity_mean_cosine"] >= 0.999 and result["passages_parity_mean_cosine"] >= 0.999
    assert result["index"] == f"{alias}-v1"
    time.sleep(2)  # ML Commons' model index refreshes every second: the rerun's lookup must see the new models
    again = register_bundle(cfg, bundle, endpoint, alias, "genq-test", configure=True)  # a rerun registers nothing new
    assert (again["embedding_model_id"], again["passages_model_id"]) == (result["embedding_model_id"], result["passages_model_id"])
    model = result["embedding_model_id"]
    # server-side neural == client-side k-NN with the bundle's query vector (same top 10)
    for query in ["topic3 document", "naïve café", "long"]:
        vector = encoder.encode_queries([query])[0].tolist()
        client_side = {"nested": {"path": "passages", "score_mode": "max", "query": {"knn": {"passages.vector": {"vector": vector, "k": 100}}}}}
        ours = [h["_id"] for h in client.search(index=alias, body={"size": 10, "query": client_side})["hits"]["hits"]]
        theirs = [h["_id"] for h in client.search(index=alias, body={"size": 10, "query": neural_query(model, query, 100)})["hits"]["hits"]]
        assert theirs == ours
        pipeline = "genq-hybrid-min_max-0.5-0.5"
        client.transport.perform_request("PUT", f"/_search/pipeline/{pipeline}", body={"phase_results_processors": [{"normalization-processor": {
            "normalization": {"technique": "min_max"}, "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [0.5, 0.5]}}}}]})
        lexical = {"multi_match": {"query": query, "fields": ["title", "text"], "type": "best_fields", "tie_breaker": 0.5}}
        hybrid_ours = client.search(index=alias, params={"search_pipeline": pipeline},
                                    body={"size": 10, "query": {"hybrid": {"queries": [lexical, client_side]}}})["hits"]["hits"]
        hybrid_theirs = client.search(index=alias, params={"search_pipeline": pipeline},
                                      body={"size": 10, "query": {"hybrid": {"queries": [lexical, neural_query(model, query, 100)]}}})["hits"]["hits"]
        assert [h["_id"] for h in hybrid_theirs] == [h["_id"] for h in hybrid_ours]
    # compare's --model-id: dense and hybrid modes with the cluster embedding the queries rank as the client-side ones
    from genq_search.config import CompareConfig
    from genq_search.engines.base import ClusterBackend
    from genq_search.engines.opensearch import connect as connect_cluster
    from genq_search.fusion import Retrieval
    from genq_search.search import search

    queries = {"q1": "topic3 document", "q2": "naïve café", "q3": "long", "q4": "Title 12"}
    server = ClusterBackend(connect_cluster(cfg.model_copy(update={"model_id": model})), alias)
    client_side = ClusterBackend(connect_cluster(cfg.model_copy(update={"server_side_hybrid": True})), alias)
    assert server.embeds_queries and not client_side.embeds_queries
    for retrieval in (Retrieval("dense"), Retrieval("minmax", 0.5)):
        ours = search(client_side, retrieval, queries, encoder, CompareConfig(k=10))
        theirs = search(server, retrieval, queries, encoder, CompareConfig(k=10))
        assert {q: list(r) for q, r in theirs.items()} == {q: list(r) for q, r in ours.items()}
    # a document written through the alias after the upgrade gets the reindex's passage vectors from the cluster
    client.index(index=alias, id="new-0007", body=docs["id-0007"], refresh=True)
    client.index(index=alias, id="new-0001", body=docs["id-0001"], refresh=True)
    client.index(index=alias, id="new-0005", body=docs["id-0005"], refresh=True)  # no title: its placeholder gets the default
    assert "title" not in docs["id-0005"]
    for new, old in [("new-0007", "id-0007"), ("new-0001", "id-0001"), ("new-0005", "id-0005")]:
        ingested = np.asarray([p["vector"] for p in client.get(index=alias, id=new)["_source"]["passages"]])
        reindexed = np.asarray([p["vector"] for p in client.get(index=alias, id=old)["_source"]["passages"]])
        assert ingested.shape == reindexed.shape and row_cosines(ingested, reindexed).min() >= 0.9999
    vector = np.asarray(client.get(index=alias, id="new-0001")["_source"]["passages"][0]["vector"]).tolist()
    hits = client.search(index=alias, body={"size": 2, "query": {"nested": {"path": "passages", "score_mode": "max", "query": {
        "knn": {"passages.vector": {"vector": vector, "k": 10}}}}}})["hits"]["hits"]
    assert "new-0001" in {h["_id"] for h in hits}  # found by k-NN (tied with its twin id-0001)
    client.transport.perform_request("PUT", "/_ingest/pipeline/someone-elses", body={"processors": []})
    client.indices.put_settings(index=alias, body={"index": {"default_pipeline": "someone-elses"}})
    with pytest.raises(GenqError, match="already has the default pipeline 'someone-elses'"):
        register_bundle(cfg, bundle, endpoint, alias, "genq-test", configure=True)  # a team's own pipeline is never replaced


@pytest.mark.integration
def test_register_refuses_an_index_of_another_dimension(cfg: BackendConfig, names: list[str], bundle: Path, endpoint: str) -> None:
    from conftest import client_of as connect

    from genq_search.engines import connect as connect_cluster
    from genq_search.engines.opensearch.mlcommons import register_bundle

    index = new_name(names, "dim")
    connect(cfg).indices.create(index=index, body={"settings": {"index": {"knn": True}}, "mappings": {"properties": {
        "text": {"type": "text"}, "passages": connect_cluster(cfg).vector_field_mapping(8)}}})
    with pytest.raises(GenqError, match="dimension 32.*holds 8"):
        register_bundle(cfg, bundle, endpoint, index, "genq-test", configure=True)
    assert "default_pipeline" not in connect(cfg).indices.get_settings(index=index)[index]["settings"]["index"]


def test_cli_errors_are_one_line(bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genq_search.cli import app

    result = CliRunner().invoke(app, ["register", "--bundle", str(bundle), "--attach-to", "x"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("error: --attach-to: needs --endpoint")
    result = CliRunner().invoke(app, ["serve", "--bundle", str(bundle), "--passage-tokens", "16", "--passage-stride", "16"])
    assert result.exit_code == 1 and "must be smaller than --passage-tokens" in result.output.strip().splitlines()[-1]
    result = CliRunner().invoke(app, ["serve", "--bundle", str(tmp_path / "none")])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("error: ")
