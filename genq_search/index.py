"""Zero-downtime reindex of an existing OpenSearch index with passage vectors.

Reads every document of the source (point-in-time + ``search_after`` on ``_id``, plain ``search_after`` where PIT
is unavailable), encodes the configured text fields, writes into ``<alias>-v<N>`` (a copy of the source's
settings and mappings plus the vector field), verifies counts, sampled sources and the vector dimension, then
switches the alias atomically. The source is never modified. A checkpoint (last ``_id`` written) makes an
interrupted run resume; documents are written by ``_id``, so a replayed batch never duplicates.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from genq_search.backends.opensearch import (
    VECTOR_FIELD,
    OpenSearchBackend,
    connect,
    copy_mapping_with_vectors,
    explain_error,
)
from genq_search.config import BackendConfig
from genq_search.data import fingerprint, write_json
from genq_search.encoders import Encoder
from genq_search.errors import GenqError
from genq_search.passages import split_documents

logger = logging.getLogger(__name__)


@dataclass
class ReindexPlan:
    source: str
    source_indices: list[str]
    alias: str
    target: str
    documents: int
    text_fields: list[str]
    model: str
    dim: int
    engine: str
    resume_after: str | None = None
    written: int = 0
    checkpoint: str = ""
    settings_hash: str = ""

    def describe(self) -> str:
        lines = [
            f"source      {self.source} -> {', '.join(self.source_indices)} ({self.documents} documents)",
            (f"target      {self.target} (new; settings and mappings copied, + nested '{VECTOR_FIELD}' knn_vector "
             f"dim {self.dim}, engine {self.engine})"),
            f"encode      {', '.join(self.text_fields)} with {self.model}",
            f"alias       {self.alias} -> {self.target} after verification (count, sampled sources, dimension)",
        ]
        if self.resume_after is not None:
            lines.append(f"resume      after _id {self.resume_after!r} ({self.written} documents already written)")
        return "\n".join(lines)


@dataclass
class ReindexResult:
    plan: ReindexPlan
    written: int
    seconds: float
    docs_per_s: float
    without_text: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _concrete_indices(client: Any, name: str, cfg: BackendConfig) -> list[str]:
    try:
        return sorted(client.indices.get(index=name))
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ == "NotFoundError":
            raise GenqError(f"source index or alias '{name}' does not exist at {cfg.url}") from None
        raise explain_error(exc, cfg, f"reading '{name}'") from None


def plan_reindex(client: Any, cfg: BackendConfig, source: str, alias: str | None, encoder: Encoder,
                 text_fields: list[str], state_dir: Path) -> ReindexPlan:
    indices = _concrete_indices(client, source, cfg)
    is_alias = bool(client.indices.exists_alias(name=source))
    if alias is None:
        if not is_alias:
            raise GenqError(f"'{source}' is an index, not an alias: pass --alias NAME for the alias to create "
                            "(the source index keeps its name and is never modified)")
        alias = source
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        raise GenqError(f"cannot create alias '{alias}': an index with that name exists; choose another --alias")
    checkpoint = Path(state_dir) / f"reindex-{alias}.json"
    settings_hash = fingerprint([source, alias, encoder.fingerprint(), text_fields, cfg.engine, cfg.space_type])
    documents = int(client.count(index=source)["count"])
    if checkpoint.is_file():
        state = json.loads(checkpoint.read_text())
        if state["settings_hash"] == settings_hash and client.indices.exists(index=state["target"]):
            return ReindexPlan(**{**state, "documents": documents, "source_indices": indices})
        logger.warning("ignoring stale checkpoint %s (settings changed or target gone)", checkpoint)
    existing = [n for n in client.indices.get(index=f"{alias}-v*", ignore_unavailable=True, allow_no_indices=True)]
    versions = [int(m.group(1)) for n in existing if (m := re.fullmatch(rf"{re.escape(alias)}-v(\d+)", n))]
    target = f"{alias}-v{max(versions, default=0) + 1}"
    if target in indices:
        target = f"{alias}-v{max(versions, default=0) + 2}"
    return ReindexPlan(source, indices, alias, target, documents, text_fields, encoder.name, encoder.dim,
                       cfg.engine.value, None, 0, str(checkpoint), settings_hash)


def _create_target(client: Any, cfg: BackendConfig, plan: ReindexPlan) -> None:
    source_index = plan.source_indices[0]
    settings = client.indices.get_settings(index=source_index)[source_index]["settings"]["index"]
    mappings = client.indices.get_mapping(index=source_index)[source_index]["mappings"]
    index_settings: dict[str, Any] = {
        "knn": True, "knn.algo_param.ef_search": cfg.ef_search, "number_of_shards": int(settings.get("number_of_shards", 1)),
        "number_of_replicas": 0, "refresh_interval": "-1",
    }
    for key in ("analysis", "similarity"):
        if key in settings:
            index_settings[key] = settings[key]
    body = {"settings": {"index": index_settings}, "mappings": copy_mapping_with_vectors(mappings, cfg, plan.dim)}
    try:
        client.indices.create(index=plan.target, body=body)
    except Exception as exc:  # noqa: BLE001
        raise explain_error(exc, cfg, f"creating '{plan.target}'") from None


def _read_batches(client: Any, cfg: BackendConfig, source: str, after: str | None, size: int):
    """Yield lists of hits sorted by ``_id``, starting after ``after``; PIT when the cluster supports it."""
    pit_id = None
    try:
        pit_id = client.create_pit(index=source, params={"keep_alive": "10m"})["pit_id"]
    except Exception:  # noqa: BLE001 - PIT needs OpenSearch 2.4+: fall back to plain search_after
        logger.info("point-in-time search unavailable; reading with search_after only")
    try:
        while True:
            body: dict[str, Any] = {"size": size, "sort": [{"_id": "asc"}], "query": {"match_all": {}}}
            if after is not None:
                body["search_after"] = [after]
            if pit_id:
                body["pit"] = {"id": pit_id, "keep_alive": "10m"}
                response = client.search(body=body)
            else:
                response = client.search(index=source, body=body)
            hits = response["hits"]["hits"]
            if not hits:
                return
            after = hits[-1]["_id"]
            yield hits
    finally:
        if pit_id:
            try:
                client.delete_pit(body={"pit_id": [pit_id]})
            except Exception:
                logger.debug("could not delete PIT", exc_info=True)


def _text(source: dict[str, Any], fields: list[str]) -> str:
    parts = []
    for name in fields:
        value: Any = source
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
    return " ".join(parts)


def run_reindex(cfg: BackendConfig, source: str, alias: str | None, encoder: Encoder, text_fields: list[str],
                state_dir: Path, read_batch: int = 256, encode_batch: int = 64, passage_tokens: int | None = None,
                passage_stride: int = 32, dry_run: bool = False, verify_sample: int = 50) -> ReindexPlan | ReindexResult:
    """Reindex ``source`` into a new versioned index with vectors and point ``alias`` at it."""
    client = connect(cfg)
    plan = plan_reindex(client, cfg, source, alias, encoder, text_fields, state_dir)
    if dry_run:
        return plan
    if plan.resume_after is None and plan.written == 0:
        _create_target(client, cfg, plan)
        write_json(Path(plan.checkpoint), asdict(plan))
    target = OpenSearchBackend(client, plan.target, cfg)
    max_tokens = passage_tokens if passage_tokens is not None else encoder.max_seq_length
    started, written, without_text, resumed_at = time.perf_counter(), plan.written, 0, plan.written
    failures: list[tuple[str, str]] = []
    work: queue.Queue[tuple[list[dict[str, Any]], str] | None] = queue.Queue(maxsize=2)
    writer_error: list[BaseException] = []

    def writer() -> None:  # bulk-writes batch i while the main thread encodes batch i+1
        nonlocal written
        while (item := work.get()) is not None:
            actions, last_id = item
            if writer_error:
                continue
            try:
                ok, failed = target.bulk(actions, progress=False)
                failures.extend(failed)
                written += ok
                plan.resume_after, plan.written = last_id, written
                write_json(Path(plan.checkpoint), asdict(plan))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                writer_error.append(exc)

    thread = threading.Thread(target=writer, name="reindex-bulk-writer", daemon=True)
    thread.start()
    progress = tqdm(total=plan.documents, initial=plan.written, desc=f"reindex {plan.target}", unit="doc")
    try:
        for hits in _read_batches(client, cfg, plan.source, plan.resume_after, read_batch):
            if writer_error:
                break
            corpus = {h["_id"]: {"title": "", "text": _text(h["_source"], text_fields)} for h in hits}
            with_text = {d: v for d, v in corpus.items() if v["text"]}
            without_text += len(corpus) - len(with_text)
            passages = split_documents(with_text, encoder.tokenizer, max_tokens, passage_stride)
            vectors = encoder.encode_passages([p.text for p in passages], batch_size=encode_batch, progress=False) if passages else []
            by_doc: dict[str, list[list[float]]] = {}
            for passage, vector in zip(passages, vectors, strict=True):
                by_doc.setdefault(passage.doc_id, []).append(vector.tolist())
            actions = [
                {"_index": plan.target, "_id": h["_id"],
                 "_source": {**h["_source"], VECTOR_FIELD: [{"vector": v} for v in by_doc.get(h["_id"], [])]}}
                for h in hits
            ]
            work.put((actions, hits[-1]["_id"]))
            progress.update(len(hits))
    finally:
        work.put(None)
        thread.join()
        progress.close()
    if writer_error:
        raise writer_error[0]
    if failures:
        shown = "; ".join(f"{i}: {r}" for i, r in failures[:5])
        raise GenqError(f"{len(failures)} documents failed to index into '{plan.target}' (alias not switched; rerun "
                        f"to resume): {shown}")
    target.finish_load()
    _verify(client, cfg, plan, verify_sample)
    _switch_alias(client, cfg, plan)
    Path(plan.checkpoint).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return ReindexResult(plan, written, seconds, (written - resumed_at) / seconds if seconds else 0.0, without_text, failures)


def _verify(client: Any, cfg: BackendConfig, plan: ReindexPlan, sample: int) -> None:
    source_count = int(client.count(index=plan.source)["count"])
    target_count = int(client.count(index=plan.target)["count"])
    if source_count != target_count:
        raise GenqError(f"verification failed: source '{plan.source}' has {source_count} documents, target "
                        f"'{plan.target}' has {target_count} (did the source change during the reindex?); alias not switched")
    dim = OpenSearchBackend(client, plan.target, cfg).vector_dimension()
    if dim != plan.dim:
        raise GenqError(f"verification failed: target vector dimension {dim}, expected {plan.dim}; alias not switched")
    query = {"function_score": {"random_score": {"seed": 13, "field": "_seq_no"}}}
    hits = client.search(index=plan.source, body={"size": sample, "_source": False, "query": query})["hits"]["hits"]
    chosen = [h["_id"] for h in hits]
    if not chosen:
        return
    src = {d["_id"]: d["_source"] for d in client.mget(index=plan.source, body={"ids": chosen})["docs"]}
    dst = {d["_id"]: d.get("_source") for d in client.mget(index=plan.target, body={"ids": chosen})["docs"]}
    for doc_id in chosen:
        copied, original = dict(dst.get(doc_id) or {}), dict(src[doc_id])
        copied.pop(VECTOR_FIELD, None)
        original.pop(VECTOR_FIELD, None)  # re-reindexing an index that already has vectors replaces them
        if copied != original:
            raise GenqError(f"verification failed: document '{doc_id}' differs between source and target; alias not switched")


def _switch_alias(client: Any, cfg: BackendConfig, plan: ReindexPlan) -> None:
    actions: list[dict[str, Any]] = []
    if client.indices.exists_alias(name=plan.alias):
        for index in client.indices.get_alias(name=plan.alias):
            actions.append({"remove": {"index": index, "alias": plan.alias}})
    actions.append({"add": {"index": plan.target, "alias": plan.alias}})
    try:
        client.indices.update_aliases(body={"actions": actions})
    except Exception as exc:  # noqa: BLE001
        raise explain_error(exc, cfg, f"switching alias '{plan.alias}'") from None
