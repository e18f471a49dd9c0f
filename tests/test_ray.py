"""The reindex copy on a real Ray cluster (a head and a second node, started as processes on this machine) against
the real search servers: the same target as a single-process run, a worker SIGKILLed mid-copy, the driver
interrupted and rerun, writes during the copy caught up. And, without Ray: nothing of it is imported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import client_of, new_name
from test_opensearch import make_source
from test_reindex import SourceWriter, reindex, target_docs

from genq_search.config import BackendConfig
from genq_search.errors import GenqError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local two-node Ray cluster (``ray start --head`` and ``ray start --address``, one CPU each), torn down with
    ``ray stop --force``; its address."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'genq-search[ray]'")
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not on PATH (pip install 'genq-search[ray]')")
    temp = tempfile.mkdtemp(prefix="genq-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    # no token authentication on this throw-away cluster (Ray >= 2.5x turns it on where ~/.ray/auth_token exists, e.g.
    # after a `ray.init()` on this machine): the nodes and the test process (the driver) agree on that
    auth = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    before = {k: os.environ.get(k) for k in auth}

    def restore() -> None:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    os.environ.update(auth)
    env = dict(os.environ)
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", str(200 * 2**20)]
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", address.split(":")[1], "--node-ip-address", "127.0.0.1",
                        "--temp-dir", temp, "--include-dashboard", "false", *common],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([ray_cli, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
                       check=True, env=env, capture_output=True, timeout=180)
    except subprocess.CalledProcessError as exc:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, env=env)
        shutil.rmtree(temp, ignore_errors=True)
        restore()
        pytest.fail(f"could not start the local Ray cluster: {exc.stderr.decode()[-1500:]}")
    try:
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        restore()


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder: Path):
    from genq_search.encoders import load_encoder

    return load_encoder(str(tiny_bi_encoder), device="cpu")


def same_documents(single: dict[str, dict[str, Any]], distributed: dict[str, dict[str, Any]]) -> None:
    """Same ids, same sources, passage vectors equal within 1e-5."""
    assert sorted(single) == sorted(distributed)
    for doc_id, doc in single.items():
        got, expected = dict(distributed[doc_id]), dict(doc)
        vectors, wanted = got.pop("passages"), expected.pop("passages")
        assert got == expected, doc_id
        assert len(vectors) == len(wanted), doc_id
        for a, b in zip(vectors, wanted, strict=True):
            np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-5)


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
    """SIGKILL the process of the actor that just returned a unit (it is on its next one): Ray restarts it and the
    unit it held is copied again; the target ends with exactly the source's documents."""
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
    caplog.set_level("WARNING", logger="genq_search.distributed")
    result = reindex(cfg, source, alias, encoder, tmp_path, read_batch=8, ray=ray_cluster, ray_unit_docs=25)
    after_kill = seen[seen.index(killed[0]) + 1 :]
    assert killed[0] not in after_kill and len(set(seen)) == 3  # the two workers, then the killed one's restart
    assert "was restarted" in caplog.text
    assert result.verified_ids == 300 and result.state.copied == 300  # each unit recorded once, none lost
    client = client_of(cfg)
    assert client.count(index=alias)["count"] == 300
    assert sorted(target_docs(client, alias)) == sorted(docs)
    assert sorted(client.indices.get_alias(name=alias)) == [f"{alias}-v1"]


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
    reindex(cfg, source, single_alias, load_encoder(f"onnx:{tiny_bundle}", device="cpu"), tmp_path / "one")
    done = CliRunner().invoke(app, ["reindex", source, "--alias", ray_alias, "--model", f"onnx:{tiny_bundle}", "--url", cfg.url,
                                    "--run-dir", str(tmp_path / "ray"), "--read-batch", "16", "--ray", ray_cluster,
                                    "--ray-workers", "2", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    assert "60 ids verified" in done.output and f"alias '{ray_alias}' -> '{ray_alias}-v1'" in done.output
    client = client_of(cfg)
    same_documents(target_docs(client, single_alias), target_docs(client, ray_alias))
    too_many = CliRunner().invoke(app, ["reindex", source, "--alias", new_name(names, "x"), "--model", f"onnx:{tiny_bundle}",
                                        "--url", cfg.url, "--run-dir", str(tmp_path / "x"), "--ray", ray_cluster,
                                        "--ray-workers", "3"])
    assert too_many.exit_code == 1 and "--ray-workers 3: the Ray cluster at" in too_many.output
