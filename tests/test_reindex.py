"""Reindex and live-index sources against a real OpenSearch: nothing lost, failures retried, crashes resumed,
concurrent writes caught up, write blocks released, user indices never replaced, vectors never mixed."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
from conftest import SAMPLE, new_name
from test_opensearch import make_source

from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.errors import GenqError

pytestmark = pytest.mark.integration


def reindex(cfg: BackendConfig, source: str, alias: str | None, encoder: Any, run_dir: Path, read_batch: int = 32, **changes: Any):
    from genq_search.index import run_reindex

    return run_reindex(cfg, CorpusConfig(read_batch=read_batch), ReindexConfig(alias=alias, **changes), source, encoder, run_dir)


def target_docs(client: Any, index: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=index)
    hits = client.search(index=index, body={"size": 10_000, "query": {"match_all": {}}})["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


class SourceWriter:
    """A thread that adds, updates and deletes documents of a live source (ids ``id-0000`` .. of ``documents``) while
    a reindex copies it: it starts once ``started`` is set (or after ``wait_s``) and stops after ``limit`` writes or
    once ``copied_all`` is set, then refreshes the source. Use it as a context manager around the reindex."""

    def __init__(self, client: Any, source: str, documents: int, limit: int, wait_s: float, pause_s: float = 0.0):
        self.client, self.source, self.documents, self.limit, self.wait_s, self.pause_s = client, source, documents, limit, wait_s, pause_s
        self.writes = {"added": 0, "updated": 0, "deleted": 0}
        self.started, self.copied_all = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._write)

    def _write(self) -> None:
        rng = random.Random(5)
        self.started.wait(self.wait_s)
        n = 0
        while not self.copied_all.is_set() and n < self.limit:
            kind = ("added", "updated", "deleted")[n % 3]
            if kind == "added":
                self.client.index(index=self.source, id=f"new-{n}", body={"text": f"written during the reindex {n}", "year": 1999})
            elif kind == "updated":
                self.client.update(index=self.source, id=f"id-{rng.randrange(self.documents):04d}",
                                   body={"doc": {"text": f"updated text {n}"}}, ignore=[404])
            else:
                self.client.delete(index=self.source, id=f"id-{rng.randrange(self.documents):04d}", ignore=[404])
            self.writes[kind] += 1
            n += 1
            time.sleep(self.pause_s)
        self.client.indices.refresh(index=self.source)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.copied_all.set()
        self.thread.join()

    def assert_caught_up(self, alias: str, result: Any) -> None:
        """Every kind of write happened, and the target under ``alias`` equals the source, passages aside."""
        source_docs, copied = target_docs(self.client, self.source), target_docs(self.client, alias)
        assert self.writes["added"] and self.writes["updated"] and self.writes["deleted"]
        assert result.changed_after_switch == 0 and set(copied) == set(source_docs)
        for doc_id, doc in source_docs.items():
            got = dict(copied[doc_id])
            got.pop("passages")
            assert got == doc, doc_id
        assert result.state.caught_up > 0 and result.state.deleted > 0


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder: Path):
    from genq_search.encoders import load_encoder

    return load_encoder(str(tiny_bi_encoder), device="cpu")


def test_reindex_copies_everything_and_switches_the_alias(cfg: BackendConfig, names: list[str], encoder: Any, tmp_path: Path) -> None:
    from conftest import client_of as connect

    from genq_search.index import ReindexState, run_reindex

    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 120)
    client = connect(cfg)
    client.indices.put_settings(index=source, body={"index": {"refresh_interval": "7s"}})
    plan = run_reindex(cfg, CorpusConfig(), ReindexConfig(alias=alias), source, encoder, tmp_path, dry_run=True)
    assert isinstance(plan, ReindexState) and plan.target == f"{alias}-v1" and plan.documents == 120
    assert not client.indices.exists(index=plan.target)  # a dry run changes nothing
    result = reindex(cfg, source, alias, encoder, tmp_path)
    assert result.written == 120 and result.verified_ids == 120
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]
    got = target_docs(client, alias)
    for doc_id, doc in docs.items():
        vectors = got[doc_id].pop("passages")
        assert got[doc_id] == doc
        assert vectors and all(len(v["vector"]) == encoder.dim for v in vectors)
    assert len(client.get(index=alias, id="id-0007")["_source"]["passages"]) > 1  # the long doc was split
    settings = client.indices.get_settings(index=f"{alias}-v1")[f"{alias}-v1"]["settings"]["index"]
    assert settings["refresh_interval"] == "7s" and settings["number_of_replicas"] == "0"  # the source's, restored
    assert settings["number_of_shards"] == "2"
    mapping = client.indices.get_mapping(index=f"{alias}-v1")[f"{alias}-v1"]["mappings"]
    assert mapping["properties"]["title"]["analyzer"] == "folded" and mapping["_meta"]["genq_search"]["source"] == source
    assert "passages" not in client.get(index=source, id="id-0001")["_source"]  # the source is only read
    again = reindex(cfg, alias, None, encoder, tmp_path, read_batch=64)  # the next version, from the alias
    assert again.state.target == f"{alias}-v2" and again.previous == [f"{alias}-v1"]
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v2"]
    assert not list(tmp_path.glob("reindex-*.json"))  # the state file is gone after success


@pytest.mark.parametrize("buckets", [1 << 14, 4])
def test_ids_are_compared_streamed_exactly_with_a_seeded_sample(cfg: BackendConfig, names: list[str], buckets: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing and extra ids found exactly (with 16K buckets, and with 4, where every bucket differs and is read
    again); the sample is a seeded choice of source ids: the same for a seed, another for another seed."""
    from conftest import bulk_load

    from genq_search import index
    from genq_search.engines import connect

    monkeypatch.setattr(index, "ID_BUCKETS", buckets)
    source, target = new_name(names, "src"), new_name(names, "dst")
    docs = make_source(cfg, source, 150)
    kept = sorted(docs)[5:]
    bulk_load(cfg, [{"_index": target, "_id": i, "_source": {"text": "x"}} for i in [*kept, "only-in-target", "id-9999"]])
    cluster = connect(cfg)
    cluster.refresh([source, target])
    check = index.compare_ids(cluster, [source], target, sample=20, seed=7)
    assert check.missing == sorted(docs)[:5] and check.extra == ["id-9999", "only-in-target"] and check.count == 150
    assert len(check.sample) == 20 and set(check.sample) <= set(docs)
    assert index.compare_ids(cluster, [source], target, sample=20, seed=7).sample == check.sample
    assert index.compare_ids(cluster, [source], target, sample=20, seed=8).sample != check.sample
    assert index.compare_ids(cluster, [source], source, sample=500).sample == sorted(docs)
    same = index.compare_ids(cluster, [source], source)
    assert (same.missing, same.extra, same.count, same.sample) == ([], [], 150, [])


def test_alias_over_several_indices_is_merged_and_conflicts_refused(cfg: BackendConfig, names: list[str], encoder: Any,
                                                                   tmp_path: Path) -> None:
    from conftest import client_of as connect

    client = connect(cfg)
    first, second, alias, live = (new_name(names, p) for p in ("a", "b", "all", "live"))
    for index, extra in [(first, {"year": {"type": "integer"}}), (second, {"tags": {"type": "keyword"}})]:
        client.indices.create(index=index, body={"settings": {"number_of_replicas": 0},
                                                 "mappings": {"properties": {"text": {"type": "text"}, **extra}}})
        client.index(index=index, id=f"{index}-1", body={"text": f"hello from {index}"}, refresh=True)
    client.indices.update_aliases(body={"actions": [{"add": {"index": first, "alias": alias}}, {"add": {"index": second, "alias": alias}}]})
    result = reindex(cfg, alias, live, encoder, tmp_path)
    props = client.indices.get_mapping(index=result.state.target)[result.state.target]["mappings"]["properties"]
    assert {"year", "tags", "text", "passages"} <= set(props) and result.verified_ids == 2
    clash = new_name(names, "c")
    client.indices.create(index=clash, body={"settings": {"number_of_replicas": 0}, "mappings": {"properties": {"year": {"type": "keyword"}}}})
    client.indices.update_aliases(body={"actions": [{"add": {"index": clash, "alias": alias}}]})
    with pytest.raises(GenqError, match="mapping conflict between the indices behind the alias: field 'year'"):
        reindex(cfg, alias, new_name(names, "live2"), encoder, tmp_path)


class FailingEncoder:
    """The tiny encoder, but vectors of documents whose text contains ``poison`` get the wrong dimension, so
    OpenSearch rejects exactly those documents."""

    def __init__(self, inner: Any, poison: str):
        self.inner, self.poison = inner, poison
        self.name, self.dim, self.max_seq_length, self.tokenizer = inner.name, inner.dim, inner.max_seq_length, inner.tokenizer

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> list[np.ndarray]:
        vectors = self.inner.encode_passages(texts, batch_size, progress)
        return [v[:3] if self.poison in t else v for v, t in zip(vectors, texts, strict=True)]

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.inner.encode_queries(texts, batch_size, progress)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()


def test_failed_documents_are_retried_exactly_by_the_next_run(cfg: BackendConfig, names: list[str], encoder: Any, tmp_path: Path) -> None:
    from conftest import client_of as connect

    source, alias = new_name(names, "src"), new_name(names, "live")
    make_source(cfg, source, 60)
    client = connect(cfg)
    for doc_id in ("id-0003", "id-0041"):
        client.update(index=source, id=doc_id, body={"doc": {"text": "poison pill"}}, refresh=True)
    with pytest.raises(GenqError, match="2 documents failed to index .* rerun to retry exactly those"):
        reindex(cfg, source, alias, FailingEncoder(encoder, "poison"), tmp_path)
    state = json.loads((tmp_path / f"reindex-{alias}.json").read_text())
    assert sorted(state["failed"]) == ["id-0003", "id-0041"]
    assert not client.indices.exists_alias(name=alias)  # nothing switched
    result = reindex(cfg, source, alias, encoder, tmp_path)
    assert result.written == 2  # exactly the two that failed
    assert result.verified_ids == 60 and sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]


def test_a_crash_right_after_target_creation_resumes(cfg: BackendConfig, names: list[str], encoder: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import client_of as connect

    from genq_search import index as reindex_module

    source, alias = new_name(names, "src"), new_name(names, "live")
    make_source(cfg, source, 40)
    real = reindex_module.create_target

    def crash_after_creating(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise KeyboardInterrupt  # the process dies right after the target exists

    monkeypatch.setattr(reindex_module, "create_target", crash_after_creating)
    with pytest.raises(KeyboardInterrupt):
        reindex(cfg, source, alias, encoder, tmp_path)
    monkeypatch.setattr(reindex_module, "create_target", real)
    client = connect(cfg)
    assert client.indices.exists(index=f"{alias}-v1") and client.count(index=f"{alias}-v1")["count"] == 0
    result = reindex(cfg, source, alias, encoder, tmp_path)
    assert result.state.target == f"{alias}-v1" and result.state.resumed and result.verified_ids == 40


def test_reindex_killed_half_way_resumes_without_loss_or_duplicates(cfg: BackendConfig, names: list[str], tiny_bi_encoder: Path,
                                                                   tmp_path: Path) -> None:
    from conftest import client_of as connect

    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 1500)
    command = [sys.executable, "-m", "genq_search.cli", "reindex", source, "--alias", alias, "--model", str(tiny_bi_encoder),
               "--url", cfg.url, "--run-dir", str(tmp_path), "--read-batch", "50", "--device", "cpu"]
    checkpoint = tmp_path / f"reindex-{alias}.json"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint.is_file() and json.loads(checkpoint.read_text()).get("copied", 0) >= 300:
            break
        if proc.poll() is not None:
            pytest.fail(f"reindex ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(checkpoint.read_text())
    client = connect(cfg)
    assert not client.indices.exists_alias(name=alias)  # nothing switched half-way
    assert 300 <= state["copied"] < 1500
    resumed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "documents already copied" in resumed.stdout
    assert sorted(target_docs(client, alias)) == sorted(docs)


def test_writes_during_the_reindex_are_caught_up(cfg: BackendConfig, names: list[str], encoder: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer thread adds, updates and deletes source documents while the copy runs; the target ends equal."""
    from conftest import client_of as connect

    from genq_search import index as reindex_module

    source, alias = new_name(names, "src"), new_name(names, "live")
    make_source(cfg, source, 400)
    writer = SourceWriter(connect(cfg), source, 400, limit=300, wait_s=30)

    real_run = reindex_module.Copier.run

    def run_and_signal(self: Any, batches: Any, progress: Any, counter: str) -> int:
        def signalling() -> Any:
            for item in batches:
                writer.started.set()
                yield item
                time.sleep(0.02)  # let the writer interleave with the copy
        written = real_run(self, signalling(), progress, counter)
        if counter == "copied":
            writer.copied_all.set()  # the writer stops once the first pass is through; catch-up takes it from there
        return written

    monkeypatch.setattr(reindex_module.Copier, "run", run_and_signal)
    with writer:
        result = reindex(cfg, source, alias, encoder, tmp_path, read_batch=16)
    writer.assert_caught_up(alias, result)


def test_freeze_writes_block_is_released_after_an_error(cfg: BackendConfig, names: list[str], encoder: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import client_of as connect

    from genq_search import index as reindex_module

    source, alias = new_name(names, "src"), new_name(names, "live")
    make_source(cfg, source, 30)
    client = connect(cfg)
    seen: list[Any] = []

    def failing_verify(*args: Any, **kwargs: Any) -> int:
        seen.append(client.indices.get_settings(index=source)[source]["settings"]["index"].get("blocks", {}).get("write"))
        raise GenqError("injected verification failure")

    monkeypatch.setattr(reindex_module, "verify", failing_verify)
    with pytest.raises(GenqError, match="injected"):
        reindex(cfg, source, alias, encoder, tmp_path, freeze_writes=True)
    assert seen == ["true"]  # writes were blocked during verification
    assert "blocks" not in client.indices.get_settings(index=source)[source]["settings"]["index"]  # and released
    client.index(index=source, id="after", body={"text": "writable again"}, refresh=True)
    assert not client.indices.exists_alias(name=alias)


def test_overwrite_never_deletes_a_user_index(cfg: BackendConfig, names: list[str], beir_dir: Path) -> None:
    from conftest import client_of as connect

    from genq_search.data import load_collection
    from genq_search.engines import cluster_backend

    index = new_name(names, "user")
    client = connect(cfg)
    client.indices.create(index=index, body={"settings": {"number_of_replicas": 0}})
    client.index(index=index, id="precious", body={"text": "keep me"}, refresh=True)
    backend = cluster_backend(cfg.model_copy(update={"overwrite": True}), index)
    with pytest.raises(GenqError, match="was not created by genq-search: it is never deleted"):
        backend.index(load_collection(beir_dir).corpus, [], None)
    with pytest.raises(GenqError, match="was not created by genq-search"):
        backend.reusable(6, None, {})
    assert client.get(index=index, id="precious")["_source"] == {"text": "keep me"}


def test_compare_two_models_on_one_index_scores_each_with_its_own_vectors(cfg: BackendConfig, names: list[str], tiny_bi_encoder: Path,
                                                                          tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genq_search.cli import app

    index = new_name(names)
    base = ["compare", "--url", cfg.url, "--index", index, "--corpus", str(SAMPLE), "--mode", "dense"]
    variant = tmp_path / "variant"
    _perturbed_copy(tiny_bi_encoder, variant)
    args = ["--model", f"a={tiny_bi_encoder}", "--model", f"b={variant}"]
    remote = CliRunner().invoke(app, [*base, "--backend", cfg.engine.value, "--run-dir", str(tmp_path / "os"), *args])
    assert remote.exit_code == 0, remote.output
    local = CliRunner().invoke(app, [*base, "--backend", "embedded", "--run-dir", str(tmp_path / "emb"), *args])
    assert local.exit_code == 0, local.output
    read = lambda d: {r["name"]: r["metrics"]["ndcg@10"] for r in json.loads((tmp_path / d / "compare" / "metrics.json").read_text())["runs"]}
    got, expected = read("os"), read("emb")
    runs = {r["name"]: r["metrics"] for r in json.loads((tmp_path / "os" / "compare" / "metrics.json").read_text())["runs"]}
    assert runs["dense-a"] != runs["dense-b"]  # two near-random tiny models can tie on one metric, not on all
    assert got == pytest.approx(expected, abs=0.02)  # each model searched its own vectors (HNSW is approximate)
    again = CliRunner().invoke(app, ["compare", "--url", cfg.url, "--index", f"{index}-a", "--corpus", str(SAMPLE), "--mode", "dense",
                                     "--backend", cfg.engine.value, "--run-dir", str(tmp_path / "x"), "--model", f"c={variant}"])
    assert again.exit_code == 1 and "was written with other" in again.output


def _perturbed_copy(model_dir: Path, out: Path) -> None:
    """The tiny bi-encoder with its weights nudged: another model of the same shape."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    model.save(str(out))


def test_stages_read_a_live_index_and_notice_when_it_changes(cfg: BackendConfig, names: list[str], tmp_path: Path) -> None:
    from conftest import client_of as connect

    from genq_search.config import RunConfig
    from genq_search.data import corpus_fingerprint, iter_documents
    from genq_search.pipeline import load_run_collection

    index = new_name(names, "docs")
    client = connect(cfg)
    client.indices.create(index=index, body={"settings": {"number_of_shards": 3, "number_of_replicas": 0}})
    sample = list(iter_documents(SAMPLE / "corpus.jsonl"))[:50]
    for doc in sample:
        client.index(index=index, id=doc.id, body={"meta": {"headline": doc.title}, "body": [doc.text], "n": 1})
    client.index(index=index, id="title-only", body={"meta": {"headline": "no text"}})
    client.index(index=index, id="empty", body={"meta": {}, "n": 3})
    client.indices.refresh(index=index)
    run = RunConfig.load(None, {"corpus": {"path": f"opensearch://{cfg.url.split('://')[1]}/{index}", "title_field": "meta.headline",
                                           "text_fields": "body", "read_batch": 7}})
    assert run.corpus.source_index == index and run.backend.url == cfg.url
    collection = load_run_collection(run, with_qrels=False)
    # a title-only document is kept (retrieved by its title, as the reindex encodes it); 'empty' is counted and left out
    assert collection.corpus == {d.id: {"title": d.title, "text": d.text} for d in sample} | {"title-only": {"title": "no text", "text": ""}}
    before = corpus_fingerprint(collection.corpus)
    assert corpus_fingerprint(load_run_collection(run, with_qrels=False).corpus) == before  # unchanged index, same identity
    client.update(index=index, id=sample[0].id, body={"doc": {"n": 2}}, refresh=True)
    assert corpus_fingerprint(load_run_collection(run, with_qrels=False).corpus) != before  # any write changes it
    wrong = run.model_copy(update={"corpus": run.corpus.model_copy(update={"text_fields": ["nope"]})})
    with pytest.raises(GenqError, match="none of its 52 documents has text in nope"):
        load_run_collection(wrong, with_qrels=False)
    missing = run.model_copy(update={"corpus": run.corpus.model_copy(update={"source_index": "genq-test-no-such-index"})})
    with pytest.raises(GenqError, match="index or alias 'genq-test-no-such-index' does not exist"):
        load_run_collection(missing, with_qrels=False)


def test_a_run_killed_while_the_source_is_frozen_has_the_next_run_release_it(cfg: BackendConfig, names: list[str], encoder: Any,
                                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import client_of as connect

    from genq_search.engines.base import Cluster

    source, alias = new_name(names, "src"), new_name(names, "live")
    make_source(cfg, source, 30)
    client = connect(cfg)
    real = Cluster.set_write_block

    def dies_holding_the_block(self: Cluster, indices: list[str], blocked: bool | None) -> None:
        if not blocked:
            raise KeyboardInterrupt  # killed before the release (SIGKILL runs no finally)
        real(self, indices, blocked)

    monkeypatch.setattr(Cluster, "set_write_block", dies_holding_the_block)
    with pytest.raises(KeyboardInterrupt):
        reindex(cfg, source, alias, encoder, tmp_path, freeze_writes=True)
    monkeypatch.setattr(Cluster, "set_write_block", real)
    assert client.indices.get_settings(index=source)[source]["settings"]["index"]["blocks"]["write"] == "true"
    assert json.loads((tmp_path / f"reindex-{alias}.json").read_text())["frozen"] == {source: None}
    result = reindex(cfg, source, alias, encoder, tmp_path)  # the next run (here without --freeze-writes) releases it first
    assert result.state.resumed and result.verified_ids == 30
    assert "blocks" not in client.indices.get_settings(index=source)[source]["settings"]["index"]
    client.index(index=source, id="after", body={"text": "writable again"}, refresh=True)


def test_labels_of_documents_deleted_from_a_live_index_are_left_out(cfg: BackendConfig, names: list[str], tmp_path: Path) -> None:
    from conftest import client_of as connect

    from genq_search.config import RunConfig
    from genq_search.pipeline import load_run_collection

    index = new_name(names, "labels")
    client = connect(cfg)
    for doc_id in ("a", "b"):
        client.index(index=index, id=doc_id, body={"title": doc_id, "text": f"text of {doc_id}"})
    client.indices.refresh(index=index)
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "gone"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tdeleted\t1\nq2\tdeleted\t1\n")
    run = RunConfig.load(None, {"corpus": {"path": f"opensearch://{cfg.url.split('://')[1]}/{index}",
                                           "queries": tmp_path / "queries.jsonl", "qrels": tmp_path / "qrels.tsv"}})
    collection = load_run_collection(run)
    assert collection.qrels == {"q1": {"a": 1}} and set(collection.queries) == {"q1"}  # judged a deleted document: dropped
