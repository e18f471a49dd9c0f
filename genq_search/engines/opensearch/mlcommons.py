"""The adapted model inside the cluster: ML Commons registration, remote models over ``genq-search serve`` and the
ingest pipeline that embeds new documents (the ``neural`` query that uses them is the dialect's, in ``engines.opensearch``).

Two ways in:
- **local**: the bundle's ML Commons zip is registered (model group, ``_register_meta``, chunked upload) and deployed
  on the cluster's own ONNX runtime (DJL). An offline node cannot deploy it (DJL downloads a native library at first
  deploy); that failure is recognised and explained.
- **remote**: two ML Commons remote models call the endpoint of ``genq-search serve``: ``/v1/embeddings`` (OpenAI
  shape, ML Commons' built-in OpenAI pre/post-processing) for ``neural`` queries, and ``/v1/passages`` (the tool's own
  passage windows) for an ``ml_inference`` ingest processor that writes the nested ``passages`` vectors exactly as the
  reindex does. This works on any cluster, offline ones included, and keeps inference off the data nodes.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from genq_search.config import BackendConfig, CorpusConfig
from genq_search.encoders import row_cosines
from genq_search.engines.base import VECTOR_FIELD
from genq_search.engines.opensearch import explain_error
from genq_search.errors import GenqError

logger = logging.getLogger(__name__)

ML = "/_plugins/_ml"
CHUNK_BYTES = 10_000_000  # ML Commons refuses larger upload chunks
PARITY_TEXTS = ["what causes high blood pressure", "python json parse error",
                "Aspirin lowers the risk of a first heart attack in adults over 50, a trial of 20,000 people found."]
MIN_PARITY_COSINE = 0.999


class MLCommons:
    """ML Commons REST calls with one-line errors, on an OpenSearch cluster."""

    def __init__(self, cluster: Any):
        self.client, self.cfg = cluster.client, cluster.cfg

    def call(self, method: str, path: str, body: Any = None, action: str = "", **params: Any) -> Any:
        try:
            return self.client.transport.perform_request(method, path, body=body, params=params or None)
        except Exception as exc:  # noqa: BLE001
            error = explain_error(exc, self.cfg, action or f"{method} {path}")
            if "no handler found" in str(exc).lower() or "Incorrect HTTP method" in str(exc):
                error = GenqError(f"the cluster at {self.cfg.url} has no ML Commons plugin (opensearch-ml) while {action}; "
                                  "install it (scripts/opensearch-local.sh installs it with GENQ_OPENSEARCH_NEURAL=1)")
            raise error from None

    def wait_task(self, task_id: str, action: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """Poll an ML task until it completes; a failed task raises its own error message."""
        deadline = time.monotonic() + timeout_s
        while True:
            task = self.call("GET", f"{ML}/tasks/{task_id}", action=action)
            state = task.get("state")
            if state in ("COMPLETED", "COMPLETED_WITH_ERROR", "FAILED", "CANCELLED"):
                if state != "COMPLETED":
                    raise GenqError(explain_task_error(task, action))
                return task
            if time.monotonic() > deadline:
                raise GenqError(f"{action}: ML task {task_id} still {state} after {timeout_s:.0f}s")
            time.sleep(1.0)

    def model_group(self, name: str) -> str:
        """The id of the model group ``name``, created when missing."""
        found = self.call("POST", f"{ML}/model_groups/_search", {"query": {"term": {"name.keyword": name}}, "size": 1},
                          action="looking up the model group")
        hits = found.get("hits", {}).get("hits", [])
        if hits:
            return hits[0]["_id"]
        created = self.call("POST", f"{ML}/model_groups/_register",
                            {"name": name, "description": "genq-search adapted models"}, action="creating the model group")
        return created["model_group_id"]


def explain_task_error(task: dict[str, Any], action: str) -> str:
    """One line from a failed ML task; the offline DJL native-library download gets its fix."""
    error = task.get("error") or "no error message"
    if isinstance(error, dict):  # per-node errors
        error = "; ".join(f"{v}" for v in error.values())
    text = str(error)
    if re.search(r"publish\.djl\.ai|djl\.ai|pytorch native|Failed to (?:download|save) pytorch", text, re.IGNORECASE):
        return (f"{action} failed: ML Commons' ONNX runtime (DJL) could not load its native library, which it downloads "
                f"at the first deploy (offline node?): {text[:200]}. Fix: pre-seed the DJL cache (~/.djl.ai of the "
                "OpenSearch user, or DJL_CACHE_DIR) from a machine with internet, or serve the model outside the cluster: "
                "genq-search serve + register --endpoint")
    return f"{action} failed: {text[:300]}"


def required_settings(endpoint: str | None) -> dict[str, Any]:
    """Cluster settings ML Commons needs on a cluster without dedicated ML nodes: chunked upload of a local model,
    or a trusted (and, on a private address, allowed) endpoint for remote models."""
    settings: dict[str, Any] = {"plugins.ml_commons.only_run_on_ml_node": "false"}
    if not endpoint:
        settings["plugins.ml_commons.allow_registering_model_via_local_file"] = "true"
    else:
        parsed = urllib.parse.urlparse(endpoint)
        settings["plugins.ml_commons.trusted_connector_endpoints_regex"] = f"^{re.escape(f'{parsed.scheme}://{parsed.netloc}')}/.*$"
        try:
            private = ipaddress.ip_address(parsed.hostname or "").is_private or parsed.hostname == "localhost"
        except ValueError:
            private = parsed.hostname == "localhost"
        if private:
            settings["plugins.ml_commons.connector.private_ip_enabled"] = "true"
    return settings


def ensure_settings(cluster: MLCommons, endpoint: str | None, configure: bool) -> list[str]:
    """Check (and with ``configure`` apply) :func:`required_settings`; returns the settings changed."""
    current = cluster.call("GET", "/_cluster/settings", action="reading cluster settings", include_defaults="true", flat_settings="true")
    merged = {**current.get("defaults", {}), **current.get("persistent", {}), **current.get("transient", {})}
    missing: dict[str, Any] = {}
    for key, value in required_settings(endpoint).items():
        have = merged.get(key)
        if key.endswith("endpoints_regex"):
            listed = [merged[k] for k in sorted(merged) if k.startswith(key)] if have is None else (have if isinstance(have, list) else [have])
            if value not in listed:
                missing[key] = [*listed, value]
        elif str(have).lower() != value:
            missing[key] = value
    if missing and not configure:
        raise GenqError(f"the cluster needs these settings for ML Commons: {json.dumps(missing)}; pass --configure-cluster "
                        "to set them (persistent), or set them yourself")
    if missing:
        cluster.call("PUT", "/_cluster/settings", {"persistent": missing}, action="setting ML Commons cluster settings")
        logger.info("cluster settings set: %s", missing)
    return sorted(missing)


def local_archive(bundle: Path, manifest: dict[str, Any]) -> Path:
    """The bundle's ML Commons zip, checked against its manifest checksum."""
    from genq_search.data import file_sha256

    entry = manifest.get("ml_commons")
    if not entry:
        raise GenqError(f"{bundle}: the bundle has no ML Commons zip; re-export it with --formats ml-commons")
    archive = bundle / entry["zip"]
    if not archive.is_file() or file_sha256(archive) != entry["sha256"]:
        raise GenqError(f"{archive}: missing or modified (checksum mismatch); re-export the bundle")
    return archive


def register_local(cluster: MLCommons, bundle: Path, manifest: dict[str, Any], group: str, deploy: bool = True) -> dict[str, Any]:
    """Register the bundle's ML Commons zip in chunks and (optionally) deploy it; returns ids and states."""
    entry = manifest["ml_commons"]
    archive = local_archive(bundle, manifest)
    size = archive.stat().st_size
    chunks = math.ceil(size / CHUNK_BYTES)
    meta = {"name": archive.stem, "version": str(manifest.get("exported_at", "1")), "model_format": "ONNX",
            "model_group_id": cluster.model_group(group), "model_content_size_in_bytes": size,
            "model_content_hash_value": entry["sha256"], "model_config": entry["model_config"], "total_chunks": chunks,
            "function_name": "TEXT_EMBEDDING", "description": f"genq-search bundle of {manifest.get('source_model')}"}
    model_id = cluster.call("POST", f"{ML}/models/_register_meta", meta, action="registering the model")["model_id"]
    with archive.open("rb") as handle:
        for n in range(chunks):  # raw bytes; ML Commons only accepts them under a JSON content type
            cluster.call("POST", f"{ML}/models/{model_id}/upload_chunk/{n}", handle.read(CHUNK_BYTES),
                         action=f"uploading chunk {n + 1}/{chunks}")
    out = {"model_id": model_id, "state": _wait_state(cluster, model_id, {"REGISTERED"}, "registering the model"),
           "chunks": chunks, "bytes": size}
    if deploy:
        action = f"deploying model {model_id} (registered)"
        task = cluster.call("POST", f"{ML}/models/{model_id}/_deploy", action=action)
        cluster.wait_task(task["task_id"], action)
        out["state"] = _wait_state(cluster, model_id, {"DEPLOYED"}, action)
    return out


def _wait_state(cluster: MLCommons, model_id: str, wanted: set[str], action: str, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        state = cluster.call("GET", f"{ML}/models/{model_id}", action=action).get("model_state", "")
        if state in wanted:
            return state
        if state.endswith("FAILED") or time.monotonic() > deadline:
            raise GenqError(f"{action}: model {model_id} is {state or 'in no state'}")
        time.sleep(0.5)


def connector_body(name: str, url: str, kind: str, text_fields: int = 1) -> dict[str, Any]:
    """An ML Commons HTTP connector to ``genq-search serve``: ``embeddings`` (OpenAI shape) or ``passages``."""
    action: dict[str, Any] = {"action_type": "predict", "method": "POST", "headers": {"Content-Type": "application/json"}}
    if kind == "embeddings":
        action |= {"url": f"{url.rstrip('/')}/v1/embeddings",
                   "request_body": '{ "input": ${parameters.input}, "model": "${parameters.model}" }',
                   "pre_process_function": "connector.pre_process.openai.embedding",
                   "post_process_function": "connector.post_process.openai.embedding"}
    parameters: dict[str, str] = {"model": name}
    if kind == "passages":  # string parameters arrive JSON-escaped without quotes: the template quotes them
        texts = ", ".join(f'"${{parameters.text_{i}}}"' for i in range(text_fields))
        action |= {"url": f"{url.rstrip('/')}/v1/passages",
                   "request_body": f'{{ "documents": [{{"title": "${{parameters.title}}", "text": [{texts}]}}] }}'}
        # defaults for the fields a document lacks: ML Commons refuses a request with an unfilled placeholder
        parameters |= {"title": "", **{f"text_{i}": "" for i in range(text_fields)}}
    return {"name": name, "description": f"genq-search serve at {url} ({kind})", "version": "1", "protocol": "http",
            "parameters": parameters, "credential": {"unused": "none"},  # ML Commons requires a credential map
            "actions": [action]}


def register_remote(cluster: MLCommons, url: str, name: str, kind: str, group: str, text_fields: int = 1) -> str:
    """A deployed remote model ``name`` over the endpoint: the existing one when its connector is this one (a rerun
    registers nothing new), else a new connector and model; returns the model id."""
    body = connector_body(name, url, kind, text_fields)
    found = cluster.call("POST", f"{ML}/models/_search", {"query": {"term": {"name.keyword": name}}, "size": 20},
                         action=f"looking up the {kind} remote model")
    for hit in found.get("hits", {}).get("hits", []):
        source = hit["_source"]
        if "connector_id" not in source or source.get("model_state") != "DEPLOYED":
            continue
        connector = cluster.call("GET", f"{ML}/connectors/{source['connector_id']}", action=f"reading the {kind} connector")
        if [{k: a.get(k) for k in ("url", "request_body")} for a in connector.get("actions", [])] == \
                [{k: a.get(k) for k in ("url", "request_body")} for a in body["actions"]] and \
                connector.get("parameters") == body["parameters"]:
            return hit["_id"]
    connector = cluster.call("POST", f"{ML}/connectors/_create", body, action=f"creating the {kind} connector")["connector_id"]
    model = cluster.call("POST", f"{ML}/models/_register", {"name": name, "function_name": "remote", "connector_id": connector,
                                                             "model_group_id": cluster.model_group(group)},
                         action=f"registering the {kind} remote model", deploy="true")
    if model.get("task_id"):
        cluster.wait_task(model["task_id"], f"registering the {kind} remote model")
    _wait_state(cluster, model["model_id"], {"DEPLOYED"}, f"deploying the {kind} remote model")
    return model["model_id"]


def predict(cluster: MLCommons, model_id: str, texts: list[str]) -> np.ndarray:
    """The cluster's embeddings of ``texts`` under ``model_id``."""
    result = cluster.call("POST", f"{ML}/_predict/text_embedding/{model_id}", {"text_docs": texts},
                          action="embedding sample texts in the cluster")
    # a local model answers one result per text, a remote one a single result with one output per text
    return np.asarray([o["data"] for r in result["inference_results"] for o in r["output"]], dtype=np.float32)


def parity(cluster: MLCommons, model_id: str, encoder: Any, texts: list[str] = PARITY_TEXTS) -> float:
    """Mean cosine between the cluster's and the tool's embeddings; raises below :data:`MIN_PARITY_COSINE`."""
    theirs = predict(cluster, model_id, texts)
    ours = encoder.encode_queries(texts)
    if theirs.shape != ours.shape:
        raise GenqError(f"model {model_id} embeds to dimension {theirs.shape[-1]}, the bundle to {ours.shape[-1]}")
    cosine = row_cosines(theirs, ours)
    if cosine.min() < MIN_PARITY_COSINE:
        raise GenqError(f"the cluster's embeddings differ from the bundle's (min cosine {cosine.min():.5f} < "
                        f"{MIN_PARITY_COSINE}); not attaching model {model_id}")
    return float(cosine.mean())


def ingest_pipeline_body(passages_model: str, title_field: str | None, text_fields: list[str]) -> dict[str, Any]:
    """An ``ml_inference`` processor: the document's title and text fields go to ``/v1/passages``; the windows'
    vectors come back into the nested passage field, as the reindex writes them."""
    inputs = {f"text_{i}": name for i, name in enumerate(text_fields)}
    if title_field:
        inputs["title"] = title_field
    return {"description": "genq-search: passage vectors for new documents (genq-search serve /v1/passages)",
            "processors": [{"ml_inference": {
                "model_id": passages_model, "input_map": [inputs],
                "output_map": [{VECTOR_FIELD: "documents[0].passages"}], "ignore_missing": True, "override": True}}]}


def check_index(cluster: MLCommons, index: str, health: dict[str, Any]) -> dict[str, Any]:
    """The index the endpoint will serve (an index, or an alias over one) and how its documents were split; refuses a
    vector dimension or passage windows other than the endpoint's, and a default pipeline that is not the tool's."""
    mapping = cluster.call("GET", f"/{index}/_mapping", action=f"reading the mapping of '{index}'")
    if len(mapping) != 1:
        raise GenqError(f"'{index}' resolves to {len(mapping)} indices; give the one index the model serves")
    concrete, body = next(iter(mapping.items()))
    vector = body["mappings"].get("properties", {}).get(VECTOR_FIELD, {}).get("properties", {}).get("vector")
    if not vector:
        raise GenqError(f"'{concrete}' has no '{VECTOR_FIELD}.vector' field: reindex it with genq-search first")
    if health["dimension"] != int(vector["dimension"]):
        raise GenqError(f"the endpoint embeds to dimension {health['dimension']}, '{concrete}' holds {vector['dimension']}: "
                        "serve the bundle the index was built with")
    meta = body["mappings"].get("_meta", {}).get("genq_search", {})
    tokens = meta.get("passage_tokens")
    tokens = health["max_length"] if tokens is None else tokens
    stride = meta.get("passage_stride", CorpusConfig.model_fields["passage_stride"].default)
    if (health["passage_tokens"], health["passage_stride"]) != (tokens, stride):
        raise GenqError(f"the endpoint splits passages as {health['passage_tokens']}/{health['passage_stride']} tokens, "
                        f"'{concrete}' was built with {tokens}/{stride}: restart serve with --passage-tokens {tokens} "
                        f"--passage-stride {stride}")
    settings = cluster.call("GET", f"/{concrete}/_settings", action=f"reading the settings of '{concrete}'", flat_settings="true")
    current = settings[concrete]["settings"].get("index.default_pipeline")
    pipeline = f"genq-{concrete}-ingest"
    if current not in (None, "_none", pipeline):
        raise GenqError(f"'{concrete}' already has the default pipeline '{current}'; the tool does not replace it "
                        f"(chain it with '{pipeline}' yourself, or remove it first)")
    # indices written by `genq-search index` hold the template's title/text fields; a reindex records its own
    fields = {"title_field": meta["title_field"], "text_fields": meta["text_fields"]} if "text_fields" in meta else \
        {"title_field": "title", "text_fields": ["text"]}
    return {"index": concrete, "pipeline": pipeline, **fields}


def passages_parity(cluster: MLCommons, model_id: str, encoder: Any, windows: Any) -> float:
    """Mean cosine between the passage vectors the cluster gets from ``/v1/passages`` and the reindex's own."""
    from genq_search.passages import split_documents

    text = " ".join(PARITY_TEXTS * 40)  # long enough to be split into several windows
    result = cluster.call("POST", f"{ML}/models/{model_id}/_predict", {"parameters": {"title": "A title", "text_0": text}},
                          action="splitting and embedding a sample document in the cluster")
    theirs = np.asarray([p["vector"] for p in result["inference_results"][0]["output"][0]["dataAsMap"]["documents"][0]["passages"]])
    passages = split_documents({"d": {"title": "A title", "text": text}}, encoder.tokenizer, *windows)
    ours = encoder.encode_passages([p.text for p in passages], progress=False)
    if theirs.shape != ours.shape:
        raise GenqError(f"the cluster split the sample into {len(theirs)} passages, the reindex into {len(ours)}; "
                        f"not attaching model {model_id}")
    cosine = row_cosines(theirs, ours)
    if cosine.min() < MIN_PARITY_COSINE:
        raise GenqError(f"the cluster's passage vectors differ from the reindex's (min cosine {cosine.min():.5f}); "
                        f"not attaching model {model_id}")
    return float(cosine.mean())


def attach(cluster: MLCommons, target: dict[str, Any], url: str, encoder: Any, group: str, health: dict[str, Any]) -> dict[str, Any]:
    """Remote models over the endpoint, both parity-checked, then the ingest pipeline as the index's default pipeline."""
    index, texts = target["index"], len(target["text_fields"])
    embeddings = register_remote(cluster, url, f"genq-{index}-embeddings", "embeddings", group)
    cosine = parity(cluster, embeddings, encoder)
    passages = register_remote(cluster, url, f"genq-{index}-passages", "passages", group, texts)
    passage_cosine = passages_parity(cluster, passages, encoder, (health["passage_tokens"], health["passage_stride"]))
    cluster.call("PUT", f"/_ingest/pipeline/{target['pipeline']}",
                 ingest_pipeline_body(passages, target["title_field"], target["text_fields"]), action="creating the ingest pipeline")
    cluster.call("PUT", f"/{index}/_settings", {"index": {"default_pipeline": target["pipeline"]}},
                 action=f"attaching the ingest pipeline to '{index}'")
    return {"index": index, "embedding_model_id": embeddings, "passages_model_id": passages, "ingest_pipeline": target["pipeline"],
            "parity_mean_cosine": cosine, "passages_parity_mean_cosine": passage_cosine}


def endpoint_health(endpoint: str, bundle: Path) -> dict[str, Any]:
    """``GET /health`` of a ``genq-search serve`` endpoint (one clear line when it does not answer)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/health", timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise GenqError(f"the endpoint {endpoint} does not answer /health ({exc}); start it: genq-search serve --bundle {bundle}") from None


def register_bundle(cfg: BackendConfig, bundle: Path, endpoint: str | None, attach_to: str | None, group: str = "genq-search",
                    deploy: bool = True, configure: bool = False) -> dict[str, Any]:
    """``genq-search register``: the local model zip (no endpoint), or remote models over the endpoint (and, with
    ``attach_to``, the ingest pipeline attached to that index or alias). Everything that can be checked is checked before the cluster is
    changed; each model's embeddings are compared with the bundle's before it is attached or reported."""
    from genq_search.engines import connect
    from genq_search.onnx_encoder import OnnxEncoder

    health = endpoint_health(endpoint, bundle) if endpoint else None
    # compared with what the cluster runs: the endpoint's variant, or fp32 for the local zip (its graph is fp32)
    encoder = OnnxEncoder(bundle, variant=health["variant"] if health else "fp32", provider="cpu")
    engine = connect(cfg)
    if engine.engine != "opensearch":
        raise GenqError(f"register puts the model into OpenSearch's ML Commons; {engine.label} {engine.version} at "
                        f"{cfg.url} has no such plugin (an Elasticsearch inference endpoint is not supported)")
    cluster = MLCommons(engine)
    target = check_index(cluster, attach_to, health) if attach_to and health else None
    if endpoint is None:
        local_archive(bundle, encoder.manifest)
    changed = ensure_settings(cluster, endpoint, configure)
    if endpoint is None:
        result = register_local(cluster, bundle, encoder.manifest, group, deploy)
        if result["state"] == "DEPLOYED":
            result["parity_mean_cosine"] = parity(cluster, result["model_id"], encoder)
    elif target is not None:
        assert health is not None
        result = attach(cluster, target, endpoint, encoder, group, health)
    else:
        model_id = register_remote(cluster, endpoint, f"genq-{bundle.name}-embeddings", "embeddings", group)
        result = {"embedding_model_id": model_id, "parity_mean_cosine": parity(cluster, model_id, encoder)}
    return {**result, "cluster_settings_set": changed}
