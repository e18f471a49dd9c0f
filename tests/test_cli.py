import json
from pathlib import Path

from conftest import SAMPLE
from typer.testing import CliRunner

from genq_search.cli import DEVICE_STAGES, app
from genq_search.config import RunConfig

runner = CliRunner()


def test_compare_end_to_end_on_the_sample_collection(tmp_path: Path, tiny_bi_encoder: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["compare", "--corpus", str(SAMPLE), "--run-dir", str(run_dir), "--model", f"tiny={tiny_bi_encoder}",
            "--mode", "bm25", "--mode", "dense", "--mode", "hybrid-rrf", "--mode", "hybrid-minmax"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| bm25 |" in result.output and "| hybrid-minmax-tiny |" in result.output
    metrics = json.loads((run_dir / "compare" / "metrics.json").read_text())
    by_name = {r["name"]: r["metrics"]["ndcg@10"] for r in metrics["runs"]}
    assert set(by_name) == {"bm25", "dense-tiny", "hybrid-rrf-tiny", "hybrid-minmax-tiny"}
    assert by_name["bm25"] > 0.5  # BM25 on the hand-labelled sample is strong
    assert by_name["dense-tiny"] < by_name["bm25"]  # a random encoder is not
    assert (run_dir / "compare" / "plots" / "ndcg10.png").stat().st_size > 1000
    # the rerun reuses the persisted index and cached embeddings
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert json.loads((run_dir / "compare" / "metrics.json").read_text()) == metrics


def test_config_file_maps_to_the_same_run(tmp_path: Path, tiny_bi_encoder: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        f'run_dir = "{tmp_path / "run"}"\n[corpus]\npath = "{SAMPLE}"\n'
        f'[compare]\nmodes = ["bm25"]\nk = 20\n'
    )
    result = runner.invoke(app, ["compare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "compare" / "report.md").is_file()


def test_device_moves_every_model_stage_of_adapt_and_upgrade(tmp_path: Path, monkeypatch) -> None:
    import typer

    import genq_search.pipeline
    import genq_search.upgrade

    seen = {}

    def capture(name):
        def fake(cfg, **_):
            seen[name] = cfg
            raise typer.Exit(0)
        return fake

    monkeypatch.setattr(genq_search.pipeline, "run_adapt", capture("adapt"))
    monkeypatch.setattr(genq_search.upgrade, "run_upgrade", capture("upgrade"))
    with_device = {name for name, field in RunConfig.model_fields.items()
                   if isinstance(field.annotation, type) and "device" in getattr(field.annotation, "model_fields", {})}
    assert with_device == set(DEVICE_STAGES)  # a new stage with a device is moved too
    for command in ("adapt", "upgrade"):
        result = runner.invoke(app, [command, "--corpus", str(SAMPLE), "--run-dir", str(tmp_path), "--device", "cpu",  # validated: cuda needs a GPU
                                     "--dev-queries", "7", "--margin", "0.02"])
        assert result.exit_code == 0, result.output
        cfg = seen[command]
        assert {stage: getattr(cfg, stage).device for stage in DEVICE_STAGES} == dict.fromkeys(DEVICE_STAGES, "cpu")
        assert (cfg.generate.dev_queries, cfg.gate.margin) == (7, 0.02)  # the stages' other flags are kept


def test_earlier_names_still_read_and_say_so(tmp_path: Path, monkeypatch, caplog) -> None:
    """Renamed settings and flags (one name per idea) keep working with a line naming the new name; finished stages
    keep their settings hashes."""
    import typer

    import genq_search.mine
    from genq_search.config import GenerateConfig, MineConfig

    config = tmp_path / "old.toml"
    config.write_text('[corpus]\nindex = "docs"\n[generate]\nmodel = "some/generator"\n[mine]\ntop_k = 7\n[train]\nmethod = "gpl"\n')
    cfg = RunConfig.load(config)
    assert (cfg.corpus.source_index, cfg.generate.generator, cfg.mine.negatives) == ("docs", "some/generator", 7)
    assert cfg.method == "gpl" and "method" not in cfg.train.model_fields  # one setting: the top-level method
    for line in ("corpus.index is now corpus.source_index", "generate.model is now generate.generator",
                 "mine.top_k is now mine.negatives", "train.method is now the top-level method"):
        assert line in caplog.text
    assert GenerateConfig(generator="g").hashed()["model"] == "g" and MineConfig().hashed()["top_k"] == 50

    seen = {}

    def fake(cfg, *_, **__):
        seen["mine"] = cfg
        raise typer.Exit(0)

    monkeypatch.setattr(genq_search.mine, "run_mine", fake)
    result = runner.invoke(app, ["mine", "--corpus", str(SAMPLE), "--run-dir", str(tmp_path / "run"), "--top-k", "4"])
    assert result.exit_code == 0, result.output
    assert seen["mine"].negatives == 4 and "--top-k is now --negatives" in result.output  # the CLI logs to stderr
    assert "--top-k" not in runner.invoke(app, ["mine", "--help"]).output
