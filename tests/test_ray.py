"""The reindex copy on a real Ray cluster (a head and a second node, started as processes on this machine) against
the real search servers: the same target as a single-process run, a worker SIGKILLed mid-copy, the driver
interrupted and rerun, writes during the copy caught up. And, without Ray: nothing of it is imported."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import client_of, free_port, new_name
from test_opensearch import make_source
from test_reindex import SourceWriter, reindex, target_docs

from genq_search.config import BackendConfig
from genq_search.errors import GenqError


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder: Path):
    from genq_search.encoders import load_encoder

    return load_encoder(str(tiny_bi_encoder), device="cpu")


def same_documents(single: dict[str, dict[str, Any]], distributed: dict[str, dict[str, Any]],
                   min_cosine: float | None = None) -> None:
    """Same ids, same sources, passage vectors equal within 1e-5, or, for an ONNX variant whose output depends on the
    batch it is in and the threads it runs on (int8's dynamic quantisation), with cosine ``min_cosine`` or more."""
    assert sorted(single) == sorted(distributed)
    for doc_id, doc in single.items():
        got, expected = dict(distributed[doc_id]), dict(doc)
        vectors, wanted = got.pop("passages"), expected.pop("passages")
        assert got == expected, doc_id
        assert len(vectors) == len(wanted), doc_id
        for a, b in zip(vectors, wanted, strict=True):
            if min_cosine is None:
                np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-5)
            else:
                x, y = np.asarray(a["vector"]), np.asarray(b["vector"])
                assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) >= min_cosine, doc_id


# -- without Ray -----------------------------------------------------------------------------------------------


def test_without_ray_nothing_of_it_is_imported() -> None:
    code = ("import sys, genq_search.index, genq_search.cli, genq_search.upgrade; "
            "assert 'ray' not in sys.modules and 'genq_search.distributed' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]


def test_missing_ray_and_unreachable_addresses_are_one_line() -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from genq_search.distributed import init_ray\n"
            "try:\n    init_ray('auto')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "GenqError --ray needs Ray, which is not installed: pip install 'genq-search[ray]'"
    pytest.importorskip("ray")
    from genq_search.distributed import init_ray

    with pytest.raises(GenqError, match=r"^cannot reach the Ray cluster at 127\.0\.0\.1:\d+ \(.*\): is it running\?"):
        init_ray(f"127.0.0.1:{free_port()}")
    with socket.socket() as server:  # something listens there, but not Ray: refused at once, not retried for minutes
        server.bind(("127.0.0.1", 0))
        server.listen()
        threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
        with pytest.raises(GenqError, match=r"^127\.0\.0\.1:\d+ is not a Ray cluster"):
            init_ray(f"127.0.0.1:{server.getsockname()[1]}")


def test_units_cover_every_range_once() -> None:
    from genq_search.distributed import plan_units

    after = {"a": {"0": 4}, "b": {"1": 99}}
    upto = {"a": {"0": 30, "1": 9, "2": -1}, "b": {"0": 0, "1": 99}}
    units = plan_units(after, upto, 10)
    assert [(u.index, u.shard, u.lo, u.hi) for u in units] == [
        ("a", "0", 4, 14), ("a", "0", 14, 24), ("a", "0", 24, 30), ("a", "1", -1, 9), ("b", "0", -1, 0)]
    assert [u.number for u in units] == list(range(5)) and plan_units(after, upto, 10) == units


# -- on a Ray cluster ------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.slow
def test_a_ray_reindex_equals_the_single_process_one(cfg: BackendConfig, names: list[str], encoder: Any, ray_cluster: str,
                                                      tmp_path: Path) -> None:
    source, single_alias, ray_alias = new_name(names, "src"), new_name(names, "one"), new_name(names, "ray")
    make_source(cfg, source, 90)
    single = reindex(cfg, source, single_alias, encoder, tmp_path / "one")
    result = reindex(cfg, source, ray_alias, encoder, tmp_path / "ray", ray=ray_cluster, ray_unit_docs=10)
    assert result.verified_ids == 90 and result.state.copied == 90 and result.state.caught_up == 0
    assert result.state.without_text == single.state.without_text
    client = client_of(cfg)
    assert sorted(client.indices.get_alias(name=ray_alias)) == [f"{ray_alias}-v1"]
    same_documents(target_docs(client, single_alias), target_docs(client, ray_alias))
    assert len(client.get(index=ray_alias, id="id-0007")["_source"]["passages"]) > 1  # the long document was split
    assert not list((tmp_path / "ray").glob("reindex-*.json"))


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_killed_mid_copy_loses_nothing(cfg: BackendConfig, names: list[str], encoder: Any, ray_cluster: str,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL the process of the actor that just returned a unit (it is on its next one): the units it held go to
    the other worker and to a replacement; the target ends with exactly the source's documents."""
    from genq_search import distributed

    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 300)
    real, seen, killed = distributed.record, [], []

    def record_and_kill(state: Any, unit: Any, result: dict[str, Any]) -> None:
        real(state, unit, result)
        seen.append(result["pid"])
        if not killed:
            killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)

    monkeypatch.setattr(distributed, "record", record_and_kill)
    caplog.set_level("INFO", logger="genq_search.distributed")
    result = reindex(cfg, source, alias, encoder, tmp_path, read_batch=8, ray=ray_cluster, ray_unit_docs=25)
    after_kill = seen[seen.index(killed[0]) + 1 :]
    assert after_kill and killed[0] not in after_kill  # the others (and a replacement, when it started in time) went on
    assert "died (" in caplog.text and "goes back in the queue" in caplog.text and "1 died)" in caplog.text
    assert result.verified_ids == 300 and result.state.copied == 300  # each unit recorded once, none lost
    client = client_of(cfg)
    assert client.count(index=alias)["count"] == 300
    assert sorted(target_docs(client, alias)) == sorted(docs)
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]


@pytest.fixture
def third_node(ray_cluster: str) -> Iterator[Any]:
    """``start(env)`` joins a third node (one CPU) to the local cluster for one test, its processes run with ``env``
    added, and returns ``leave()``, which takes the node away (its raylet and the workers on it SIGKILLed, as when a
    machine is lost); gone after the test either way."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    ports: list[int] = []

    def leave(port: int) -> None:
        raylets = subprocess.run(["pgrep", "-f", f"raylet.*--node_manager_port={port}"], check=False,
                                 capture_output=True, text=True)
        for pid in raylets.stdout.split():
            subprocess.run(["pkill", "-KILL", "-P", pid], check=False)  # its workers and agents
            os.kill(int(pid), signal.SIGKILL)

    def start(env: dict[str, str] | None = None) -> Any:
        ports.append(port := free_port())
        subprocess.run([ray_cli, "start", "--address", ray_cluster, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                        "--disable-usage-stats", "--object-store-memory", str(200 * 2**20), "--node-manager-port",
                        str(port)], check=True, capture_output=True, timeout=180, env={**os.environ, **(env or {})})
        return lambda: leave(port)

    try:
        yield start
    finally:
        for port in ports:
            leave(port)


@pytest.mark.integration
@pytest.mark.slow
def test_a_cluster_that_shrinks_during_the_copy_loses_nothing(cfg: BackendConfig, names: list[str], encoder: Any,
                                                              ray_cluster: str, third_node: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Three workers on three nodes; one node leaves after the first finished unit: its units go to the two left
    (no room for a replacement), and the target ends with exactly the source's documents."""
    from genq_search import distributed

    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 240)
    real, left = distributed.record, []

    def record_then_shrink(state: Any, unit: Any, result: dict[str, Any]) -> None:
        real(state, unit, result)
        if not left:
            left.append(unit.number)
            leave()

    leave = third_node()
    monkeypatch.setattr(distributed, "record", record_then_shrink)
    caplog.set_level("INFO", logger="genq_search.distributed")
    result = reindex(cfg, source, alias, encoder, tmp_path, read_batch=8, ray=ray_cluster, ray_unit_docs=20, ray_workers=3)
    assert "3 workers on" in caplog.text and "died" in caplog.text and "2 workers left" in caplog.text
    assert result.verified_ids == 240 and result.state.copied == 240
    client = client_of(cfg)
    assert sorted(target_docs(client, alias)) == sorted(docs)
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_node_without_the_runtime_is_left_out_and_named(cfg: BackendConfig, names: list[str], tiny_bundle: Path,
                                                           ray_cluster: str, third_node: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A third node where onnxruntime cannot be imported: its worker cannot load the bundle, the run says which node
    and goes on with the two others; the target is complete."""
    from genq_search.encoders import load_encoder

    broken = tmp_path / "no-onnxruntime"
    (broken / "onnxruntime").mkdir(parents=True)
    (broken / "onnxruntime" / "__init__.py").write_text("raise ImportError('onnxruntime is not installed on this node')\n")
    third_node({"PYTHONPATH": str(broken)})
    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 60)
    caplog.set_level("INFO", logger="genq_search.distributed")
    result = reindex(cfg, source, alias, load_encoder(f"onnx:{tiny_bundle}", device="cpu"), tmp_path / "run",
                     ray=ray_cluster, ray_unit_docs=10, ray_workers=3)
    assert re.search(r"Ray worker on node \S+ cannot start: ", caplog.text) and "onnxruntime is not installed" in caplog.text
    assert "going on with the 2 workers that started" in caplog.text
    assert result.verified_ids == 60 and sorted(target_docs(client_of(cfg), alias)) == sorted(docs)


@pytest.mark.integration
@pytest.mark.slow
def test_the_driver_interrupted_and_rerun_skips_finished_units(cfg: BackendConfig, names: list[str], encoder: Any,
                                                               ray_cluster: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from genq_search import distributed

    source, alias = new_name(names, "src"), new_name(names, "live")
    docs = make_source(cfg, source, 120)
    real, ran = distributed.record, []

    def dies_after_three(state: Any, unit: Any, result: dict[str, Any]) -> None:
        real(state, unit, result)
        ran.append(unit.number)
        if len(ran) == 3:
            raise KeyboardInterrupt  # the driver is killed (its actors go with it)

    monkeypatch.setattr(distributed, "record", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        reindex(cfg, source, alias, encoder, tmp_path, ray=ray_cluster, ray_unit_docs=10)
    client = client_of(cfg)
    assert not client.indices.exists_alias(name=alias)  # nothing switched
    saved = json.loads((tmp_path / f"reindex-{alias}.json").read_text())
    assert sorted(saved["units_done"]) == sorted(ran) and saved["ray_plan"] and saved["cursors"] == {}
    total = len(distributed.plan_units(saved["ray_plan"]["after"], saved["ray_plan"]["upto"], 10))
    assert total > 6

    again: list[int] = []
    monkeypatch.setattr(distributed, "record", lambda state, unit, result: (again.append(unit.number), real(state, unit, result)))
    result = reindex(cfg, source, alias, encoder, tmp_path, ray=ray_cluster, ray_unit_docs=10)
    assert result.state.resumed and len(again) == total - 3 and not set(again) & set(ran)  # finished units not redone
    assert result.verified_ids == 120 and result.state.copied == 120
    assert sorted(target_docs(client, alias)) == sorted(docs)
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]


@pytest.mark.integration
@pytest.mark.slow
def test_writes_during_a_ray_copy_are_caught_up(cfg: BackendConfig, names: list[str], encoder: Any, ray_cluster: str,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer thread adds, updates and deletes source documents while the units run; the target ends equal."""
    from genq_search import distributed

    source, alias = new_name(names, "src"), new_name(names, "live")
    make_source(cfg, source, 200)
    writer = SourceWriter(client_of(cfg), source, 200, limit=200, wait_s=120, pause_s=0.005)

    real_record, real_copy = distributed.record, distributed.copy_on_ray

    def record_slowly(state: Any, unit: Any, result: dict[str, Any]) -> None:
        writer.started.set()
        real_record(state, unit, result)
        time.sleep(0.1)  # let the writer interleave with the units

    def copy_then_stop_writing(*args: Any, **kwargs: Any) -> int:
        try:
            return real_copy(*args, **kwargs)
        finally:
            writer.copied_all.set()  # the writer stops once the units are through; the catch-up takes it from there

    monkeypatch.setattr(distributed, "record", record_slowly)
    monkeypatch.setattr(distributed, "copy_on_ray", copy_then_stop_writing)
    with writer:
        result = reindex(cfg, source, alias, encoder, tmp_path, read_batch=8, ray=ray_cluster, ray_unit_docs=10)
    writer.assert_caught_up(alias, result)


@pytest.mark.integration
@pytest.mark.slow
def test_the_cli_copies_an_onnx_bundle_on_ray_like_one_process(cfg: BackendConfig, names: list[str], tiny_bundle: Path,
                                                               ray_cluster: str, tmp_path: Path) -> None:
    """`reindex --model onnx:<bundle> --ray ADDRESS --ray-workers 2`: every worker loads the variant the driver chose."""
    from typer.testing import CliRunner

    from genq_search.cli import app
    from genq_search.encoders import load_encoder

    source, single_alias, ray_alias = new_name(names, "src"), new_name(names, "one"), new_name(names, "ray")
    make_source(cfg, source, 60)
    encoder = load_encoder(f"onnx:{tiny_bundle}", device="cpu")
    reindex(cfg, source, single_alias, encoder, tmp_path / "one")
    done = CliRunner().invoke(app, ["reindex", source, "--alias", ray_alias, "--model", f"onnx:{tiny_bundle}", "--url", cfg.url,
                                    "--run-dir", str(tmp_path / "ray"), "--read-batch", "16", "--ray", ray_cluster,
                                    "--ray-workers", "2", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    assert "60 ids verified" in done.output and f"alias '{ray_alias}' -> '{ray_alias}-v1'" in done.output
    client = client_of(cfg)
    # one variant on both sides, batched differently: far closer than its parity threshold to PyTorch (0.99 for int8)
    same_documents(target_docs(client, single_alias), target_docs(client, ray_alias), min_cosine=0.9999)
    too_many = CliRunner().invoke(app, ["reindex", source, "--alias", new_name(names, "x"), "--model", f"onnx:{tiny_bundle}",
                                        "--url", cfg.url, "--run-dir", str(tmp_path / "x"), "--ray", ray_cluster,
                                        "--ray-workers", "3"])
    assert too_many.exit_code == 1 and "--ray-workers 3: the Ray cluster at" in too_many.output


# -- generation on a Ray cluster ----------------------------------------------------------------------------------


def generated_files(stage: Path) -> dict[str, str]:
    """What a generate stage wrote: chunks, queries, qrels, dev set; not its manifest (timings) nor settings.json (the
    whole config, the Ray address too)."""
    return {str(p.relative_to(stage)): p.read_text() for p in sorted(stage.rglob("*"))
            if p.is_file() and p.name not in {"manifest.json", "settings.json"}}


def same_generation(single: Path, distributed: Path) -> None:
    """The same files, but dev chunks the Ray run generated ahead of where the dev set was full (the same rows a
    single process writes when it gets there)."""
    one, many = generated_files(single), generated_files(distributed)
    assert set(one) <= set(many) and all(many[name] == text for name, text in one.items())
    assert all(name.startswith("dev/chunks/") for name in set(many) - set(one)), sorted(set(many) - set(one))


@pytest.mark.slow
def test_a_ray_generate_equals_the_single_process_one(tiny_t5: Path, ray_cluster: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The same chunks, queries, qrels and dev set, byte for byte, with a worker SIGKILLed after its first chunk (Ray
    restarts it; the chunk it held is generated again from the same seed)."""
    from test_genq import gen_cfg, small_corpus

    from genq_search import distributed
    from genq_search.generate import run_generate

    corpus = small_corpus(40)
    cfg = gen_cfg(tiny_t5, chunk_size=4, dev_queries=6, dev_max_overlap=1.0)
    single = run_generate(cfg, corpus, tmp_path / "one")
    real_map, killed = distributed.Pool.map, []

    def kill_after_the_first(self: Any, method: str, items: list[Any], *args: Any) -> Any:
        for item, result in real_map(self, method, items, *args):
            if not killed and len(items) == 8:  # the training chunks: the worker holds its next one
                killed.append(result["pid"])
                os.kill(result["pid"], signal.SIGKILL)
            yield item, result

    monkeypatch.setattr(distributed.Pool, "map", kill_after_the_first)
    caplog.set_level("INFO", logger="genq_search.distributed")
    distributed_run = run_generate(cfg.model_copy(update={"ray": ray_cluster}), corpus, tmp_path / "ray")
    assert killed and "2 generator workers on 1 node(s)" in caplog.text and "died" in caplog.text
    assert distributed_run["queries"] == single["queries"] and distributed_run["dev"] == single["dev"]
    same_generation(tmp_path / "one", tmp_path / "ray")
    assert len(list((tmp_path / "ray" / "chunks").glob("chunk-*.jsonl"))) == 8  # 32 training documents, 4 a chunk


@pytest.mark.slow
def test_a_ray_generate_interrupted_and_rerun_generates_only_the_missing_chunks(
        tiny_t5: Path, ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from test_genq import gen_cfg, small_corpus

    from genq_search import data
    from genq_search.generate import run_generate

    corpus = small_corpus(24)
    cfg = gen_cfg(tiny_t5, chunk_size=4, ray=ray_cluster)
    real_write, written = data.write_jsonl, []

    def dies_after_two(path: Path, rows: Any) -> None:
        real_write(path, rows)
        written.append(path.name)
        if len(written) == 2:
            raise KeyboardInterrupt  # the driver is killed (its actors go with it)

    monkeypatch.setattr(data, "write_jsonl", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg, corpus, tmp_path / "ray")
    monkeypatch.setattr(data, "write_jsonl", real_write)
    assert sorted(p.name for p in (tmp_path / "ray" / "chunks").glob("*.jsonl")) == sorted(written)
    assert not (tmp_path / "ray" / "gen-queries.jsonl").exists()
    caplog.set_level("INFO", logger="genq_search.distributed")
    run_generate(cfg, corpus, tmp_path / "ray")
    assert "4 of 6 chunks to generate" in caplog.text  # the two written before the interruption are not redone
    run_generate(cfg.model_copy(update={"ray": None}), corpus, tmp_path / "one")
    same_generation(tmp_path / "one", tmp_path / "ray")


@pytest.mark.slow
def test_a_generator_a_worker_cannot_load_is_one_line_naming_its_node(ray_cluster: str, tmp_path: Path) -> None:
    from test_genq import gen_cfg, small_corpus

    from genq_search.generate import run_generate

    with pytest.raises(GenqError, match=r"^Ray worker on node \S+ cannot load the query generator: .*"
                                        r"no-such-generator.*\(no Ray worker could start\)$"):
        run_generate(gen_cfg(tmp_path / "no-such-generator", ray=ray_cluster), small_corpus(8), tmp_path / "ray")
    assert not list((tmp_path / "ray").glob("**/chunk-*.jsonl"))


@pytest.mark.slow
def test_generator_workers_hold_generate_threads_cpus_on_one_node(tiny_t5: Path, ray_cluster: str, tmp_path: Path) -> None:
    """`generate.threads = 2` on a cluster of one-CPU nodes: no node can hold a worker, one line (not a wait for ever)."""
    from test_genq import gen_cfg, small_corpus

    from genq_search.generate import run_generate

    with pytest.raises(GenqError, match=r"^the Ray cluster at \S+ has no node with 2 CPUs for a worker$"):
        run_generate(gen_cfg(tiny_t5, chunk_size=4, ray=ray_cluster, threads=2), small_corpus(8), tmp_path / "a")


def test_the_generate_command_takes_ray(tmp_path: Path) -> None:
    """`generate --ray ADDRESS` reaches the Ray cluster (here: nothing listens, one line, exit 1)."""
    pytest.importorskip("ray")
    from conftest import SAMPLE
    from typer.testing import CliRunner

    from genq_search.cli import app

    port = free_port()
    done = CliRunner().invoke(app, ["generate", "--corpus", str(SAMPLE), "--run-dir", str(tmp_path), "--generator",
                                    "unused", "--dev-queries", "0", "--ray", f"127.0.0.1:{port}", "--ray-workers", "2"])
    assert done.exit_code == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.output


# -- corpus encoding on a Ray cluster -----------------------------------------------------------------------------


@pytest.mark.slow
def test_corpus_encoding_on_ray_equals_one_process_and_resumes_by_part(encoder: Any, ray_cluster: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The embedding cache written on Ray holds one process's vectors (1e-5); a driver interrupted after two parts
    encodes only the others when rerun, and the parts are gone once the cache file is whole."""
    from genq_search import data, distributed
    from genq_search.encoders import encode_passages_cached

    texts = [f"passage {i} about topic{i % 7} " * (1 + i % 5) for i in range(60)]
    single = encode_passages_cached(encoder, texts, None, 16)
    monkeypatch.setattr(distributed, "PART_TEXTS", 10)
    real_write, parts = data.atomic_write, []

    def dies_after_two(path: Path, mode: str = "w") -> Any:
        if path.suffix == ".npy" and path.parent.suffix == ".parts":
            parts.append(path.name)
            if len(parts) == 3:
                raise KeyboardInterrupt  # the driver is killed
        return real_write(path, mode)

    monkeypatch.setattr(data, "atomic_write", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        encode_passages_cached(encoder, texts, tmp_path, 16, ray_cluster, 2)
    monkeypatch.setattr(data, "atomic_write", real_write)
    [parts_dir] = tmp_path.glob("*.parts")
    assert len(list(parts_dir.glob("part-*.npy"))) == 2 and not list(tmp_path.glob("*.npy"))
    caplog.set_level("INFO", logger="genq_search.distributed")
    vectors = encode_passages_cached(encoder, texts, tmp_path, 16, ray_cluster, 2)
    assert "4 of 6 parts to encode" in caplog.text
    np.testing.assert_allclose(vectors, single, atol=1e-5)
    assert not parts_dir.exists() and len(list(tmp_path.glob("*.npy"))) == 1


@pytest.mark.slow
def test_the_index_command_encodes_on_ray(tiny_bi_encoder: Path, ray_cluster: str, tmp_path: Path) -> None:
    """`index --ray ADDRESS` (embedded backend): the corpus is encoded by Ray workers, the index is searchable."""
    from conftest import SAMPLE
    from typer.testing import CliRunner

    from genq_search.cli import app

    done = CliRunner().invoke(app, ["index", "--corpus", str(SAMPLE), "--model", str(tiny_bi_encoder), "--run-dir",
                                    str(tmp_path), "--backend", "embedded", "--ray", ray_cluster, "--device", "cpu"])
    assert done.exit_code == 0, done.output
    assert "encoder workers on" in done.output and list((tmp_path / "embeddings").glob("*.npy"))
