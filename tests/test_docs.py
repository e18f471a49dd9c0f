"""The documentation cannot drift: generated pages are current, the site builds strictly, the README stays a front door."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "docs.py"
README_LIMIT = 8 * 1024


def load_docs_module():  # the generator script, imported as a module
    spec = importlib.util.spec_from_file_location("genq_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{result.stderr.strip()} (regenerate with `make docs`)"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (pip install -e '.[dev]')")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return []

    in_nav = set(pages(config["nav"]))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")
               if "_notes" not in p.parts}
    assert on_disk - in_nav == set(), "pages missing from mkdocs.yml's nav"
    assert in_nav - on_disk == set(), "nav entries without a page"


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    size = len(readme.encode("utf-8"))
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}): move detail into docs/"
    for needed in ("make demo", "make test", "--dry-run", "<!-- engine-matrix"):
        assert needed in readme
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_lists_every_command() -> None:
    typer = pytest.importorskip("typer")
    from genq_search.cli import app

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = typer.main.get_command(app).commands
    missing = [name for name in commands if f"`{name}`" not in readme]
    assert not missing, f"README's command table lacks {missing}"


def test_a_results_file_missing_a_field_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    docs = load_docs_module()
    results = tmp_path / "results"
    results.mkdir()
    (results / "broken.json").write_text(json.dumps({"benchmark": "broken", "machine": {"cpu": "x"}, "date": "2026-01-01"}))
    monkeypatch.setattr(docs, "RESULTS", results)
    monkeypatch.setattr(docs, "NOTES", tmp_path / "no-notes")
    monkeypatch.setattr(docs, "configuration_page", lambda: "")
    assert docs.main(["--check"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: bench/results/broken.json: missing field 'commit' (needed by scripts/docs.py)"


def test_placeholders_take_figures_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = load_docs_module()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "demo.md").write_text("dense {{runs[dense].metrics.ndcg@10|pct1}} at {{throughput.[a.b]|f1}} docs/s; "
                                   "gone {{runs[dense].metrics.recall@5|pct1}}")
    monkeypatch.setattr(docs, "NOTES", notes)
    data = {"runs": [{"name": "dense", "metrics": {"ndcg@10": 0.6584}}], "throughput": {"a.b": 12.34}}
    with pytest.raises(docs.DocsError, match=r"bench/results/demo.json: missing field 'runs\[dense\].metrics.recall@5'"):
        docs.fill_notes("demo", {"demo": data})
    (notes / "demo.md").write_text("dense {{runs[dense].metrics.ndcg@10|pct1}} at {{throughput.[a.b]|f1}} docs/s")
    assert docs.fill_notes("demo", {"demo": data}).strip() == "dense 65.8 at 12.3 docs/s"


def test_configuration_page_names_the_flags_that_set_a_field() -> None:
    pytest.importorskip("typer")
    docs = load_docs_module()
    fields, _, envvars = docs.flag_map()
    assert ("--generator", "generate") in fields["generate.generator"]
    assert ("--negatives", "mine") in fields["mine.negatives"] and not any(flag == "--top-k" for flag, _ in fields["mine.negatives"])
    assert {command for flag, command in fields["method"] if flag == "--method"} == {"adapt", "train", "upgrade"}
    assert any(flag == "--train-batch-size" for flag, _ in fields["train.batch_size"])
    assert any(flag.startswith("--freeze-writes") and command == "upgrade" for flag, command in fields["reindex.freeze_writes"])
    assert any("OPENSEARCH_URL" in var for var in envvars.values())
