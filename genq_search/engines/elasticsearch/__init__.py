"""Elasticsearch (the official ``elasticsearch`` client, 8.x; its ``helpers`` for bulk): the cluster interface of
``engines.base`` for Elasticsearch 8.11+ and 9.x.

Passage vectors sit in a ``nested`` ``dense_vector`` field with explicit ``index_options`` (``backend.index_options``:
hnsw, int8_hnsw, bbq_hnsw); the top-level ``knn`` section on ``passages.vector`` returns each document once, scored by
its nearest passage. The similarity follows ``backend.space_type`` (innerproduct -> max_inner_product, cosinesimil
-> cosine, l2 -> l2_norm), whose score transforms are the k-NN plugin's, so scores map back the same way.
Hybrid: fused on the client (the tuned fusion); the ``rrf``/``linear`` retrievers live in the ``rank-rrf`` module,
which the tested nodes do not have, so no server-side fusion is offered. No inference endpoint is registered either
(the tested nodes have no inference module).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from genq_search.config import BackendConfig
from genq_search.engines.base import VECTOR_FIELD, Cluster, failure_line
from genq_search.errors import GenqError

MIN_VERSION = (8, 11)  # kNN on a nested dense_vector field
SIMILARITY = {"innerproduct": "max_inner_product", "cosinesimil": "cosine", "l2": "l2_norm"}


def _require_client() -> Any:
    try:
        import elasticsearch
    except ModuleNotFoundError:
        raise GenqError("the Elasticsearch engine needs the elasticsearch client: pip install 'genq-search[elasticsearch]'") from None
    return elasticsearch


def explain_error(exc: BaseException, cfg: BackendConfig, action: str) -> GenqError:
    """Map elasticsearch-py / elastic-transport exceptions to one clear line."""
    es = _require_client()
    import elastic_transport

    status = _status(exc)
    kind, reason = "", ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        kind = str(error.get("type", ""))
        reason = (error.get("root_cause") or [{}])[0].get("reason") or error.get("reason") or ""
    elif isinstance(exc, es.ApiError):
        kind, reason = str(getattr(exc, "message", "")), str(body)[:300]
    if isinstance(exc, es.UnsupportedProductError):
        return GenqError(f"the node at {cfg.url} is not Elasticsearch (while {action}): set backend.engine (--backend) "
                         "to the engine it runs, or leave it to detection (auto)")
    if status == 400 and "media-type" in (reason + kind + str(exc)).lower():
        return GenqError(f"elasticsearch client {es.__versionstr__} cannot talk to the node at {cfg.url} (while {action}): "
                         "the 9.x client needs Elasticsearch 9; pip install 'elasticsearch>=8.13,<9' for an 8.x node")
    if kind == "illegal_argument_exception" and "mapp" in reason:
        kind = "mapper_exception"
    return failure_line(cfg, "Elasticsearch", action, exc, status=status, kind=kind, reason=reason,
                        tls=isinstance(exc, elastic_transport.TlsError), connection=isinstance(exc, elastic_transport.ConnectionError))


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def _status(exc: BaseException) -> int | None:
    meta = getattr(exc, "meta", None)
    status = getattr(meta, "status", None) if meta is not None else getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def connect(cfg: BackendConfig) -> ElasticsearchCluster:
    """The cluster at the URL, with basic auth, TLS options, timeouts and retries; its version checked."""
    es = _require_client()
    auth = (cfg.username, cfg.password or "") if cfg.username else None
    client = es.Elasticsearch(
        hosts=[cfg.url], basic_auth=auth, verify_certs=cfg.verify_certs,
        ca_certs=str(cfg.ca_certs) if cfg.ca_certs else None, ssl_show_warn=cfg.verify_certs,
        request_timeout=cfg.timeout_s, max_retries=3, retry_on_timeout=True, http_compress=cfg.http_compress,
    )
    try:  # GET / is not served by every distribution (the integ-test node answers 405): the local node's info instead
        nodes = client.nodes.info(node_id="_local", filter_path="nodes.*.version").body["nodes"]
    except Exception as exc:  # noqa: BLE001 - mapped to one line
        raise explain_error(exc, cfg, "connecting") from None
    node = next(iter(nodes.values()))
    version = str(node["version"])
    if _version(version) < MIN_VERSION:
        raise GenqError(f"Elasticsearch {version} at {cfg.url} has no kNN search on nested dense_vector fields: "
                        f"{'.'.join(map(str, MIN_VERSION))} or newer is needed")
    return ElasticsearchCluster(client, cfg, version)


class ElasticsearchCluster(Cluster):
    engine, label = "elasticsearch", "Elasticsearch"

    def explain(self, exc: BaseException, action: str) -> GenqError:
        return explain_error(exc, self.cfg, action)

    def status_of(self, exc: BaseException) -> int | None:
        return _status(exc)

    def _search(self, index: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        return self.client.search(index=index, body=body, **params)

    def _msearch(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        return self.client.msearch(searches=lines)

    def streaming_bulk(self) -> Callable[..., Iterator[tuple[bool, dict[str, Any]]]]:
        _require_client()
        from elasticsearch import helpers

        return helpers.streaming_bulk

    def vector_field_mapping(self, dim: int) -> dict[str, Any]:
        options: dict[str, Any] = {"type": self.cfg.index_options, "m": self.cfg.hnsw_m,
                                   "ef_construction": self.cfg.ef_construction}
        if self.cfg.index_options == "bbq_hnsw" and dim < 64:
            raise GenqError(f"backend.index_options bbq_hnsw needs vectors of 64 or more dimensions (the model gives {dim}); "
                            "use hnsw or int8_hnsw")
        vector = {"type": "dense_vector", "dims": dim, "index": True, "similarity": SIMILARITY[self.cfg.space_type],
                  "index_options": options}
        return {"type": "nested", "properties": {"vector": vector}}

    def vector_index_settings(self) -> dict[str, Any]:
        """9.1+ leaves dense vectors out of ``_source`` by default (rebuilt on read from the index, int8/bbq lossy):
        kept in, so a copied document reads back exactly as written and verification compares what was sent."""
        return {"mapping.exclude_source_vectors": False} if _version(self.version) >= (9, 1) else {}

    def knn_body(self, vector: Sequence[float] | str, k: int) -> dict[str, Any]:
        return {"knn": {"field": f"{VECTOR_FIELD}.vector", "query_vector": vector, "k": k,
                        "num_candidates": max(k, self.cfg.ef_search)}}
