"""OpenSearch (opensearch-py): the cluster interface of ``engines.base`` for OpenSearch 2.x and 3.x with the k-NN
plugin. Passage vectors sit in a ``nested`` ``knn_vector`` field; a nested ``knn`` query with ``score_mode: max``
scores a document by its best passage (as the embedded backend). Server-side hybrid: the neural-search ``hybrid``
query with a normalisation (or score-ranker) search pipeline the tool creates; the model in the cluster: ML Commons
(``mlcommons.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from importlib.resources import files
from typing import Any

from genq_search.config import BackendConfig
from genq_search.engines.base import VECTOR_FIELD, Cluster, failure_line
from genq_search.errors import GenqError
from genq_search.fusion import FusionMethod

logger = logging.getLogger(__name__)


def _require_client() -> Any:
    try:
        import opensearchpy
    except ModuleNotFoundError:
        raise GenqError("the OpenSearch engine needs opensearch-py: pip install 'genq-search[opensearch]'") from None
    return opensearchpy


def explain_error(exc: Exception, cfg: BackendConfig, action: str) -> GenqError:
    """Map opensearch-py exceptions to one clear line."""
    os_ = _require_client()
    kind, reason = "", ""
    if isinstance(exc, os_.TransportError):
        info = exc.info if isinstance(exc.info, dict) else {}
        error = info.get("error", {}) if isinstance(info.get("error"), dict) else {}
        kind = str(error.get("type", exc.error))
        reason = (error.get("root_cause") or [{}])[0].get("reason") or error.get("reason") or str(exc.info)[:300]
    if "nmslib" in reason and "deprecated" in reason:
        return GenqError(f"the nmslib engine cannot create new indices on OpenSearch 3.x (while {action}): use "
                         "--knn-library lucene or faiss")
    status = getattr(exc, "status_code", None)
    status = 401 if isinstance(exc, os_.AuthenticationException) else 403 if isinstance(exc, os_.AuthorizationException) \
        else status if isinstance(status, int) else None
    return failure_line(cfg, "OpenSearch", action, exc, status=status, kind=kind, reason=reason,
                        tls=isinstance(exc, os_.SSLError), connection=isinstance(exc, os_.ConnectionError))


def _orjson_serializer(os_: Any) -> Any:
    """opensearch-py's JSON serializer with orjson's ``dumps``: the bulk writer thread serialises 1,000 documents with
    a 384-d vector each in 9 ms instead of 103 ms, so a GPU encoding 10K docs/s is not held to the standard library's
    ~10K docs/s (on 2 CPU cores the reindex is encoder-bound and the difference is within noise). opensearch-py ships
    no orjson serializer (elasticsearch-py 8 does), hence these lines; ``loads`` and ``default`` are the base class's."""
    import orjson

    class OrjsonSerializer(os_.serializer.JSONSerializer):
        def dumps(self, data: Any) -> str | bytes:
            if isinstance(data, (str, bytes)):  # already a body (bulk lines, a model chunk): as the base class
                return data
            try:
                return orjson.dumps(data, default=self.default,
                                    option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
            except orjson.JSONEncodeError as exc:
                raise os_.exceptions.SerializationError(data, exc) from None

    return OrjsonSerializer()


def connect(cfg: BackendConfig) -> OpenSearchCluster:
    """The cluster at the URL, with basic auth, TLS options, timeouts and retries; checked with a first request
    (``engines.connect`` checks the CA file and warns once when certificates are not verified)."""
    os_ = _require_client()
    auth = (cfg.username, cfg.password or "") if cfg.username else None
    client = os_.OpenSearch(
        hosts=[cfg.url],
        http_auth=auth,
        verify_certs=cfg.verify_certs,
        ca_certs=str(cfg.ca_certs) if cfg.ca_certs else None,
        ssl_show_warn=cfg.verify_certs,
        timeout=cfg.timeout_s,
        max_retries=3,
        retry_on_timeout=True,
        http_compress=cfg.http_compress,
        serializer=_orjson_serializer(os_),
    )
    try:
        info = client.info()
    except Exception as exc:  # noqa: BLE001 - mapped to one line
        raise explain_error(exc, cfg, "connecting") from None
    if info.get("version", {}).get("distribution") != "opensearch":
        raise GenqError(f"the node at {cfg.url} is not OpenSearch (it answers as {info.get('tagline') or 'something else'}): "
                        "set backend.engine (--backend) to the engine it runs, or leave it to detection (auto)")
    return OpenSearchCluster(client, cfg, str(info["version"]["number"]))


def _template(name: str) -> dict[str, Any]:
    return json.loads(files("genq_search.mappings").joinpath(name).read_text(encoding="utf-8"))


def passage_query(clause: str, params: dict[str, Any]) -> dict[str, Any]:
    """A ``knn`` or ``neural`` clause on the nested passage vectors; a document scores as its best passage."""
    return {"nested": {"path": VECTOR_FIELD, "score_mode": "max", "query": {clause: {f"{VECTOR_FIELD}.vector": params}}}}


def neural_query(model_id: str, text: str, k: int) -> dict[str, Any]:
    """Server-side k-NN over the passage vectors; the cluster embeds ``text`` with the ML Commons model ``model_id``."""
    return passage_query("neural", {"query_text": text, "model_id": model_id, "k": k})


class OpenSearchCluster(Cluster):
    engine, label = "opensearch", "OpenSearch"

    def explain(self, exc: BaseException, action: str) -> GenqError:
        return explain_error(exc, self.cfg, action)  # type: ignore[arg-type]

    def status_of(self, exc: BaseException) -> int | None:
        status = getattr(exc, "status_code", None)
        return status if isinstance(status, int) else None

    def _search(self, index: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        return self.client.search(index=index, body=body, params=params or None)

    def _msearch(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        return self.client.msearch(body=lines)

    def streaming_bulk(self) -> Callable[..., Iterator[tuple[bool, dict[str, Any]]]]:
        return _require_client().helpers.streaming_bulk

    def vector_field_mapping(self, dim: int) -> dict[str, Any]:
        field = _template("passages-field.json")
        vector = field["properties"]["vector"]
        vector["dimension"] = dim
        vector["method"].update({"engine": self.cfg.knn_library.value, "space_type": self.cfg.space_type})
        vector["method"]["parameters"] = {"m": self.cfg.hnsw_m, "ef_construction": self.cfg.ef_construction}
        return field

    def vector_index_settings(self) -> dict[str, Any]:
        """``knn`` on, ``ef_search``; 3.x turns the k-NN derived source (vectors left out of the stored ``_source``) on by
        default, and k-NN 3.6 then returns other documents' vectors in the ``_source`` of a document with many nested
        passages, so it is turned off."""
        settings: dict[str, Any] = {"knn": True, "knn.algo_param.ef_search": self.cfg.ef_search}
        if 3 <= self.major < 7:  # 7.10.2: a 1.x/2.x node in compatibility mode
            settings["knn.derived_source.enabled"] = False
        return settings

    def knn_body(self, vector: Sequence[float] | str, k: int) -> dict[str, Any]:
        return {"query": passage_query("knn", {"vector": vector, "k": k})}

    def embeds_queries(self) -> bool:
        return self.cfg.model_id is not None

    def neural_body(self, text: str, k: int) -> dict[str, Any]:
        assert self.cfg.model_id
        return {"query": neural_query(self.cfg.model_id, text, k)}

    def plugins(self) -> set[str]:
        rows = self.call("listing plugins", self.client.cat.plugins, format="json")
        return {row["component"] for row in rows}

    def server_fusions(self) -> set[FusionMethod]:
        """neural-search: min-max and RRF (score-ranker) on 2.19, z-score from 3.0."""
        if "opensearch-neural-search" not in self.plugins():
            return set()
        return {FusionMethod.MINMAX, FusionMethod.RRF} | ({FusionMethod.ZSCORE} if self.major >= 3 else set())

    def ensure_hybrid_pipeline(self, method: FusionMethod, weights: tuple[float, float], rrf_k: int) -> str:
        """Create (idempotently) the neural-search pipeline for server-side hybrid scoring."""
        if method is FusionMethod.RRF:
            name = f"genq-hybrid-rrf-{rrf_k}"
            processor = {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": rrf_k}}}
        else:
            technique = {FusionMethod.MINMAX: "min_max", FusionMethod.ZSCORE: "z_score"}[method]
            name = f"genq-hybrid-{technique}-{weights[0]:g}-{weights[1]:g}"
            processor = {"normalization-processor": {
                "normalization": {"technique": technique},
                "combination": {"technique": "arithmetic_mean", "parameters": {"weights": list(weights)}},
            }}
        body = {"description": "genq-search hybrid scoring", "phase_results_processors": [processor]}
        self.call("creating the hybrid search pipeline (needs the neural-search plugin)",
                  self.client.transport.perform_request, "PUT", f"/_search/pipeline/{name}", body=body)
        return name

    def hybrid_body(self, lexical: dict[str, Any], vector: Sequence[float] | str, method: FusionMethod,
                    weights: tuple[float, float], rrf_k: int, depth: int, text: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        pipeline = self.ensure_hybrid_pipeline(method, weights, rrf_k)
        dense = self.neural_body(text, depth)["query"] if self.embeds_queries() else self.knn_body(vector, depth)["query"]
        return {"query": {"hybrid": {"queries": [lexical, dense]}}}, {"search_pipeline": pipeline}
