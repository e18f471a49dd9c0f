"""Reindex a live index (or every index behind an alias) on OpenSearch or Elasticsearch into ``<alias>-v<N>`` with passage vectors,
losing nothing.

1. Plan: the state file ``<run_dir>/reindex-<alias>.json`` names the target and is written *before* the target is
   created, so a crash at any point resumes (the target is marked in its ``_meta`` as the tool's, for this run).
2. Copy: shard by shard in ``_seq_no`` order up to the shards' checkpoints (``engines.base.Cluster.scan``); batch i+1 is
   encoded while batch i is bulk-written. Per-shard cursors advance as batches land; documents that fail are
   recorded with their reasons and retried, exactly those, by the next run.
   With ``reindex.ray`` the copy runs in work units (shard, ``_seq_no`` range) on a Ray cluster's actors, each unit
   recorded as it finishes (``genq_search.distributed``); the cursors then stand at the checkpoints the units covered.
3. Catch-up: rounds copying what moved past the cursors (documents created or updated since) until a round finds
   nothing (or ``catchup_rounds`` are spent); deletions are found by comparing every id of source and target.
4. With ``freeze_writes`` the source gets a write block for the final round, the verification and the switch; it
   is released in every case.
5. Verify: identical id sets, a random sample of sources identical field by field (a different sample each run),
   vectors of the model's dimension on every document that has text. Then the alias moves in one atomic call.
The source is only read (and refreshed, which makes already-written documents searchable and changes no data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.data import fingerprint, write_json
from genq_search.encoders import Encoder
from genq_search.engines.base import (
    VECTOR_FIELD,
    Cluster,
    ClusterBackend,
    Cursors,
    vector_json,
)
from genq_search.errors import GenqError
from genq_search.passages import split_documents
from genq_search.sources import hit_document, source_fields

logger = logging.getLogger(__name__)


@dataclass
class ReindexState:
    """What a run has done so far; saved atomically after every batch (``<run_dir>/reindex-<alias>.json``)."""

    source: str
    source_indices: list[str]
    alias: str
    target: str
    model: str
    dim: int
    settings_hash: str
    documents: int = 0
    cursors: Cursors = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    copied: int = 0
    caught_up: int = 0
    deleted: int = 0
    without_text: int = 0
    rejections_retried: int = 0  # bulk writes the cluster rejected with 429 (write queue full), retried with backoff
    frozen: dict[str, bool | None] | None = None  # while --freeze-writes blocks the source: each index's block before
    ray_plan: dict[str, Any] | None = None  # a Ray copy under way: the cursors and checkpoints its units cover
    units_done: list[int] = field(default_factory=list)  # the numbers of the plan's units finished (never run again)
    resumed: bool = False
    checkpoint: str = ""
    alias_now: list[str] = field(default_factory=list)

    def save(self) -> None:
        write_json(Path(self.checkpoint), {k: v for k, v in asdict(self).items() if k not in {"checkpoint", "resumed", "alias_now"}})

    def describe(self) -> str:
        moves = f"{self.alias}: {', '.join(self.alias_now) or '(new alias)'} -> {self.target}"
        lines = [
            f"source      {self.source} -> {', '.join(self.source_indices)} ({self.documents} documents)",
            f"target      {self.target} (settings and mappings of the source + nested '{VECTOR_FIELD}' vectors, dim {self.dim})",
            f"encode      with {self.model}",
            f"alias       {moves}, only after catch-up and verification (every id, sampled sources, vectors)",
        ]
        if self.resumed:
            lines.append(f"resume      {self.copied} documents already copied; {len(self.failed)} failed earlier, retried now")
        return "\n".join(lines)


@dataclass
class ReindexResult:
    state: ReindexState
    written: int
    seconds: float
    docs_per_s: float
    verified_ids: int
    sample_seed: int
    alias_switch_s: float
    stages_s: dict[str, float]
    changed_after_switch: int = 0
    previous: list[str] = field(default_factory=list)


def plan_reindex(cluster: Cluster, source: str, alias: str | None, encoder: Encoder, corpus: CorpusConfig,
                 state_dir: Path) -> ReindexState:
    """Resolve the source, alias and target; pick up an unfinished run with the same settings."""
    indices = cluster.resolve(source)
    if alias is None:
        if not cluster.is_alias(source):
            raise GenqError(f"'{source}' is an index, not an alias: pass --alias NAME for the alias to create "
                            "(the source index keeps its name and is never modified)")
        alias = source
    if cluster.exists(alias) and not cluster.is_alias(alias):
        raise GenqError(f"cannot create alias '{alias}': an index with that name exists; choose another --alias")
    checkpoint = Path(state_dir) / f"reindex-{alias}.json"
    settings_hash = fingerprint([source, alias, encoder.fingerprint(), corpus.title_field, corpus.text_fields,
                                 corpus.passage_tokens, corpus.passage_stride, *_index_settings(cluster)])
    documents = cluster.count(source)
    if checkpoint.is_file():
        saved = json.loads(checkpoint.read_text())
        if saved.get("settings_hash") == settings_hash:
            state = ReindexState(**{**saved, "documents": documents, "source_indices": indices}, resumed=True,
                                 checkpoint=str(checkpoint))
            meta = cluster.tool_meta(state.target)
            if meta is None and cluster.exists(state.target):
                raise GenqError(f"target '{state.target}' exists but was not created by genq-search; refusing to write into it")
            return state
        logger.warning("ignoring the unfinished reindex in %s: its settings differ (its target %s is left as it is)",
                       checkpoint, saved.get("target"))
        for index, value in (saved.get("frozen") or {}).items():  # killed while it froze the source: never leave it blocked
            logger.warning("releasing the write block the unfinished run left on %s", index)
            cluster.set_write_block([index], value)
    existing = cluster.matching(f"{alias}-v*")
    versions = [int(m.group(1)) for n in existing if (m := re.fullmatch(rf"{re.escape(alias)}-v(\d+)", n))]
    version = max(versions, default=0) + 1
    while f"{alias}-v{version}" in indices or cluster.exists(f"{alias}-v{version}"):
        version += 1
    return ReindexState(source, indices, alias, f"{alias}-v{version}", encoder.name, encoder.dim, settings_hash,
                        documents, checkpoint=str(checkpoint))


def _index_settings(cluster: Cluster) -> list[Any]:
    """The vector-index settings a reindex's settings hash covers (the engine's own)."""
    cfg = cluster.cfg
    if cluster.engine == "opensearch":  # as before the engines were split: unfinished OpenSearch runs still resume
        return [cfg.knn_library, cfg.space_type]
    return [cluster.engine, cfg.index_options, cfg.space_type]


def merged_source_body(cluster: Cluster, indices: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings (shards, analysis, similarity, replicas, refresh) and mappings of every source index, merged;
    conflicting definitions are refused."""
    settings = cluster.settings(indices)
    mappings = cluster.mappings(indices)
    merged: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for index in indices:
        own = settings[index]
        for key in ("analysis", "similarity", "number_of_shards"):
            if key in own:
                if key in shared and shared[key] != own[key]:
                    raise GenqError(f"the indices behind '{indices[0]}' differ in '{key}' ({indices[0]} vs {index}); "
                                    "reindex them one by one")
                shared[key] = own[key]
        shared.setdefault("number_of_replicas", own.get("number_of_replicas", "1"))
        shared.setdefault("refresh_interval", own.get("refresh_interval", "1s"))
        _merge_properties(merged, mappings[index].get("properties", {}), index)
    body_mappings = dict(mappings[indices[0]])
    body_mappings["properties"] = merged
    return shared, body_mappings


def _merge_properties(into: dict[str, Any], new: dict[str, Any], index: str, prefix: str = "") -> None:
    for name, spec in new.items():
        if name not in into:
            into[name] = spec
        elif "properties" in spec and "properties" in into[name]:
            _merge_properties(into[name]["properties"], spec["properties"], index, f"{prefix}{name}.")
        elif into[name] != spec:
            raise GenqError(f"mapping conflict between the indices behind the alias: field '{prefix}{name}' is "
                            f"{json.dumps(into[name])} elsewhere but {json.dumps(spec)} in '{index}'")


def check_source_mappings(mappings: dict[str, Any], source: str, dim: int) -> None:
    """Refuse a source the reindex cannot copy faithfully: ``_source`` disabled (nothing to copy), ``semantic_text``
    fields (their embeddings come from an inference endpoint the copy would call again for every document), a field
    named like the vector field that is not one of the tool's, or the tool's with another dimension."""
    if (mappings.get("_source") or {}).get("enabled") is False:
        raise GenqError(f"'{source}' has _source disabled: a reindex copies documents from their _source, so it cannot "
                        "copy this index")

    def walk(properties: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
        for name, spec in properties.items():
            yield prefix + name, spec
            yield from walk(spec.get("properties", {}), f"{prefix}{name}.")

    semantic = [path for path, spec in walk(mappings.get("properties", {})) if spec.get("type") == "semantic_text"]
    if semantic:
        raise GenqError(f"'{source}' has semantic_text fields ({', '.join(semantic)}): copying them would run their "
                        "inference endpoint again for every document; reindex an index without them")
    existing = mappings.get("properties", {}).get(VECTOR_FIELD)
    if existing is not None:
        vector = existing.get("properties", {}).get("vector", {}) if existing.get("type") == "nested" else {}
        if vector.get("type") not in ("knn_vector", "dense_vector"):
            raise GenqError(f"mapping conflict: '{source}' already has a field '{VECTOR_FIELD}' that is not a genq-search "
                            "vector field")
        held = vector.get("dimension", vector.get("dims"))
        if held not in (None, dim):
            logger.info("'%s' holds %s-d vectors in '%s': the new index gets the model's %d-d vectors", source, held,
                        VECTOR_FIELD, dim)


def create_target(cluster: Cluster, state: ReindexState, corpus: CorpusConfig) -> dict[str, Any]:
    """Create the target (no replicas, no refresh during the load); returns the settings to restore afterwards."""
    shared, mappings = merged_source_body(cluster, state.source_indices)
    restore = {"number_of_replicas": shared.pop("number_of_replicas"), "refresh_interval": shared.pop("refresh_interval")}
    if cluster.exists(state.target):
        return restore
    check_source_mappings(mappings, state.source, state.dim)
    mappings["properties"][VECTOR_FIELD] = cluster.vector_field_mapping(state.dim)
    mappings["_meta"] = {**mappings.get("_meta", {}), "genq_search": {
        "created_by": "genq-search", "source": state.source, "settings_hash": state.settings_hash, "model": state.model,
        "passage_tokens": corpus.passage_tokens, "passage_stride": corpus.passage_stride,
        "title_field": corpus.title_field, "text_fields": corpus.text_fields}}
    index_settings = {**{k: v for k, v in shared.items() if k in ("analysis", "similarity")},
                      "number_of_shards": int(shared.get("number_of_shards", 1)), "number_of_replicas": 0,
                      "refresh_interval": "-1", **cluster.vector_index_settings()}
    cluster.create_index(state.target, {"index": index_settings}, mappings, what="")
    return restore


class Copier:
    """Encodes batches of source hits and bulk-writes them into the target on a second thread (pipelined)."""

    def __init__(self, cluster: Cluster, corpus: CorpusConfig, encoder: Encoder, state: ReindexState, encode_batch: int):
        self.cluster, self.corpus, self.encoder, self.state = cluster, corpus, encoder, state
        self.encode_batch = encode_batch
        self.target = ClusterBackend(cluster, state.target)
        self.target.rejections_retried = state.rejections_retried  # a resumed run keeps counting
        self.max_tokens = corpus.passage_tokens if corpus.passage_tokens is not None else encoder.max_seq_length

    def actions(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        docs = {h["_id"]: hit_document(h, self.corpus)[1:] for h in hits}
        with_text = {d: {"title": title, "text": text} if text else {"title": "", "text": title}
                     for d, (title, text) in docs.items() if title or text}
        self.state.without_text += len(docs) - len(with_text)
        passages = split_documents(with_text, self.encoder.tokenizer, self.max_tokens, self.corpus.passage_stride)
        vectors = self.encoder.encode_passages([p.text for p in passages], batch_size=self.encode_batch, progress=False) if passages else []
        by_doc: dict[str, list[list[float]]] = {}
        for passage, vector in zip(passages, vectors, strict=True):
            by_doc.setdefault(passage.doc_id, []).append(vector_json(vector))
        out = []
        for h in hits:
            action = {"_index": self.state.target, "_id": h["_id"],
                      "_source": {**h["_source"], VECTOR_FIELD: [{"vector": v} for v in by_doc.get(h["_id"], [])]}}
            if h.get("_routing"):
                action["routing"] = h["_routing"]
            out.append(action)
        return out

    def run(self, batches: Iterable[tuple[str, str, list[dict[str, Any]]]], progress: Any, counter: str) -> int:
        """Copy every batch; advance the cursors and save the state as batches land. Returns documents written."""
        work: queue.Queue[tuple[list[dict[str, Any]], str, str, int] | None] = queue.Queue(maxsize=2)
        errors: list[BaseException] = []
        written = 0

        def writer() -> None:
            nonlocal written
            while (item := work.get()) is not None:
                actions, index, shard, last_seq = item
                if errors:
                    continue
                try:
                    ok, failed = self.target.bulk(actions, progress=False)
                    failed_ids = dict(failed)
                    for action in actions:
                        if action["_id"] not in failed_ids:
                            self.state.failed.pop(action["_id"], None)
                    self.state.failed.update(failed_ids)
                    written += ok
                    setattr(self.state, counter, getattr(self.state, counter) + ok)
                    if index:
                        self.state.cursors.setdefault(index, {})[shard] = max(last_seq, self.state.cursors.get(index, {}).get(shard, -1))
                    self.state.rejections_retried = self.target.rejections_retried
                    self.state.save()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    errors.append(exc)

        thread = threading.Thread(target=writer, name="reindex-bulk-writer", daemon=True)
        thread.start()
        try:
            for index, shard, hits in batches:
                if errors:
                    break
                work.put((self.actions(hits), index, shard, int(hits[-1].get("_seq_no", -1))))
                progress.update(len(hits))
        except GenqError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the cluster went away mid-read
            raise self.cluster.explain(exc, f"reading '{self.state.source}'") from None
        finally:
            work.put(None)
            thread.join()
        if errors:
            raise errors[0]
        return written

    def copy_ids(self, ids: list[str], progress: Any, counter: str) -> int:
        """Copy the current version of these source documents (those still in the source), 256 at a time: however
        many there are, only one batch of sources is held (and one being written)."""
        gone: list[str] = []

        def batches() -> Iterable[tuple[str, str, list[dict[str, Any]]]]:
            for start in range(0, len(ids), 256):
                docs = self.cluster.mget(self.state.source, ids[start : start + 256])
                gone.extend(d["_id"] for d in docs if not d.get("found"))
                hits = [{"_id": d["_id"], "_source": d["_source"], **({"_routing": d["_routing"]} if d.get("_routing") else {})}
                        for d in docs if d.get("found")]
                if hits:
                    yield "", "", hits

        written = self.run(batches(), progress, counter)
        for doc_id in gone:  # deleted from the source since: nothing to retry (after the run: its writer saves the state)
            self.state.failed.pop(doc_id, None)
        return written


def _release_write_block(cluster: Cluster, state: ReindexState) -> None:
    """Put back the write block settings the source had before the freeze (``state.frozen``), then forget them."""
    for index, value in (state.frozen or {}).items():
        cluster.set_write_block([index], value)
    state.frozen = None
    state.save()


def run_reindex(cfg: BackendConfig, corpus: CorpusConfig, reindex: ReindexConfig, source: str, encoder: Encoder,
                state_dir: Path, encode_batch: int = 64, dry_run: bool = False) -> ReindexState | ReindexResult:
    """Reindex ``source`` into a new versioned index with vectors and point ``reindex.alias`` at it."""
    from genq_search.engines import connect

    cluster = connect(cfg)
    state = plan_reindex(cluster, source, reindex.alias, encoder, corpus, state_dir)
    previous = cluster.alias_indices(state.alias)
    state.alias_now = previous
    if dry_run:
        return state
    started, stages = time.perf_counter(), {}
    state.save()  # the intent first: a crash right after the target is created resumes into it
    if state.frozen is not None:  # a run killed while it held the write block: release it before anything else
        logger.warning("releasing the write block a previous run left on %s (it was killed during its final phase)",
                       ", ".join(state.frozen))
        _release_write_block(cluster, state)
    restore = create_target(cluster, state, corpus)
    copier = Copier(cluster, corpus, encoder, state, encode_batch)
    indices = state.source_indices
    written_before = state.copied + state.caught_up
    progress = tqdm(total=state.documents, initial=min(state.copied, state.documents), desc=f"reindex {state.target}", unit="doc")
    try:
        if state.failed:
            logger.info("retrying %d documents that failed in the previous run", len(state.failed))
            copier.copy_ids(sorted(state.failed), progress, "copied")
        if reindex.ray:  # the copy in work units on a Ray cluster; what follows is the same either way
            from genq_search.distributed import copy_on_ray

            copy_on_ray(copier, cfg, reindex, progress)
        else:
            upto, _ = cluster.checkpoints(indices)
            copier.run(cluster.scan(indices, state.cursors, upto, corpus.read_batch), progress, "copied")
        stages["copy_s"] = time.perf_counter() - started
        _raise_failures(state)
        start = time.perf_counter()
        for _ in range(reindex.catchup_rounds):
            upto, _ = cluster.checkpoints(indices)
            if not copier.run(cluster.scan(indices, state.cursors, upto, corpus.read_batch), progress, "caught_up"):
                break
        _raise_failures(state)
        stages["catchup_s"] = time.perf_counter() - start
    finally:
        progress.close()
    cluster.finish_load(state.target, restore["number_of_replicas"], restore["refresh_interval"])
    start = time.perf_counter()
    if reindex.freeze_writes:
        state.frozen = cluster.write_blocks(indices)
        state.save()  # before the block: a run killed while it holds the block has the next run release it
        cluster.set_write_block(indices, True)
        try:
            verified, seed, switch_s = _final(cluster, copier, reindex)
        finally:
            _release_write_block(cluster, state)
    else:
        verified, seed, switch_s = _final(cluster, copier, reindex)
    stages["verify_switch_s"] = time.perf_counter() - start
    state.rejections_retried = copier.target.rejections_retried
    if state.rejections_retried:
        logger.info("'%s': %d bulk writes rejected by the cluster (429, write queue full) and retried with backoff",
                    state.target, state.rejections_retried)
    changed_after = 0
    if not reindex.freeze_writes:
        upto, _ = cluster.checkpoints(indices)
        changed_after = sum(len(h) for _, _, h in cluster.scan(indices, state.cursors, upto, 5000, source=False))
        if changed_after:
            logger.warning("%d documents changed in '%s' between the last catch-up and the alias switch; rerun with "
                           "--freeze-writes for a switch that loses nothing under live writes", changed_after, source)
    Path(state.checkpoint).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    written = state.copied + state.caught_up - written_before
    return ReindexResult(state, written, seconds, written / seconds if seconds else 0.0, verified, seed, switch_s, stages,
                         changed_after, previous)


def _raise_failures(state: ReindexState) -> None:
    if state.failed:
        shown = "; ".join(f"{i}: {r}" for i, r in list(state.failed.items())[:5])
        raise GenqError(f"{len(state.failed)} documents failed to index into '{state.target}' (alias not switched; "
                        f"rerun to retry exactly those): {shown}")


def _final(cluster: Cluster, copier: Copier, reindex: ReindexConfig) -> tuple[int, int, float]:
    """Last catch-up, deletions, verification (retried while concurrent writes keep it from agreeing), switch."""
    state = copier.state
    for attempt in range(1, 4):
        upto, _ = cluster.checkpoints(state.source_indices)
        copier.run(cluster.scan(state.source_indices, state.cursors, upto, 1000), tqdm(disable=True), "caught_up")
        cluster.refresh([state.target])
        check = compare_ids(cluster, state.source_indices, state.target)
        extra, missing = check.extra, check.missing
        if extra:
            _delete(copier.target, extra)
            state.deleted += len(extra)
        if missing:
            copier.copy_ids(missing, tqdm(disable=True), "caught_up")
        state.save()
        cluster.refresh([state.target])
        if not extra and not missing or attempt == 3:
            break
        logger.info("catch-up: %d deleted and %d missing documents found; verifying again", len(extra), len(missing))
    seed = random.SystemRandom().randrange(2**31)
    verified = verify(cluster, state, copier.corpus, reindex.verify_sample, seed)
    start = time.perf_counter()
    cluster.switch_alias(state.alias, state.target)
    return verified, seed, time.perf_counter() - start


def _delete(target: ClusterBackend, ids: list[str]) -> None:
    _, failures = target.bulk(({"_op_type": "delete", "_index": target.index_name, "_id": i} for i in ids), progress=False)
    real = [(i, r) for i, r in failures if "not_found" not in r and "not found" not in r]
    if real:
        raise GenqError(f"could not delete {len(real)} documents removed from the source, e.g. {real[0][0]}: {real[0][1]}")


def verify(cluster: Cluster, state: ReindexState, corpus: CorpusConfig, sample: int, seed: int) -> int:
    """Every id present on both sides, a random sample of sources identical, vectors wherever there is text."""
    check = compare_ids(cluster, state.source_indices, state.target, sample, seed)
    missing, extra = check.missing, check.extra
    if missing or extra:
        raise GenqError(f"verification failed: {len(missing)} source documents missing from '{state.target}' "
                        f"(e.g. {missing[:3]}), {len(extra)} not in the source (e.g. {extra[:3]}); the source is still "
                        "changing: rerun with --freeze-writes; alias not switched")
    dim = cluster.vector_dimension(state.target)
    if dim != state.dim:
        raise GenqError(f"verification failed: target vector dimension {dim}, expected {state.dim}; alias not switched")
    chosen = check.sample
    for start in range(0, len(chosen), 100):
        ids = chosen[start : start + 100]
        src = {d["_id"]: d["_source"] for d in cluster.mget(state.source, ids) if d.get("found")}
        dst = {d["_id"]: d.get("_source") for d in cluster.mget(state.target, ids)}
        for doc_id in ids:
            if doc_id not in src:
                continue  # deleted since the id scan: the next run's catch-up handles it
            copied, original = dict(dst.get(doc_id) or {}), dict(src[doc_id])
            vectors = copied.pop(VECTOR_FIELD, None) or []
            original.pop(VECTOR_FIELD, None)  # re-reindexing an index that already has vectors replaces them
            if copied != original:
                raise GenqError(f"verification failed: document '{doc_id}' differs between source and target; alias not switched")
            if any(len(v.get("vector", [])) != state.dim for v in vectors):
                raise GenqError(f"verification failed: document '{doc_id}' has a vector that is not {state.dim}-d; alias not switched")
    no_vectors = {"nested": {"path": VECTOR_FIELD, "query": {"exists": {"field": f"{VECTOR_FIELD}.vector"}}}}
    upto, _ = cluster.checkpoints([state.target])
    without, example = 0, ""
    for _, _, hits in cluster.scan([state.target], None, upto, 1000, source_fields(corpus), must_not=no_vectors):
        for h in hits:
            if any(hit_document(h, corpus)[1:]):
                without, example = without + 1, example or h["_id"]
    if without:
        raise GenqError(f"verification failed: {without} documents with text have no vectors (e.g. "
                        f"'{example}'); alias not switched")
    return check.count


# -- comparing the ids of source and target, streamed --------------------------------------------------------------

ID_BUCKETS = 1 << 14  # digest buckets: 16K counts and sums (256 KB); only the ids of buckets that differ are held
MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it permutes 64-bit numbers (the sample's seeded order)


@dataclass
class IdCheck:
    """Source ids missing from the target, target ids not in the source, the source's id count, and up to ``sample``
    source ids drawn by a seeded hash order (independent of the order the engine returns them in)."""

    missing: list[str]
    extra: list[str]
    count: int
    sample: list[str]


def _hashes(ids: list[str]) -> Any:
    """Two independent 64-bit hashes per id (blake2b-128): the bucket's and the summed one."""
    raw = b"".join(hashlib.blake2b(i.encode(), digest_size=16).digest() for i in ids)
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2)


def _digest(cluster: Cluster, indices: list[str], sample: int = 0, seed: int = 0) -> tuple[Any, Any, list[str]]:
    """Per bucket, the count and the sum (mod 2**64) of the ids' hashes, and the ``sample`` ids first in the seeded
    order; one streamed pass, memory independent of the number of ids."""
    counts, sums = np.zeros(ID_BUCKETS, np.int64), np.zeros(ID_BUCKETS, np.uint64)
    keys, chosen = np.zeros(0, np.uint64), np.zeros(0, object)
    mix = np.uint64(random.Random(seed).getrandbits(64))
    for ids in cluster.id_batches(indices):
        hashes = _hashes(ids)
        buckets = (hashes[:, 0] % ID_BUCKETS).astype(np.int64)
        np.add.at(counts, buckets, 1)
        np.add.at(sums, buckets, hashes[:, 1])  # wraps around mod 2**64: order-free, mergeable
        if sample:
            keys = np.concatenate([keys, (hashes[:, 1] ^ mix) * MIX])
            chosen = np.concatenate([chosen, np.array(ids, dtype=object)])
            if len(keys) > sample:
                first = np.argpartition(keys, sample - 1)[:sample]
                keys, chosen = keys[first], chosen[first]
    return counts, sums, sorted(chosen.tolist())


def _ids_in(cluster: Cluster, indices: list[str], buckets: Any) -> set[str]:
    """The ids whose bucket is marked in ``buckets``."""
    found: set[str] = set()
    for ids in cluster.id_batches(indices):
        marked = buckets[(_hashes(ids)[:, 0] % ID_BUCKETS).astype(np.int64)]
        found.update(i for i, keep in zip(ids, marked, strict=True) if keep)
    return found


def compare_ids(cluster: Cluster, source_indices: list[str], target: str, sample: int = 0, seed: int = 0) -> IdCheck:
    """Every id of the source against every id of the target without holding either set: one streamed pass over each
    sums the ids' hashes per bucket; only the buckets whose counts or sums differ are read again, for their ids (a
    64-bit collision aside, equal digests are equal sets). Hand-written: the clients offer no set comparison of two
    indices, and reading 100M ids into sets needs gigabytes in one process."""
    source_counts, source_sums, chosen = _digest(cluster, source_indices, sample, seed)
    target_counts, target_sums, _ = _digest(cluster, [target])
    differ = (source_counts != target_counts) | (source_sums != target_sums)
    missing: list[str] = []
    extra: list[str] = []
    if differ.any():
        source_ids, target_ids = _ids_in(cluster, source_indices, differ), _ids_in(cluster, [target], differ)
        missing, extra = sorted(source_ids - target_ids), sorted(target_ids - source_ids)
    return IdCheck(missing, extra, int(source_counts.sum()), chosen)
