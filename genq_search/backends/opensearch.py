"""OpenSearch backend (opensearch-py): index text + nested passage vectors, BM25 / k-NN / hybrid search.

One OpenSearch document per source document; its passages' vectors sit in a ``nested`` ``knn_vector`` field and
a nested k-NN query with ``score_mode: max`` scores the document by its best passage (as the embedded backend).
Hybrid: client-side fusion (shared with the embedded backend) or, with ``server_side_hybrid``, the neural-search
``hybrid`` query with a normalisation search pipeline created by the tool.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib.resources import files
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genq_search.backends.base import SearchBackend
from genq_search.config import BackendConfig
from genq_search.data import Corpus, Queries, Results
from genq_search.errors import GenqError
from genq_search.fusion import FusionMethod
from genq_search.passages import Passage

logger = logging.getLogger(__name__)

VECTOR_FIELD = "passages"
MSEARCH_BATCH = 64


def _require_client() -> Any:
    try:
        import opensearchpy
    except ModuleNotFoundError:
        raise GenqError("the OpenSearch backend needs opensearch-py: pip install 'genq-search[opensearch]'") from None
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
    if kind == "cluster_block_exception":
        return GenqError(f"index is read-only or blocked while {action}: {reason}")
    if isinstance(exc, os_.AuthenticationException):
        if not cfg.username:
            return GenqError(f"authentication required at {cfg.url} while {action}: pass --username/--password "
                             "(or OPENSEARCH_USERNAME/OPENSEARCH_PASSWORD)")
        return GenqError(f"authentication failed at {cfg.url} for user '{cfg.username}' while {action}: check "
                         "--username/--password (or OPENSEARCH_USERNAME/OPENSEARCH_PASSWORD)")
    if isinstance(exc, os_.AuthorizationException):
        who = f"user '{cfg.username}'" if cfg.username else "the user"
        return GenqError(f"not allowed at {cfg.url} while {action}: {who} lacks the needed permissions ({reason})")
    if isinstance(exc, os_.SSLError):
        detail = re.search(r"certificate verify failed: ([^(]+?) \(", str(exc))
        if detail:
            return GenqError(f"TLS certificate of {cfg.url} not trusted while {action} ({detail.group(1)}): pass "
                             "--ca-certs FILE with the CA that signed it (or --no-verify-certs to skip the check)")
        hint = "; does it serve plain HTTP? (use http://)" if "WRONG_VERSION_NUMBER" in str(exc) else "; check --ca-certs"
        return GenqError(f"TLS error at {cfg.url} while {action}: {exc.info}{hint}")
    if isinstance(exc, os_.ConnectionError):
        hint = (" the server closed the connection without a response: does it serve HTTPS? (use https://)"
                if cfg.url.startswith("http://") and "RemoteDisconnected" in str(exc) else
                " is it running? (scripts/opensearch-local.sh start)")
        return GenqError(f"cannot reach OpenSearch at {cfg.url} while {action} ({type(exc).__name__});{hint}")
    if "nmslib" in reason and "deprecated" in reason:
        return GenqError(f"the nmslib engine cannot create new indices on OpenSearch 3.x (while {action}): use --engine "
                         "lucene or faiss")
    if kind in {"mapper_parsing_exception", "mapper_exception"} or "mapper" in reason:
        return GenqError(f"mapping conflict while {action}: {reason}")
    if kind:
        return GenqError(f"OpenSearch error while {action}: {kind}: {reason}")
    return GenqError(f"OpenSearch error while {action}: {exc}")


_WARNED_UNVERIFIED: set[str] = set()


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


def connect(cfg: BackendConfig) -> Any:
    """A client from the URL, with basic auth, TLS options, timeouts and retries; checked with a ping. Without
    certificate verification it warns once per URL (instead of urllib3's warning on every request)."""
    os_ = _require_client()
    if cfg.ca_certs and not cfg.ca_certs.is_file():
        raise GenqError(f"CA certificate file {cfg.ca_certs} (--ca-certs) not found")
    if cfg.url.startswith("https://") and not cfg.verify_certs and cfg.url not in _WARNED_UNVERIFIED:
        _WARNED_UNVERIFIED.add(cfg.url)
        logger.warning("TLS certificate verification is off (--no-verify-certs): the connection to %s is encrypted "
                       "but the server is not authenticated", cfg.url)
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
        client.info()
    except Exception as exc:  # noqa: BLE001 - mapped to one line
        raise explain_error(exc, cfg, "connecting") from None
    return client


def tool_meta(client: Any, index: str) -> dict[str, Any] | None:
    """The ``_meta.genq_search`` section of an index the tool created (None for a user's index or no index)."""
    if not client.indices.exists(index=index):
        return None
    for body in client.indices.get_mapping(index=index).values():
        meta = (body["mappings"].get("_meta") or {}).get("genq_search")
        return meta if isinstance(meta, dict) and meta.get("created_by") == "genq-search" else None
    return None


def _template(name: str) -> dict[str, Any]:
    return json.loads(files("genq_search.mappings").joinpath(name).read_text(encoding="utf-8"))


def vector_field_mapping(cfg: BackendConfig, dim: int) -> dict[str, Any]:
    field = _template("passages-field.json")
    vector = field["properties"]["vector"]
    vector["dimension"] = dim
    vector["method"].update({"engine": cfg.engine.value, "space_type": cfg.space_type})
    vector["method"]["parameters"] = {"m": cfg.hnsw_m, "ef_construction": cfg.ef_construction}
    return field


def index_body(cfg: BackendConfig, dim: int | None) -> dict[str, Any]:
    """Render ``mappings/passages-index.json`` for this config (no vector field when ``dim`` is None)."""
    body = _template("passages-index.json")
    settings = body["settings"]
    settings["index"].update({
        "knn.algo_param.ef_search": cfg.ef_search, "number_of_shards": cfg.shards, "number_of_replicas": cfg.replicas,
    })
    settings["similarity"]["genq_bm25"].update({"k1": 1.2 if cfg.bm25_k1 is None else cfg.bm25_k1, "b": cfg.bm25_b})
    properties = body["mappings"]["properties"]
    if dim is None:
        properties.pop(VECTOR_FIELD)
    else:
        properties[VECTOR_FIELD] = vector_field_mapping(cfg, dim)
    return body


def knn_index_settings(client: Any) -> dict[str, Any]:
    """Index settings a vector index gets beyond the template, by cluster version: 3.x turns the k-NN derived source
    (vectors left out of the stored ``_source``) on by default, and k-NN 3.6 then returns other documents' vectors in
    the ``_source`` of a document with many nested passages, so it is turned off."""
    major = int(str(client.info()["version"]["number"]).split(".")[0])
    return {"knn.derived_source.enabled": False} if 3 <= major < 7 else {}  # 7.10.2: a 1.x/2.x node in compatibility mode


def passage_query(clause: str, params: dict[str, Any]) -> dict[str, Any]:
    """A ``knn`` or ``neural`` clause on the nested passage vectors; a document scores as its best passage."""
    return {"nested": {"path": VECTOR_FIELD, "score_mode": "max", "query": {clause: {f"{VECTOR_FIELD}.vector": params}}}}


def vector_json(vector: np.ndarray) -> list[float]:
    """A vector as JSON numbers rounded to 7 decimals (at most 5e-8 off, far below float32 model noise): half the bytes
    and half the serialisation time of full-precision reprs, on the bulk writer's thread and in the cluster's parser."""
    return np.round(vector.astype(np.float64), 7).tolist()


def knn_score_to_similarity(score: float, space_type: str) -> float:
    """Undo the k-NN plugin's score transform so scores equal raw inner products (or cosine)."""
    if space_type == "innerproduct":
        return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
    if space_type == "cosinesimil":
        return 2.0 * score - 1.0
    return score  # l2: 1 / (1 + d^2), already monotone


class _RejectionCounter:
    """The client as ``streaming_bulk`` sees it, counting the writes the cluster rejected with 429
    (es_rejected_execution_exception: write queue full); a request rejected as a whole counts each of its operations."""

    def __init__(self, client: Any):
        self.client, self.rejected = client, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def bulk(self, *args: Any, body: str, **kwargs: Any) -> Any:
        try:
            response = self.client.bulk(*args, body=body, **kwargs)
        except _require_client().TransportError as exc:
            if exc.status_code == 429:
                lines = iter(line for line in body.splitlines() if line.strip())
                for action in lines:  # an action line, then a source line unless it is a delete
                    self.rejected += 1
                    if "delete" not in json.loads(action):
                        next(lines, None)
            raise
        self.rejected += sum(next(iter(item.values())).get("status") == 429 for item in response["items"])
        return response


class OpenSearchBackend(SearchBackend):
    name = "opensearch"

    def __init__(self, client: Any, index: str, cfg: BackendConfig):
        self.client, self.index_name, self.cfg = client, index, cfg
        self.rejections_retried = 0  # bulk writes rejected with 429 and retried (with backoff) by this backend

    @classmethod
    def from_config(cls, cfg: BackendConfig, index_suffix: str = "default") -> OpenSearchBackend:
        return cls(connect(cfg), cfg.index or f"genq-{index_suffix}", cfg)

    def _call(self, action: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GenqError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to one line
            raise explain_error(exc, self.cfg, action) from None

    # -- indexing ----------------------------------------------------------------------------------------
    def create_index(self, dim: int | None, meta: dict[str, Any] | None = None) -> None:
        """Create the index for a bulk load (no refresh, no replicas), marked as the tool's in ``_meta``; an existing
        index is replaced only with overwrite, and only when the tool created it."""
        exists = self._call("checking the index", self.client.indices.exists, index=self.index_name)
        if exists and not self.cfg.overwrite:
            raise GenqError(f"index '{self.index_name}' already exists; pass --overwrite to replace it")
        if exists:
            if self._call("reading the index metadata", tool_meta, self.client, self.index_name) is None:
                raise GenqError(f"index '{self.index_name}' was not created by genq-search: it is never deleted, even "
                                "with --overwrite; choose another --index")
            self._call("deleting the old index", self.client.indices.delete, index=self.index_name)
        body = index_body(self.cfg, dim)
        body["settings"]["index"].update({"refresh_interval": "-1", "number_of_replicas": 0})
        if dim is not None:
            body["settings"]["index"].update(self._call("reading the cluster version", knn_index_settings, self.client))
        body["mappings"]["_meta"] = {"genq_search": {"created_by": "genq-search", **(meta or {})}}
        self._call(f"creating index '{self.index_name}'", self.client.indices.create, index=self.index_name, body=body)

    def finish_load(self, replicas: int | str | None = None, refresh_interval: str = "1s") -> None:
        """Restore refresh and replicas after a bulk load, then refresh."""
        replicas = self.cfg.replicas if replicas is None else replicas
        settings = {"index": {"refresh_interval": refresh_interval, "number_of_replicas": replicas}}
        self._call("restoring index settings", self.client.indices.put_settings, index=self.index_name, body=settings)
        self._call("refreshing", self.client.indices.refresh, index=self.index_name)

    def bulk(self, actions: Iterable[dict[str, Any]], total: int | None = None, progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
        """Stream bulk requests (429s retried with exponential backoff, counted in ``rejections_retried``); returns
        (ok count, [(id, reason)])."""
        helpers = _require_client().helpers
        ok, failures, given_up = 0, [], 0
        counter = _RejectionCounter(self.client)
        stream = helpers.streaming_bulk(
            counter, actions, chunk_size=self.cfg.bulk_docs, max_chunk_bytes=20 * 2**20,
            raise_on_error=False, max_retries=8, initial_backoff=1, max_backoff=30,
        )
        try:
            for success, item in tqdm(stream, total=total, desc=f"index {self.index_name}", unit="doc", disable=not progress):
                if success:
                    ok += 1
                else:
                    result = next(iter(item.values()))
                    given_up += result.get("status") == 429
                    error = result.get("error", {})
                    reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
                    failures.append((str(result.get("_id")), reason))
        except Exception as exc:  # noqa: BLE001 - mapped to one line
            raise explain_error(exc, self.cfg, f"bulk indexing into '{self.index_name}'") from None
        finally:
            self.rejections_retried += counter.rejected - given_up
        return ok, failures

    def index(self, corpus: Corpus, passages: Sequence[Passage], vectors: np.ndarray | None,
              meta: dict[str, Any] | None = None) -> None:
        if vectors is not None and len(vectors) != len(passages):
            raise GenqError(f"{len(vectors)} vectors for {len(passages)} passages")
        self.create_index(None if vectors is None else int(vectors.shape[1]), meta)
        by_doc: dict[str, list[int]] = {}
        for row, passage in enumerate(passages):
            by_doc.setdefault(passage.doc_id, []).append(row)

        def actions() -> Iterator[dict[str, Any]]:
            for doc_id, doc in corpus.items():
                source: dict[str, Any] = {"doc_id": doc_id, "title": doc.get("title") or "", "text": doc["text"]}
                if vectors is not None:
                    source[VECTOR_FIELD] = [{"vector": vector_json(vectors[r])} for r in by_doc.get(doc_id, [])]
                yield {"_index": self.index_name, "_id": doc_id, "_source": source}

        _, failures = self.bulk(actions(), total=len(corpus))
        if self.rejections_retried:
            logger.info("'%s': %d bulk writes rejected by the cluster (429, write queue full) and retried with backoff",
                        self.index_name, self.rejections_retried)
        self.finish_load()
        if failures:
            shown = "; ".join(f"{i}: {r}" for i, r in failures[:5])
            raise GenqError(f"{len(failures)} of {len(corpus)} documents failed to index into '{self.index_name}': {shown}")
        if self.count() != len(corpus):
            raise GenqError(f"index '{self.index_name}' holds {self.count()} documents, expected {len(corpus)}")

    def reusable(self, documents: int, dim: int | None, meta: dict[str, Any]) -> bool:
        """True when the index already holds these documents with vectors written under exactly ``meta`` (model,
        passage settings, corpus) and may be searched as is; an index of another model is never searched."""
        if not self._call("checking the index", self.client.indices.exists, index=self.index_name):
            return False
        have = self._call("reading the index metadata", tool_meta, self.client, self.index_name)
        if have is None:
            raise GenqError(f"index '{self.index_name}' was not created by genq-search, so which model wrote its "
                            "vectors is unknown; choose another --index (the tool never replaces a user's index)")
        if self.cfg.overwrite:
            return False
        if dim is not None and self.vector_dimension() not in (None, dim):
            raise GenqError(f"vector dimension mismatch: index '{self.index_name}' holds {self.vector_dimension()}-d "
                            f"vectors, the model gives {dim}")
        differs = sorted(k for k in meta if have.get(k) != meta[k])
        if differs:
            raise GenqError(f"index '{self.index_name}' was written with other {', '.join(differs)} (e.g. model "
                            f"{have.get('model')!r}); pass --overwrite to rebuild it or choose another --index")
        count = self.count()
        if count != documents:
            raise GenqError(f"index '{self.index_name}' holds {count} documents but the corpus has {documents}; pass --overwrite to rebuild it")
        logger.info("searching the existing index '%s' (%d documents)", self.index_name, count)
        return True

    def vector_dimension(self) -> int | None:
        mapping = self._call("reading the mapping", self.client.indices.get_mapping, index=self.index_name)
        for body in mapping.values():
            field = body["mappings"].get("properties", {}).get(VECTOR_FIELD, {})
            return field.get("properties", {}).get("vector", {}).get("dimension")
        return None

    def count(self) -> int:
        return int(self._call("counting", self.client.count, index=self.index_name)["count"])

    # -- search ------------------------------------------------------------------------------------------
    def _msearch(self, bodies: list[dict[str, Any]], qids: list[str], desc: str) -> dict[str, list[dict[str, Any]]]:
        hits: dict[str, list[dict[str, Any]]] = {}
        for start in tqdm(range(0, len(bodies), MSEARCH_BATCH), desc=desc, leave=False, disable=len(bodies) < 200):
            lines: list[dict[str, Any]] = []
            for body in bodies[start : start + MSEARCH_BATCH]:
                lines += [{"index": self.index_name}, body]
            response = self._call(desc, self.client.msearch, body=lines)
            for qid, item in zip(qids[start : start + MSEARCH_BATCH], response["responses"], strict=True):
                if "error" in item:
                    error = item["error"]
                    raise GenqError(f"OpenSearch {desc} failed for query '{qid}': {error.get('type')}: {error.get('reason')}")
                hits[qid] = item["hits"]["hits"]
        return hits

    def _lexical_query(self, text: str) -> dict[str, Any]:
        return {"multi_match": {"query": text, "fields": [f"title^{self.cfg.title_boost}", "text"],
                                "type": "best_fields", "tie_breaker": 0.5}}

    def _knn_query(self, vector: np.ndarray, k: int) -> dict[str, Any]:
        return passage_query("knn", {"vector": vector.tolist(), "k": k})

    @property
    def embeds_queries(self) -> bool:  # type: ignore[override]
        return self.cfg.model_id is not None

    def _dense_query(self, text: str, vector: np.ndarray | None, k: int) -> dict[str, Any]:
        """``neural`` on the query text with ``model_id`` (the cluster embeds it), else k-NN with the client's vector."""
        if self.cfg.model_id:
            from genq_search.mlcommons import neural_query

            return neural_query(self.cfg.model_id, text, k)
        assert vector is not None
        return self._knn_query(vector, k)

    def neural_search(self, queries: Queries, k: int) -> Results:
        qids = list(queries)
        return self._dense_search([self._dense_query(queries[q], None, k) for q in qids], qids, k, "neural search")

    def _dense_search(self, dense_queries: list[dict[str, Any]], qids: list[str], k: int, desc: str) -> Results:
        """Run k-NN / neural queries; scores mapped back to the model's similarity."""
        hits = self._msearch([{"size": k, "_source": False, "query": q} for q in dense_queries], qids, desc)
        space = self.cfg.space_type
        return {q: {h["_id"]: knn_score_to_similarity(float(h["_score"]), space) for h in hits[q]} for q in qids}

    def lexical_search(self, queries: Queries, k: int) -> Results:
        qids = list(queries)
        bodies = [{"size": k, "_source": False, "query": self._lexical_query(queries[q])} for q in qids]
        hits = self._msearch(bodies, qids, "BM25 search")
        return {q: {h["_id"]: float(h["_score"]) for h in hits[q]} for q in qids}

    def vector_search(self, query_ids: Sequence[str], query_vectors: np.ndarray, k: int) -> Results:
        return self._dense_search([self._knn_query(v, k) for v in query_vectors], list(query_ids), k, "k-NN search")

    def hybrid_search(self, queries: Queries, query_vectors: np.ndarray, k: int, method: FusionMethod = FusionMethod.RRF,
                      weights: tuple[float, float] = (0.5, 0.5), rrf_k: int = 60, depth: int = 100) -> Results:
        if not (self.cfg.server_side_hybrid or self.cfg.model_id):  # the cluster embedding the query: its pipeline fuses
            return super().hybrid_search(queries, query_vectors, k, method, weights, rrf_k, depth)
        pipeline = self.ensure_hybrid_pipeline(method, weights, rrf_k)
        results: Results = {}
        for qid, vector in tqdm(list(zip(queries, query_vectors, strict=True)), desc="hybrid search", leave=False,
                                disable=len(queries) < 200):  # _msearch takes no search_pipeline parameter
            body = {"size": k, "_source": False,
                    "query": {"hybrid": {"queries": [self._lexical_query(queries[qid]), self._dense_query(queries[qid], vector, depth)]}}}
            response = self._call("hybrid search", self.client.search, index=self.index_name, body=body,
                                  params={"search_pipeline": pipeline})
            results[qid] = {h["_id"]: float(h["_score"]) for h in response["hits"]["hits"]}
        return results

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
        self._call("creating the hybrid search pipeline (needs the neural-search plugin)",
                   self.client.transport.perform_request, "PUT", f"/_search/pipeline/{name}", body=body)
        return name

    def plugins(self) -> set[str]:
        rows = self._call("listing plugins", self.client.cat.plugins, format="json")
        return {row["component"] for row in rows}
