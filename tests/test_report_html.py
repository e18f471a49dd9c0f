"""report.html in a real headless browser (Chromium + chromedriver from the OS packages, selenium from the dev extra):
the page of a small real ``compare`` run loads without console errors, shows the metric table and, for two chosen
runs, a query's two top-10 lists with the judged documents marked; without labels it shows the dev-set view; document
text that looks like markup stays text. Screenshots go into the test's ``tmp_path``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from genq_search.cli import app
from genq_search.data import write_jsonl, write_qrels
from genq_search.report import (
    query_view,
    read_payload,
    select_queries,
    write_upgrade_html,
)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE = "</script><b>x</b>"


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium; skipped (with the reason) only when the browser, its driver or selenium is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    for path, package in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]:
        if not Path(path).is_file() and not shutil.which(Path(path).name):
            pytest.skip(f"{path} is missing (apt-get install {package}; .ci/run installs it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1800"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else shutil.which("chromedriver"))
    browser = webdriver.Chrome(options=options, service=service)
    yield browser
    browser.quit()


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    driver.get_log("browser")  # (drain) the log of this page is read by errors()


def screenshot(driver, path: Path) -> None:
    """The whole page (the window grown to its height), from the top."""
    driver.execute_script("window.scrollTo(0, 0)")
    driver.set_window_size(1400, min(8000, driver.execute_script("return document.documentElement.scrollHeight") + 120))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1800)


def errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def choose(driver, select_id: str, text: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(css(driver, f"#{select_id}")[0]).select_by_visible_text(text)


def write_dev_set(generate_dir: Path, corpus_path: Path) -> None:
    """One dev query per document: its first two words of five letters or more (source document = the positive)."""
    import re

    rows, qrels = [], {}
    for line in corpus_path.read_text().splitlines():
        doc = json.loads(line)
        words = re.findall(r"[a-z]{5,}", doc["text"].lower())
        if len(words) >= 2:
            rows.append({"_id": f"dev-{doc['_id']}", "text": f"{words[0]} {words[1]}"})
            qrels[f"dev-{doc['_id']}"] = {doc["_id"]: 1}
    write_jsonl(generate_dir / "dev-queries.jsonl", rows)
    write_qrels(generate_dir / "dev-qrels" / "dev.tsv", qrels)
    (generate_dir / "manifest.json").write_text(json.dumps({"settings_hash": "hand-made"}))


def add_hostile_document(beir_dir: Path) -> None:
    """A document whose title and text look like markup (and that BM25 finds for 'caffeine drink')."""
    with (beir_dir / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "d7", "title": HOSTILE, "text": f"A caffeine drink {HOSTILE} <img src=x onerror=alert(1)>"}) + "\n")


def no_empty_tables(driver) -> bool:
    return all(css_in(table, "tbody tr") for table in css(driver, "table"))


def css_in(node, selector: str):
    from selenium.webdriver.common.by import By

    return node.find_elements(By.CSS_SELECTOR, selector)


@pytest.mark.slow  # about 5 s on 2 cores: a real compare run (with plots) and the browser
def test_compare_report_shows_two_runs_side_by_side_with_judged_documents(
    driver, beir_dir: Path, tiny_bi_encoder: Path, tmp_path: Path
) -> None:
    add_hostile_document(beir_dir)
    run_dir = tmp_path / "run"
    write_dev_set(run_dir / "generate", beir_dir / "corpus.jsonl")
    result = CliRunner().invoke(app, ["compare", "--corpus", str(beir_dir), "--run-dir", str(run_dir), "--model",
                                      f"tiny={tiny_bi_encoder}", "--device", "cpu", "--mode", "bm25", "--mode", "dense"])
    assert result.exit_code == 0, result.output
    page = run_dir / "compare" / "report.html"
    html = page.read_text()
    assert HOSTILE not in html and "http://" not in html and "https://" not in html  # escaped; nothing fetched at view time
    payload = read_payload(page)
    assert payload is not None and payload["sections"][0]["tables"][0]["rows"][0][0] == "bm25"

    open_page(driver, page)
    assert errors(driver) == []
    rows = css(driver, "#section-metrics table tbody tr")
    assert [r.text.split()[0] for r in rows] == ["bm25", "dense-tiny"]
    assert "ndcg@10" in css(driver, "#section-metrics table thead")[0].text
    assert len(css(driver, "#section-plots img")) == 2 and css(driver, "#section-label-free table")
    assert css(driver, "#section-agreement table") and no_empty_tables(driver)

    choose(driver, "run-a", "bm25")
    choose(driver, "run-b", "dense-tiny")
    assert {q.get_attribute("data-qid") for q in css(driver, "#query-list .query")} == {"q1", "q2", "q3"}
    css(driver, "#query-filter")[0].send_keys("caffeine")
    (query,) = css(driver, "#query-list .query")
    assert query.get_attribute("data-qid") == "q3" and "caffeine drink" in query.text
    sides = css_in(query, ".side")
    assert [css_in(s, "h3")[0].text.split()[0] for s in sides] == ["bm25", "dense-tiny"]
    assert all(css_in(s, "ol li") for s in sides)
    marked = [li for s in sides for li in css_in(s, "li.rel")]
    assert marked and all(li.get_attribute("data-doc") == "d6" for li in marked)
    assert css_in(marked[0], ".mark")[0].text == "relevant 1"
    hostile = [li for s in sides for li in css_in(s, 'li[data-doc="d7"]')]
    assert hostile and css_in(hostile[0], ".dtitle")[0].text == HOSTILE  # shown as text, not markup
    assert HOSTILE in css_in(hostile[0], ".snip")[0].text and not css(driver, "#query-list b, #query-list img")
    screenshot(driver, tmp_path / "report-labels.png")

    choose(driver, "query-set", "Synthetic dev set (judge by eye)")
    css(driver, "#query-filter")[0].send_keys(*["\b"] * len("caffeine"))  # as a person deletes it
    assert len(css(driver, "#query-list .query")) == 7 and "source" in {m.text for m in css(driver, "#query-list .mark")}
    assert "7 of 7 queries embedded" in css(driver, "#query-summary")[0].text
    assert errors(driver) == []

    # upgrade's page: its plan and gate first, then the compare stage's page
    plan = {"source": "docs", "source_indices": ["docs-1"], "documents": 7, "method": "genq"}
    report = {"plan": plan, "gate": {"passed": False, "reason": "dev set too small"}, "index_before": ["docs-1"], "deployed": False}
    upgrade = write_upgrade_html(run_dir / "upgrade", report, run_dir / "compare")
    assert upgrade is not None
    open_page(driver, upgrade)
    assert errors(driver) == [] and "Not deployed: dev set too small" in css(driver, "#section-upgrade .verdict-fail")[0].text
    assert css(driver, "#section-metrics table") and css(driver, "#query-list .query")


def test_label_free_report_shows_the_dev_set_and_no_empty_tables(
    driver, beir_dir: Path, tiny_bi_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genq_search import pipeline
    from genq_search.config import RunConfig
    from genq_search.data import Collection, load_collection

    corpus = load_collection(beir_dir, with_qrels=False).corpus
    monkeypatch.setattr(pipeline, "load_run_collection", lambda cfg, with_qrels=True: Collection(corpus, {}, {}))
    run_dir = tmp_path / "run"
    write_dev_set(run_dir / "generate", beir_dir / "corpus.jsonl")
    cfg = RunConfig.model_validate({"run_dir": str(run_dir), "encoder": {"device": "cpu"},
                                    "compare": {"models": {"tiny": str(tiny_bi_encoder)}, "modes": ["bm25", "dense"]}})
    pipeline.run_compare(cfg)
    open_page(driver, run_dir / "compare" / "report.html")
    assert errors(driver) == []
    assert "label-free" in css(driver, "h1")[0].text and css(driver, "#section-metrics table tbody tr")
    assert not css(driver, "#query-set") and not css(driver, "#section-label-free table") and no_empty_tables(driver)
    assert "Not shown: no labelled queries" in css(driver, "#section-agreement")[0].text
    queries = css(driver, "#query-list .query")
    assert len(queries) == 6 and all(len(css_in(q, ".side")) == 2 for q in queries)
    assert {m.text for m in css(driver, "#query-list .mark")} == {"source"}
    assert "6 of 6 queries embedded" in css(driver, "#query-summary")[0].text
    screenshot(driver, tmp_path / "report-label-free.png")


def test_large_query_sets_are_cut_to_a_bounded_seeded_sample() -> None:
    scores = {"a": {f"q{i}": 0.0 for i in range(2000)}, "b": {f"q{i}": (1.0 if i % 97 == 0 else 0.0) for i in range(2000)}}
    chosen, sentence = select_queries(scores, 100, seed=0)
    assert len(chosen) == len(set(chosen)) == 100 and chosen == select_queries(scores, 100, seed=0)[0]
    assert {f"q{i}" for i in range(0, 2000, 97)} <= set(chosen)  # every changed query is among the largest |Δ|
    assert sentence.startswith("100 of 2000 queries")
    assert select_queries(scores, 5000)[0] == sorted(scores["a"])
    # the page embeds the top 10 of the chosen queries only, and says how many of how many
    results = {run: {q: {f"d{j}": 1.0 / (j + 1) for j in range(30)} for q in scores["a"]} for run in scores}
    comparison = SimpleNamespace(results=results, metrics=["ndcg@10"], scores={r: {"ndcg@10": v} for r, v in scores.items()},
                                 qrels={q: {"d0": 1} for q in scores["a"]}, queries={q: q for q in scores["a"]})
    view = query_view("labels", "Labelled queries", comparison, {"d0": {"title": "t", "text": "x" * 5000}}, None, max_queries=100)
    assert (view["shown"], view["total"], len(view["queries"])) == (100, 2000, 100) and view["pair"] == ["a", "b"]
    assert all(len(top) == 10 for q in view["queries"] for top in q["top"]) and len(view["docs"]) == 10
    assert len(view["docs"]["d0"][1]) <= 280 and view["docs"]["d1"] == ["", "(not in the corpus)"]
