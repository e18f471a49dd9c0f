"""The engine interface. ``SearchBackend``: index a collection and search it (embedded, OpenSearch, Elasticsearch).
``Cluster``: one connection to a live OpenSearch or Elasticsearch cluster and every call a stage makes to it:

- admin: resolve an index or alias, version, create an index, the tool's ``_meta``, write block, alias switch,
  finish a load (replicas and refresh restored);
- documents: scan in a stable resumable order (per shard, ``_seq_no``), checkpoints for catch-up, mget, bulk with
  429s retried, count;
- dialect: vector field mapping, kNN clause, lexical clause, score -> similarity, the fusions the server runs, the
  query body an application pastes.

The two engines speak nearly the same REST API and their official clients accept the same calls for most of it, so
the shared calls live here and each engine overrides what differs. Nothing outside ``genq_search/engines`` imports an
engine client.

A live index is read shard by shard in ``_seq_no`` order (``preference=_shards:N``, a range on ``_seq_no`` and a sort
on it): a stable order both engines support without fielddata on ``_id``. Each read stops at the shard's global
checkpoint, taken just before the source is refreshed, so every operation up to it is visible; an update moves a
document past the cursor, so a later read picks it up. The same cursors let a reindex resume and catch up writes.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genq_search.config import BackendConfig
from genq_search.data import Corpus, Queries, Results
from genq_search.errors import GenqError
from genq_search.fusion import FusionMethod, Retrieval, fuse
from genq_search.passages import Passage

logger = logging.getLogger(__name__)

VECTOR_FIELD = "passages"  # nested field: one vector per passage, a document scores as its best passage
MSEARCH_BATCH = 64
Cursors = dict[str, dict[str, int]]  # index -> shard number (as a string, JSON-friendly) -> _seq_no
Hits = list[dict[str, Any]]


class SearchBackend(ABC):
    """All searches return document-level results in BEIR shape (``{qid: {doc_id: score}}``); a document scores as
    its best passage."""

    name: str
    embeds_queries: bool = False  # True when the search engine embeds query texts itself (dense: ``neural_search``)

    def neural_search(self, queries: Queries, k: int) -> Results:
        """Dense search with the queries embedded by the engine (only where ``embeds_queries``)."""
        raise NotImplementedError(f"the {self.name} backend does not embed queries")

    @abstractmethod
    def index(self, corpus: Corpus, passages: Sequence[Passage], vectors: np.ndarray | None) -> None:
        """Index documents for lexical search and passage vectors (row i belongs to passages[i]) for dense search."""

    @abstractmethod
    def lexical_search(self, queries: Queries, k: int) -> Results:
        """BM25 over title and text."""

    @abstractmethod
    def vector_search(self, query_ids: Sequence[str], query_vectors: np.ndarray, k: int) -> Results:
        """Exact or approximate inner-product search; a document scores as its best passage."""

    @abstractmethod
    def count(self) -> int:
        """Number of indexed documents."""

    def hybrid_search(
        self,
        queries: Queries,
        query_vectors: np.ndarray,
        k: int,
        method: FusionMethod = FusionMethod.RRF,
        weights: tuple[float, float] = (0.5, 0.5),
        rrf_k: int = 60,
        depth: int = 100,
    ) -> Results:
        """Client-side fusion of the top ``depth`` lexical and dense documents (weights: lexical, dense)."""
        lexical = self.lexical_search(queries, depth)
        dense = self.vector_search(list(queries), query_vectors, depth)
        return fuse([lexical, dense], method, list(weights), rrf_k=rrf_k, k=k)


def vector_json(vector: np.ndarray) -> list[float]:
    """A vector as JSON numbers rounded to 7 decimals (at most 5e-8 off, far below float32 model noise): half the bytes
    and half the serialisation time of full-precision reprs, on the bulk writer's thread and in the cluster's parser."""
    return np.round(vector.astype(np.float64), 7).tolist()


def score_to_similarity(score: float, space_type: str) -> float:
    """Undo the kNN score transform both engines apply (same formulas) so scores equal raw inner products (or cosine)."""
    if space_type == "innerproduct":
        return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
    if space_type == "cosinesimil":
        return 2.0 * score - 1.0
    return score  # l2: 1 / (1 + d^2), already monotone


def lexical_query(text: str, fields: Sequence[str], title_field: str | None, title_boost: float) -> dict[str, Any]:
    """The one BM25 query of the tool (compare, labels, the upgrade's pasted body): ``multi_match`` over the title
    (boosted) and text fields, best field plus half of the others."""
    boosted = [f"{f}^{title_boost:g}" if f == title_field and title_boost != 1.0 else f for f in fields]
    return {"multi_match": {"query": text, "fields": boosted, "type": "best_fields", "tie_breaker": 0.5}}


def failure_line(cfg: BackendConfig, label: str, action: str, exc: BaseException, *, status: int | None, kind: str,
                 reason: str, tls: bool, connection: bool) -> GenqError:
    """The one line both engines give for the same failure (each engine reads status, error type and reason, TLS and
    connection errors off its own client's exceptions, and handles its own special cases first)."""
    if kind == "cluster_block_exception":
        return GenqError(f"index is read-only or blocked while {action}: {reason}")
    if status == 401:
        if not cfg.username:
            return GenqError(f"authentication required at {cfg.url} while {action}: pass --username/--password "
                             "(or GENQ_SEARCH_USERNAME/GENQ_SEARCH_PASSWORD)")
        return GenqError(f"authentication failed at {cfg.url} for user '{cfg.username}' while {action}: check "
                         "--username/--password (or GENQ_SEARCH_USERNAME/GENQ_SEARCH_PASSWORD)")
    if status == 403:
        who = f"user '{cfg.username}'" if cfg.username else "the user"
        return GenqError(f"not allowed at {cfg.url} while {action}: {who} lacks the needed permissions ({reason})")
    if tls:
        detail = re.search(r"certificate verify failed: ([^(]+?) \(", str(exc))
        if detail:
            return GenqError(f"TLS certificate of {cfg.url} not trusted while {action} ({detail.group(1)}): pass "
                             "--ca-certs FILE with the CA that signed it (or --no-verify-certs to skip the check)")
        hint = "; does it serve plain HTTP? (use http://)" if "WRONG_VERSION_NUMBER" in str(exc) else "; check --ca-certs"
        return GenqError(f"TLS error at {cfg.url} while {action}{hint}")
    if connection:
        hint = (" the server closed the connection without a response: does it serve HTTPS? (use https://)"
                if cfg.url.startswith("http://") and "RemoteDisconnected" in str(exc) else
                f" is it running? (scripts/{label.lower()}-local.sh start)")
        return GenqError(f"cannot reach {label} at {cfg.url} while {action} ({type(exc).__name__});{hint}")
    if kind in {"mapper_parsing_exception", "mapper_exception"} or "mapper" in reason:
        return GenqError(f"mapping conflict while {action}: {reason}")
    if kind:
        return GenqError(f"{label} error while {action}: {kind}: {reason}")
    return GenqError(f"{label} error while {action}: {exc}")


class RejectionCounter:
    """The client as a bulk helper sees it, counting the writes the cluster rejected with 429 (write queue full); a
    request rejected as a whole counts each of its operations."""

    def __init__(self, client: Any, status_of: Callable[[BaseException], int | None]):
        self.client, self.status_of, self.rejected = client, status_of, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def options(self, **kwargs: Any) -> RejectionCounter:
        """elasticsearch-py's helpers call ``client.options()`` first: keep counting on the client it returns."""
        self.client = self.client.options(**kwargs)
        return self

    def bulk(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = self.client.bulk(*args, **kwargs)
        except Exception as exc:
            if self.status_of(exc) == 429:
                body = kwargs.get("body") if kwargs.get("body") is not None else kwargs.get("operations")
                lines = iter(line for line in _body_lines(body) if line.strip())
                for action in lines:  # an action line, then a source line unless it is a delete
                    self.rejected += 1
                    if "delete" not in json.loads(action):
                        next(lines, None)
            raise
        self.rejected += sum(next(iter(item.values())).get("status") == 429 for item in response["items"])
        return response


def _body_lines(body: Any) -> list[str]:
    if isinstance(body, (bytes, str)):
        return (body.decode() if isinstance(body, bytes) else body).splitlines()
    return [line.decode() if isinstance(line, bytes) else line if isinstance(line, str) else json.dumps(line)
            for line in body or []]


class Cluster(ABC):
    """One connection to a live cluster (see the module docstring). Errors come out as one ``GenqError`` line."""

    engine: str  # "opensearch" | "elasticsearch"
    label: str  # how messages name it

    def __init__(self, client: Any, cfg: BackendConfig, version: str):
        self.client, self.cfg, self.version = client, cfg, version
        self.major = int(version.split(".")[0])

    # -- engine-specific -------------------------------------------------------------------------------
    @abstractmethod
    def explain(self, exc: BaseException, action: str) -> GenqError:
        """One clear line for a client exception."""

    @abstractmethod
    def status_of(self, exc: BaseException) -> int | None:
        """The HTTP status of a client exception (None for connection errors)."""

    @abstractmethod
    def _search(self, index: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        """One search request (``params``: URL parameters such as ``preference``)."""

    @abstractmethod
    def _msearch(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        """One multi-search request (header, body, header, body, ...)."""

    @abstractmethod
    def streaming_bulk(self) -> Callable[..., Iterator[tuple[bool, dict[str, Any]]]]:
        """The client's ``helpers.streaming_bulk``."""

    @abstractmethod
    def vector_field_mapping(self, dim: int) -> dict[str, Any]:
        """The nested passage-vector field of this engine."""

    def vector_index_settings(self) -> dict[str, Any]:
        """Index settings an index with the vector field needs beyond its source's."""
        return {}

    @abstractmethod
    def knn_body(self, vector: Sequence[float] | str, k: int) -> dict[str, Any]:
        """Search-body keys for a kNN search on the passage vectors (a document scores as its best passage)."""

    def server_fusions(self) -> set[FusionMethod]:
        """The hybrid fusions this cluster runs server-side (detected, never assumed)."""
        return set()

    def hybrid_body(self, lexical: dict[str, Any], vector: Sequence[float] | str, method: FusionMethod,
                    weights: tuple[float, float], rrf_k: int, depth: int, text: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        """(search body, URL params) of a server-side hybrid query; only for a method in ``server_fusions()`` (``text``:
        the query, for a cluster that embeds it)."""
        raise GenqError(f"{self.label} {self.version} at {self.cfg.url} cannot fuse {method.value} on the server")

    def embeds_queries(self) -> bool:
        """True when the cluster embeds query texts with a registered model (``backend.model_id``)."""
        return False

    def neural_body(self, text: str, k: int) -> dict[str, Any]:
        raise GenqError(f"{self.label} cannot embed queries here (backend.model_id)")

    # -- calls ---------------------------------------------------------------------------------------------
    def call(self, action: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` with errors mapped to one line and the response as a plain dict."""
        try:
            response = func(*args, **kwargs)
        except GenqError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to one line
            raise self.explain(exc, action) from None
        return getattr(response, "body", response)

    @property
    def indices(self) -> Any:
        return self.client.indices

    # -- admin -----------------------------------------------------------------------------------------------
    def resolve(self, name: str) -> list[str]:
        """The indices behind an index name or alias; a one-line error when there are none."""
        try:
            response = self.indices.get(index=name)
            return sorted(getattr(response, "body", response))
        except Exception as exc:  # noqa: BLE001
            if self.status_of(exc) == 404:
                raise GenqError(f"index or alias '{name}' does not exist at {self.cfg.url}") from None
            raise self.explain(exc, f"reading '{name}'") from None

    def exists(self, name: str) -> bool:
        return bool(self.call(f"checking '{name}'", self.indices.exists, index=name))

    def is_alias(self, name: str) -> bool:
        return bool(self.call(f"checking alias '{name}'", self.indices.exists_alias, name=name))

    def alias_indices(self, alias: str) -> list[str]:
        """The indices an alias points at (none when it does not exist)."""
        if not self.is_alias(alias):
            return []
        return sorted(self.call(f"reading alias '{alias}'", self.indices.get_alias, name=alias))

    def matching(self, pattern: str) -> list[str]:
        return sorted(self.call(f"listing '{pattern}'", self.indices.get, index=pattern, ignore_unavailable=True,
                                allow_no_indices=True))

    def mappings(self, indices: Sequence[str]) -> dict[str, dict[str, Any]]:
        response = self.call("reading mappings", self.indices.get_mapping, index=",".join(indices))
        return {i: response[i]["mappings"] for i in indices if i in response}

    def settings(self, indices: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``settings.index`` of each index."""
        response = self.call("reading settings", self.indices.get_settings, index=",".join(indices))
        return {i: response[i]["settings"]["index"] for i in indices if i in response}

    def tool_meta(self, index: str) -> dict[str, Any] | None:
        """The ``_meta.genq_search`` section of an index the tool created (None for a user's index or no index)."""
        if not self.exists(index):
            return None
        for mappings in self.mappings([index]).values():
            meta = (mappings.get("_meta") or {}).get("genq_search")
            return meta if isinstance(meta, dict) and meta.get("created_by") == "genq-search" else None
        return None

    def vector_dimension(self, index: str) -> int | None:
        for mappings in self.mappings([index]).values():
            vector = mappings.get("properties", {}).get(VECTOR_FIELD, {}).get("properties", {}).get("vector", {})
            return vector.get("dimension", vector.get("dims"))
        return None

    def create_index(self, name: str, settings: dict[str, Any], mappings: dict[str, Any], what: str = "index ") -> None:
        self.call(f"creating {what}'{name}'", self.indices.create, index=name, body={"settings": settings, "mappings": mappings})

    def delete_tool_index(self, name: str) -> None:
        """Delete an index the tool created (refused for any other)."""
        if self.tool_meta(name) is None:
            raise GenqError(f"index '{name}' was not created by genq-search: it is never deleted, even with --overwrite; "
                            "choose another --index")
        self.call("deleting the old index", self.indices.delete, index=name)

    def put_settings(self, indices: Sequence[str], settings: dict[str, Any], action: str) -> None:
        self.call(action, self.indices.put_settings, index=",".join(indices), body=settings)

    def write_blocks(self, indices: Sequence[str]) -> dict[str, bool | None]:
        """Each index's ``index.blocks.write`` setting (None when unset)."""
        response = self.call("reading write blocks", self.indices.get_settings, index=",".join(indices), name="index.blocks.write")
        values = {i: response.get(i, {}).get("settings", {}).get("index", {}).get("blocks", {}).get("write") for i in indices}
        return {i: None if v is None else str(v).lower() == "true" for i, v in values.items()}

    def set_write_block(self, indices: Sequence[str], blocked: bool | None) -> None:
        self.put_settings(indices, {"index": {"blocks.write": blocked}},
                          f"{'setting' if blocked else 'releasing'} the write block on {', '.join(indices)}")

    def switch_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` at ``target`` only, in one atomic call."""
        actions: list[dict[str, Any]] = [{"remove": {"index": i, "alias": alias}} for i in self.alias_indices(alias)]
        actions.append({"add": {"index": target, "alias": alias}})
        self.call(f"switching alias '{alias}'", self.indices.update_aliases, body={"actions": actions})

    def finish_load(self, index: str, replicas: int | str, refresh_interval: str = "1s") -> None:
        """Restore refresh and replicas after a bulk load, then refresh."""
        self.put_settings([index], {"index": {"refresh_interval": refresh_interval, "number_of_replicas": replicas}},
                          "restoring index settings")
        self.refresh([index])

    def refresh(self, indices: Sequence[str]) -> None:
        self.call("refreshing", self.indices.refresh, index=",".join(indices))

    # -- documents -------------------------------------------------------------------------------------------
    def count(self, index: str) -> int:
        return int(self.call("counting", self.client.count, index=index)["count"])

    def checkpoints(self, indices: Sequence[str]) -> tuple[Cursors, dict[str, Any]]:
        """Per primary shard the global checkpoint (every operation up to it is complete), and identity facts
        (UUIDs, counts, per-shard max ``_seq_no``: changes on every write); taken first, then a refresh, so every
        operation up to the checkpoints is searchable (the refresh changes no data)."""
        action = f"reading shard statistics of {', '.join(indices)}"
        stats = self.call(action, self.indices.stats, index=",".join(indices), level="shards")["indices"]
        checkpoints: Cursors = {}
        identity: dict[str, Any] = {}
        for index in indices:
            entry = stats[index]
            checkpoints[index] = {}
            max_seq: dict[str, int] = {}
            for shard, copies in entry["shards"].items():
                primary = next(c for c in copies if c["routing"]["primary"])
                checkpoints[index][shard] = int(primary["seq_no"]["global_checkpoint"])
                max_seq[shard] = int(primary["seq_no"]["max_seq_no"])
            identity[index] = {"uuid": entry["uuid"], "docs": entry["primaries"]["docs"]["count"], "max_seq_no": max_seq}
        self.refresh(indices)
        return checkpoints, identity

    def scan(self, indices: Sequence[str], after: Cursors | None, upto: Cursors, batch: int = 1000,
             source: bool | list[str] = True, must_not: dict[str, Any] | None = None) -> Iterator[tuple[str, str, Hits]]:
        """Yield ``(index, shard, hits)`` for every document with ``after < _seq_no <= upto`` (per shard; not matching
        ``must_not``), in ``_seq_no`` order. Callers advance their own cursors from the hits' ``_seq_no``."""
        for index in indices:
            for shard, last in sorted(upto[index].items(), key=lambda item: int(item[0])):
                cursor = (after or {}).get(index, {}).get(shard, -1)
                while cursor < last:
                    query: dict[str, Any] = {"range": {"_seq_no": {"gt": cursor, "lte": last}}}
                    if must_not:
                        query = {"bool": {"filter": query, "must_not": must_not}}
                    body = {"size": batch, "_source": source, "seq_no_primary_term": True, "track_total_hits": False,
                            "sort": [{"_seq_no": "asc"}], "query": query}
                    hits = self.call(f"reading '{index}'", self._search, index, body, preference=f"_shards:{shard}")["hits"]["hits"]
                    if not hits:
                        break
                    cursor = int(hits[-1]["_seq_no"])
                    yield index, shard, hits

    def id_batches(self, indices: Sequence[str]) -> Iterator[list[str]]:
        """Every id of ``indices`` up to their checkpoints, a scan batch at a time (nothing else read)."""
        upto, _ = self.checkpoints(indices)
        for _, _, hits in self.scan(indices, None, upto, 5000, source=False):
            yield [h["_id"] for h in hits]

    def all_ids(self, indices: Sequence[str]) -> set[str]:
        return {i for ids in self.id_batches(indices) for i in ids}

    def mget(self, index: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        return self.call(f"reading documents of '{index}'", self.client.mget, index=index, body={"ids": list(ids)})["docs"]

    def bulk(self, actions: Iterable[dict[str, Any]], desc: str, total: int | None = None,
             progress: bool = True) -> tuple[int, list[tuple[str, str]], int]:
        """Stream bulk requests (429s retried with exponential backoff); returns (ok count, [(id, reason)], writes
        rejected with 429 and retried)."""
        ok, failures, given_up = 0, [], 0
        counter = RejectionCounter(self.client, self.status_of)
        stream = self.streaming_bulk()(counter, actions, chunk_size=self.cfg.bulk_docs, max_chunk_bytes=20 * 2**20,
                                       raise_on_error=False, max_retries=8, initial_backoff=1, max_backoff=30)
        try:
            for success, item in tqdm(stream, total=total, desc=desc, unit="doc", disable=not progress):
                if success:
                    ok += 1
                else:
                    result = next(iter(item.values()))
                    given_up += result.get("status") == 429
                    error = result.get("error", {})
                    reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
                    failures.append((str(result.get("_id")), reason))
        except Exception as exc:  # noqa: BLE001 - mapped to one line
            raise self.explain(exc, desc) from None
        return ok, failures, counter.rejected - given_up

    def msearch(self, index: str, bodies: list[dict[str, Any]], qids: list[str], desc: str) -> dict[str, Hits]:
        hits: dict[str, Hits] = {}
        for start in tqdm(range(0, len(bodies), MSEARCH_BATCH), desc=desc, leave=False, disable=len(bodies) < 200):
            lines: list[dict[str, Any]] = []
            for body in bodies[start : start + MSEARCH_BATCH]:
                lines += [{"index": index}, body]
            response = self.call(desc, self._msearch, lines)
            for qid, item in zip(qids[start : start + MSEARCH_BATCH], response["responses"], strict=True):
                if "error" in item:
                    error = item["error"]
                    raise GenqError(f"{self.label} {desc} failed for query '{qid}': {error.get('type')}: {error.get('reason')}")
                hits[qid] = item["hits"]["hits"]
        return hits

    def search(self, index: str, body: dict[str, Any], action: str, **params: Any) -> dict[str, Any]:
        return self.call(action, self._search, index, body, **params)

    # -- what an application pastes ----------------------------------------------------------------------------
    def query_body(self, alias: str, lexical: dict[str, Any], retrieval: Retrieval) -> dict[str, Any]:
        """A ready-to-paste search request running ``retrieval`` (the query vector comes from the bundle)."""
        vector = "<embedding of the user query by the bundle>"
        path = f"/{alias}/_search"
        method = retrieval.fusion
        if retrieval.method == "bm25":
            return {"method": "POST", "path": path, "body": {"size": 10, "query": lexical}}
        if method is None:
            return {"method": "POST", "path": path, "body": {"size": 10, **self.knn_body([vector], 100)}}
        rrf_k = retrieval.rrf_k or 60
        if method in self.server_fusions():
            body, params = self.hybrid_body(lexical, [vector], method, retrieval.weights, rrf_k, 100)
            query = "&".join(f"{k}={v}" for k, v in params.items())
            return {"method": "POST", "path": path + (f"?{query}" if query else ""), "body": {"size": 10, **body},
                    "fusion": f"server-side {method.value}"}
        return {"method": "POST", "path": path, "body": {"size": 100, **self.knn_body([vector], 100)},
                "also": {"size": 100, "query": lexical},
                "fusion": (f"client-side {method.value} (lexical weight {retrieval.weights[0]:g}, rrf k {rrf_k}): "
                           f"{self.label} {self.version} here cannot run it on the server; run both requests and fuse "
                           "their scores as genq_search.fusion.fuse does")}


class ClusterBackend(SearchBackend):
    """An index of the tool's own (``genq-search index``/``compare --backend opensearch|elasticsearch``) on a cluster."""

    def __init__(self, cluster: Cluster, index: str):
        self.cluster, self.index_name, self.cfg = cluster, index, cluster.cfg
        self.name = cluster.engine
        self.rejections_retried = 0  # bulk writes rejected with 429 and retried (with backoff) by this backend

    @property
    def embeds_queries(self) -> bool:  # type: ignore[override]
        return self.cluster.embeds_queries()

    # -- indexing ----------------------------------------------------------------------------------------
    def create_index(self, dim: int | None, meta: dict[str, Any] | None = None) -> None:
        """Create the index for a bulk load (no refresh, no replicas), marked as the tool's in ``_meta``; an existing
        index is replaced only with overwrite, and only when the tool created it."""
        if self.cluster.exists(self.index_name):
            if not self.cfg.overwrite:
                raise GenqError(f"index '{self.index_name}' already exists; pass --overwrite to replace it")
            self.cluster.delete_tool_index(self.index_name)
        settings: dict[str, Any] = {"index": {"number_of_shards": self.cfg.shards, "number_of_replicas": 0,
                                              "refresh_interval": "-1"},
                                    "similarity": {"genq_bm25": {"type": "BM25", "b": self.cfg.bm25_b,
                                                                 "k1": 1.2 if self.cfg.bm25_k1 is None else self.cfg.bm25_k1}}}
        properties: dict[str, Any] = {"doc_id": {"type": "keyword"}, "title": {"type": "text", "similarity": "genq_bm25"},
                                      "text": {"type": "text", "similarity": "genq_bm25"}}
        if dim is not None:
            settings["index"].update(self.cluster.vector_index_settings())
            properties[VECTOR_FIELD] = self.cluster.vector_field_mapping(dim)
        mappings = {"properties": properties, "_meta": {"genq_search": {"created_by": "genq-search", **(meta or {})}}}
        self.cluster.create_index(self.index_name, settings, mappings)

    def finish_load(self) -> None:
        self.cluster.finish_load(self.index_name, self.cfg.replicas)

    def bulk(self, actions: Iterable[dict[str, Any]], total: int | None = None, progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
        """Stream bulk requests (429s retried with backoff, counted in ``rejections_retried``)."""
        ok, failures, retried = self.cluster.bulk(actions, f"bulk indexing into '{self.index_name}'", total, progress)
        self.rejections_retried += retried
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
        if not self.cluster.exists(self.index_name):
            return False
        have = self.cluster.tool_meta(self.index_name)
        if have is None:
            raise GenqError(f"index '{self.index_name}' was not created by genq-search, so which model wrote its "
                            "vectors is unknown; choose another --index (the tool never replaces a user's index)")
        if self.cfg.overwrite:
            return False
        held = self.vector_dimension()
        if dim is not None and held not in (None, dim):
            raise GenqError(f"vector dimension mismatch: index '{self.index_name}' holds {held}-d vectors, the model gives {dim}")
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
        return self.cluster.vector_dimension(self.index_name)

    def count(self) -> int:
        return self.cluster.count(self.index_name)

    # -- search ------------------------------------------------------------------------------------------
    def lexical_clause(self, text: str) -> dict[str, Any]:
        return lexical_query(text, ["title", "text"], "title", self.cfg.title_boost)

    def neural_search(self, queries: Queries, k: int) -> Results:
        qids = list(queries)
        return self._dense([self.cluster.neural_body(queries[q], k) for q in qids], qids, k, "neural search")

    def _dense(self, bodies: list[dict[str, Any]], qids: list[str], k: int, desc: str) -> Results:
        """Run kNN / neural searches; scores mapped back to the model's similarity."""
        hits = self.cluster.msearch(self.index_name, [{"size": k, "_source": False, **b} for b in bodies], qids, desc)
        space = self.cfg.space_type
        return {q: {h["_id"]: score_to_similarity(float(h["_score"]), space) for h in hits[q]} for q in qids}

    def lexical_search(self, queries: Queries, k: int) -> Results:
        qids = list(queries)
        bodies = [{"size": k, "_source": False, "query": self.lexical_clause(queries[q])} for q in qids]
        hits = self.cluster.msearch(self.index_name, bodies, qids, "BM25 search")
        return {q: {h["_id"]: float(h["_score"]) for h in hits[q]} for q in qids}

    def vector_search(self, query_ids: Sequence[str], query_vectors: np.ndarray, k: int) -> Results:
        bodies = [self.cluster.knn_body(v.tolist(), k) for v in query_vectors]
        return self._dense(bodies, list(query_ids), k, "k-NN search")

    def hybrid_search(self, queries: Queries, query_vectors: np.ndarray, k: int, method: FusionMethod = FusionMethod.RRF,
                      weights: tuple[float, float] = (0.5, 0.5), rrf_k: int = 60, depth: int = 100) -> Results:
        if not (self.cfg.server_side_hybrid or self.cluster.embeds_queries()):  # a cluster embedding the query fuses too
            return super().hybrid_search(queries, query_vectors, k, method, weights, rrf_k, depth)
        if method not in self.cluster.server_fusions():
            raise GenqError(f"backend.server_side_hybrid: {self.cluster.label} {self.cluster.version} at {self.cfg.url} "
                            f"cannot fuse {method.value} on the server (it runs: "
                            f"{', '.join(sorted(m.value for m in self.cluster.server_fusions())) or 'none'}); "
                            "leave server_side_hybrid off to fuse on the client")
        results: Results = {}
        for qid, vector in tqdm(list(zip(queries, query_vectors, strict=True)), desc="hybrid search", leave=False,
                                disable=len(queries) < 200):
            body, params = self.cluster.hybrid_body(self.lexical_clause(queries[qid]), vector.tolist(), method, weights,
                                                    rrf_k, depth, text=queries[qid])
            response = self.cluster.search(self.index_name, {"size": k, "_source": False, **body}, "hybrid search", **params)
            results[qid] = {h["_id"]: float(h["_score"]) for h in response["hits"]["hits"]}
        return results
