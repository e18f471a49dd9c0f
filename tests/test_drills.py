"""The crash drills of ``bench/drills.py`` at CI size, on real processes: ``genq-search reindex`` SIGKILLed at seeded
random points and resumed (5 kills on 500 documents; then 3 kills while a writer adds, updates and deletes source
documents), and the adapt stages ``generate`` / ``mine`` / ``label`` / ``train`` killed and rerun. Nothing lost, the
target equal to the source, one alias move, the source untouched and not left write-blocked, artifacts identical to
an uninterrupted run, no temp or half-written file. ``bench/reliability.py`` runs the full-size drills."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from genq_search.config import BackendConfig

pytestmark = pytest.mark.slow


def _load_drills() -> Any:
    spec = importlib.util.spec_from_file_location("genq_bench_drills", ROOT / "bench" / "drills.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


drills = _load_drills()


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The drills' zygote: genq_search, torch and sentence-transformers imported once (while the tiny models are
    built), one forked CLI process per run."""
    with drills.ForkLauncher(log=tmp_path_factory.mktemp("zygote") / "zygote.log") as launcher:
        yield launcher


def assert_reindex_drill_passed(result: dict[str, Any]) -> None:
    target = result["target"]
    assert result["documents_lost"] == 0 and target["missing"] == target["extra"] == target["differing"] == 0, target
    assert target["with_text_without_vectors"] == target["vectors_without_text"] == target["vectors_of_wrong_dimension"] == 0
    assert target["compared_with_reference"] > 0 and target["max_vector_difference_to_reference"] < 1e-4
    assert result["alias_moved_once"], (result["alias_states"], result["target_versions"])
    assert not result["source_write_blocked_after"]  # a kill while the source was frozen: released by the next run
    assert result["state_file_half_written"] == 0 and not result["state_file_left"] and result["temp_files"] == []
    assert result["passed"]


@pytest.mark.integration
def test_reindex_killed_at_random_points_loses_nothing(launch: Any, cfg: BackendConfig, tiny_bi_encoder: Path,
                                                      tmp_path: Path) -> None:
    result = drills.reindex_drill(cfg.url, launch, tiny_bi_encoder, tmp_path, docs=500, kills=5, seed=11)
    assert result["kills"] >= 3, result["kill_log"]  # a kill planned in the short tail may come after the end
    assert result["source_unchanged"]
    assert_reindex_drill_passed(result)


@pytest.mark.integration
def test_reindex_killed_while_the_source_changes_catches_up_every_write(launch: Any, cfg: BackendConfig,
                                                                        tiny_bi_encoder: Path, tmp_path: Path) -> None:
    result = drills.reindex_drill(cfg.url, launch, tiny_bi_encoder, tmp_path, docs=800, kills=3, seed=12, writes=60)
    assert result["kills"] >= 2, result["kill_log"]
    assert result["writes_total"] == 60 and result["writes_lost"] == 0 and not result.get("writer_unfinished_at_switch")
    assert_reindex_drill_passed(result)


def test_adapt_stages_killed_at_random_points_resume_to_identical_artifacts(launch: Any, tiny_t5: Path,
                                                                           tiny_bi_encoder: Path, tiny_cross_encoder: Path,
                                                                           tmp_path: Path) -> None:
    models = {"t5": tiny_t5, "bi": tiny_bi_encoder, "cross": tiny_cross_encoder}
    result = drills.adapt_drill(launch, models, tmp_path, kills_per_stage=2, seed=13)
    stages = result["stages"]
    assert result["kills"] >= 4, {s: v["kill_log"] for s, v in stages.items()}
    for stage in ("generate", "mine", "label"):  # byte-identical, as the README promises
        assert stages[stage]["identical"] and stages[stage]["files_compared"] > 3, stages[stage]
    assert stages["train"]["steps"][0] == stages["train"]["steps"][1]
    assert stages["train"]["max_weight_difference"] < 1e-4
    assert all(s["same_settings_hash"] for s in stages.values())
    assert result["half_written"] == 0 and result["unparseable_at_end"] == []
    assert result["temp_files"] == [] and result["incomplete_checkpoints"] == []


def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """What the drills found: a write killed between its temp file and the rename left the temp file forever."""
    from genq_search.data import write_json

    stale = [tmp_path / ".state.json.999999999.abc123.tmp", tmp_path / ".state.json.q1w2e3r4.tmp"]  # no such pid; older naming
    alive = tmp_path / f".state.json.{os.getpid()}.zz9.tmp"  # a writer still at work (this process)
    other = tmp_path / ".other.json.999999999.abc.tmp"  # another file's
    for path in [*stale, alive, other]:
        path.write_text("{half")
    write_json(tmp_path / "state.json", {"ok": True})
    assert not any(p.exists() for p in stale) and alive.exists() and other.exists()
    assert drills.temp_files(tmp_path) == sorted(p.name for p in (alive, other))


def test_incomplete_checkpoints_are_dropped_before_resuming(tmp_path: Path) -> None:
    """What the drills found: a train run killed while saving a checkpoint left one without trainer_state.json, and
    every rerun failed resuming from it."""
    from genq_search.train import drop_incomplete_checkpoints

    for step, files in [(2, ["trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors"]),
                        (4, ["optimizer.pt", "scheduler.pt", "model.safetensors"]),  # killed before trainer_state.json
                        (6, ["trainer_state.json", "model.safetensors"])]:  # half-deleted by rotation
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    assert drills.incomplete_checkpoints(tmp_path) == ["checkpoint-4", "checkpoint-6"]
    drop_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
