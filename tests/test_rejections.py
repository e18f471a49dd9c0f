"""Rejected writes on the drill nodes (``scripts/opensearch-local.sh start --secure``, ``elasticsearch-local.sh start --secure``: a write thread pool of 1 thread
and a queue of 1): ``index`` and ``reindex`` write a 4-shard index while other clients write too, so bulk shard
requests get 429 es_rejected_execution_exception. The tool retries them with exponential backoff, ends with exactly
the source's documents and reports how many writes were rejected and retried (log line, reindex state JSON); each test
records the count as the junit test-suite property ``rejections_retried.index`` / ``rejections_retried.reindex``
(``pytest --junitxml``; ``bench/reliability.py`` reads them)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import SAMPLE, new_name
from test_security import cli

from genq_search.config import BackendConfig

pytestmark = pytest.mark.integration

SHARDS, DOCS, BULK_DOCS, READ_BATCH = 4, 240, 60, 20  # bulk requests of `index`, batches of `reindex`
REPORTED = r"'{index}': (\d+) bulk writes rejected by the cluster \(429, write queue full\) and retried with backoff"


@pytest.fixture(scope="module")
def drill_cfg(secure_cfg: BackendConfig) -> BackendConfig:
    """The secured node, if its write queue is tiny enough to reject concurrent shard writes."""
    from conftest import client_of as connect

    pool = connect(secure_cfg).cat.thread_pool(thread_pool_patterns="write", h="size,queue_size", format="json")[0]
    if int(pool["queue_size"]) > 1:
        pytest.skip(f"the node at {secure_cfg.url} has a write queue of {pool['queue_size']}: start the drill node with "
                    "scripts/opensearch-local.sh start --secure (GENQ_OPENSEARCH_WRITE_QUEUE=1)")
    return secure_cfg


def connection(cfg: BackendConfig) -> list[Any]:
    return ["--url", cfg.url, "--ca-certs", cfg.ca_certs, "--username", cfg.username, "--password", cfg.password]


@contextmanager
def other_writers(cfg: BackendConfig, index: str, target: str, rejected: Callable[[], bool], threads: int = 3) -> Iterator[None]:
    """From the moment the tool creates ``target`` until it got a write rejected (at most a minute), other clients
    bulk-write into another 4-shard index as fast as they can: the tool's first writes meet a full write queue, its
    retries (after backoff) a free one."""
    from conftest import client_of as connect

    client = connect(cfg)
    client.indices.create(index=index, body={"settings": {"index": {"number_of_shards": 4, "number_of_replicas": 0}},
                                             "mappings": {"properties": {"text": {"type": "keyword"}}}})
    client.index(index=index, id="warm-up", body={"text": "x"})
    stop = threading.Event()

    def write(writer: int) -> None:
        while not client.indices.exists(index=target):
            if stop.wait(0.05):
                return
        deadline, batch = time.monotonic() + 60, 0
        while not stop.is_set() and not rejected() and time.monotonic() < deadline:
            body = [line for i in range(20) for line in ({"index": {"_index": index, "_id": f"{writer}-{batch}-{i}"}}, {"text": "x"})]
            with suppress(Exception):  # rejected too: they do not care
                client.bulk(body=body)
            batch += 1

    workers = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join()


@contextmanager
def recorded_backoff(monkeypatch: pytest.MonkeyPatch, engine: str = "opensearch") -> Iterator[list[float]]:
    """The sleeps of the engine client's bulk helper between retries of rejected writes."""
    if engine == "elasticsearch":
        from elasticsearch.helpers import actions
    else:
        from opensearchpy.helpers import actions

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    with monkeypatch.context() as patch:
        patch.setattr(actions, "time", SimpleNamespace(sleep=sleep))
        yield sleeps


def reported(output: str, index: str) -> int:
    match = re.search(REPORTED.format(index=re.escape(index)), output)
    assert match, output
    return int(match.group(1))


def documents(client: Any, index: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=index)
    hits = client.search(index=index, body={"size": 10_000, "query": {"match_all": {}}})["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def test_rejections_are_counted_per_write_and_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster: a client whose first bulk request is rejected as a whole, then one item of the retry."""
    from opensearchpy import TransportError
    from opensearchpy.serializer import JSONSerializer

    from genq_search.engines.base import ClusterBackend
    from genq_search.engines.opensearch import OpenSearchCluster

    class Client:
        transport = SimpleNamespace(serializer=JSONSerializer())
        calls = 0

        def bulk(self, body: str, **kwargs: Any) -> dict[str, Any]:
            self.calls += 1
            ids = [json.loads(line)["index"]["_id"] for line in body.splitlines()[::2]]
            if self.calls == 1:
                raise TransportError(429, "es_rejected_execution_exception", {})
            return {"items": [{"index": {"_id": i, "status": 429 if self.calls == 2 and i == "b" else 201}} for i in ids]}

    backend = ClusterBackend(OpenSearchCluster(Client(), BackendConfig(engine="opensearch"), "2.19.1"), "docs")
    with recorded_backoff(monkeypatch) as sleeps:
        ok, failures = backend.bulk(({"_index": "docs", "_id": i, "_source": {"text": i}} for i in "abc"), progress=False)
    assert (ok, failures) == (3, [])
    assert backend.rejections_retried == 3 + 1 and sleeps == [1, 2]


def test_index_retries_rejected_writes(drill_cfg: BackendConfig, secure_names: list[str], tiny_bi_encoder: Path,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_testsuite_property: Any) -> None:
    from conftest import client_of as connect

    corpus = tmp_path / "beir"
    corpus.mkdir()
    rows = [json.loads(line) for line in (SAMPLE / "corpus.jsonl").open()][:DOCS]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "index.toml"
    config.write_text(f"[backend]\nshards = {SHARDS}\nbulk_docs = {BULK_DOCS}\n")
    index = new_name(secure_names)
    with recorded_backoff(monkeypatch, drill_cfg.engine.value) as sleeps, other_writers(drill_cfg, new_name(secure_names, "other"), index, lambda: bool(sleeps)):
        result = cli("index", "--config", config, "--backend", drill_cfg.engine.value, *connection(drill_cfg), "--index", index,
                     "--corpus", corpus, "--model", tiny_bi_encoder, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    rejected = reported(result.output, index)
    record_testsuite_property("rejections_retried.index", rejected)
    assert rejected > 0  # the drill really drilled
    assert sleeps and sleeps[0] == 1 and set(sleeps) <= {1, 2, 4, 8, 16, 30}  # exponential backoff
    written = documents(connect(drill_cfg), index)
    assert {d: (s["title"], s["text"]) for d, s in written.items()} == {r["_id"]: (r["title"], r["text"]) for r in rows}
    assert all(s["passages"] for s in written.values())


def test_reindex_retries_rejected_writes(drill_cfg: BackendConfig, secure_names: list[str], tiny_bi_encoder: Path,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_testsuite_property: Any) -> None:
    from conftest import bulk_load
    from conftest import client_of as connect

    from genq_search import index as reindex_module

    client = connect(drill_cfg)
    source, alias = new_name(secure_names, "src"), new_name(secure_names, "live")
    client.indices.create(index=source, body={"settings": {"index": {"number_of_shards": SHARDS, "number_of_replicas": 0}}})
    docs = {f"id-{i:04d}": {"title": f"Title {i}", "text": f"document {i} about topic{i % 11} " * (1 + i % 7)} for i in range(DOCS)}
    bulk_load(drill_cfg, ({"_index": source, "_id": k, "_source": v} for k, v in docs.items()))
    saved: list[int] = []  # the count in the state JSON, after every save
    save = reindex_module.ReindexState.save

    def recording_save(state: Any) -> None:
        save(state)
        saved.append(json.loads(Path(state.checkpoint).read_text())["rejections_retried"])

    monkeypatch.setattr(reindex_module.ReindexState, "save", recording_save)
    with recorded_backoff(monkeypatch, drill_cfg.engine.value) as sleeps, other_writers(drill_cfg, new_name(secure_names, "other"), f"{alias}-v1",
                                                                lambda: bool(sleeps)):
        result = cli("reindex", source, "--alias", alias, "--model", tiny_bi_encoder, "--read-batch", READ_BATCH,
                     *connection(drill_cfg), "--run-dir", tmp_path)
    assert result.exit_code == 0, result.output
    rejected = reported(result.output, f"{alias}-v1")
    record_testsuite_property("rejections_retried.reindex", rejected)
    assert rejected > 0 and saved[-1] == rejected
    assert sleeps and sleeps[0] == 1 and set(sleeps) <= {1, 2, 4, 8, 16, 30}
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]
    written = documents(client, alias)
    assert {d: {k: v for k, v in s.items() if k != "passages"} for d, s in written.items()} == docs
    assert all(s["passages"] for s in written.values())


@pytest.mark.slow
def test_a_ray_reindex_retries_rejected_writes_from_every_worker(drill_cfg: BackendConfig, secure_names: list[str],
                                                                 tiny_bi_encoder: Path, ray_cluster: str, tmp_path: Path) -> None:
    """Two Ray workers and three other clients write at once into a node with a write queue of 1: the workers' 429s
    are retried in each worker, counted in the driver's report, and the target ends with exactly the source."""
    from conftest import bulk_load
    from conftest import client_of as connect

    client = connect(drill_cfg)
    source, alias = new_name(secure_names, "src"), new_name(secure_names, "live")
    client.indices.create(index=source, body={"settings": {"index": {"number_of_shards": SHARDS, "number_of_replicas": 0}}})
    docs = {f"id-{i:04d}": {"title": f"Title {i}", "text": f"document {i} about topic{i % 11} " * (1 + i % 7)} for i in range(DOCS)}
    bulk_load(drill_cfg, ({"_index": source, "_id": k, "_source": v} for k, v in docs.items()))
    config = tmp_path / "reindex.toml"
    config.write_text("[reindex]\nray_unit_docs = 15\n")
    done = threading.Event()
    with other_writers(drill_cfg, new_name(secure_names, "other"), f"{alias}-v1", done.is_set):
        result = cli("reindex", source, "--alias", alias, "--model", tiny_bi_encoder, "--read-batch", READ_BATCH,
                     "--config", config, *connection(drill_cfg), "--run-dir", tmp_path, "--ray", ray_cluster,
                     "--ray-workers", 2)
        done.set()
    assert result.exit_code == 0, result.output
    assert reported(result.output, f"{alias}-v1") > 0  # the drill really drilled, the workers' retries counted
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]
    written = documents(client, alias)
    assert {d: {k: v for k, v in s.items() if k != "passages"} for d, s in written.items()} == docs
    assert all(s["passages"] for s in written.values())
