"""``report.html``: one self-contained page beside ``report.md`` (``compare``, ``adapt``, ``evaluate``, ``upgrade``).

The page needs no network: styles and script are inline, the plots are base64 PNGs, and all data is one JSON blob in a
``<script type="application/json">`` that a small vanilla-JS renderer turns into the page (text goes into the DOM
with ``textContent`` only, and every ``<`` in the blob is escaped, so document text is never read as markup).

It shows the metric table with significance marks (as ``report.md``), the plots, the label-free figures, the tuned
fusion, the agreement with labels and the model gate when there are any, and a per-query view: pick two runs and see
their top 10 side by side, judged documents marked with their grade (on the synthetic dev set: the query's source
document), queries sorted by their Δ nDCG@10 and filtered by a text box. To stay small on large collections only the
top 10 of at most ``max_queries`` queries is embedded (those whose nDCG@10 differs most between runs, plus a seeded
random sample), and the page says how many are shown of how many. A section without data is left out with a one-line
note; nothing here recomputes retrieval (the runs are the comparison's own).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genq_search.data import Corpus, atomic_write

logger = logging.getLogger(__name__)

MAX_QUERIES = 500  # queries embedded per query set
TOP = 10  # results shown per run and query
TITLE_CHARS = 160
SNIPPET_CHARS = 280
MAX_JUDGED = 20  # judged documents kept per query (the relevant ones first)
_BLOB = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.DOTALL)


# --- compare / adapt / evaluate -----------------------------------------------------------------------------------


def write_compare_html(out_dir: Path, labelled: Any, label_free: Any, corpus: Corpus, summary: dict[str, Any], title: str,
                       max_queries: int = MAX_QUERIES, seed: int = 0) -> Path | None:
    """Write ``out_dir/report.html`` for a finished comparison (``labelled`` and ``label_free`` are the
    ``evaluate.Comparison`` of the labelled queries and of the synthetic dev set, either may be None). A failure is
    logged, never raised: the run's results are already on disk and ``report.md`` has them."""
    try:
        payload = compare_payload(Path(out_dir), labelled, label_free, corpus, summary, title, max_queries, seed)
        return write_html(Path(out_dir) / "report.html", payload)
    except Exception:
        logger.warning("report.html not written in %s", out_dir, exc_info=True)
        return None


def compare_payload(out_dir: Path, labelled: Any, label_free: Any, corpus: Corpus, summary: dict[str, Any], title: str,
                    max_queries: int = MAX_QUERIES, seed: int = 0) -> dict[str, Any]:
    """The data of the page (see ``write_html``)."""
    main = labelled if labelled is not None else label_free
    if main is None:
        raise ValueError("no comparison to report")
    sections: list[dict[str, Any]] = []
    label = "labelled queries" if labelled is not None else "synthetic dev queries"
    sections.append({"id": "metrics", "title": "Metrics" + ("" if labelled is not None else " (label-free: no labelled queries)"),
                     **_comparison_table(main, label)})
    if labelled is None:
        sections[-1]["paragraphs"].insert(0, "No labelled queries: these figures are measured on the synthetic dev set "
                                             "(each generated query's source document is its one relevant document).")
    sections.append(_plots(out_dir / "plots"))
    dev = summary.get("dev_set")
    if labelled is not None:
        if label_free is not None and label_free.results:
            section = {"id": "label-free", "title": "Label-free: synthetic dev set", **_comparison_table(label_free, "synthetic dev queries")}
            section["paragraphs"].insert(0, f"{dev['queries']} generated queries for {dev['documents']} documents kept out of "
                                            "training; each query's source document is its one relevant document."
                                            + (" Too small to decide." if dev.get("too_small") else ""))
            sections.append(section)
        else:
            sections.append(_note("label-free", "Label-free: synthetic dev set",
                                  "no synthetic dev set in this run (generate.dev_queries = 0 or no generate stage)"))
    sections.append(_tuned_fusion(summary.get("tuned_fusion") or {}))
    sections.append(_agreement(summary.get("agreement") or {}, labelled is not None))
    if summary.get("gate"):
        gate = summary["gate"]
        sections.append({"id": "gate", "title": "Model gate", "verdict": bool(gate.get("passed")),
                         "paragraphs": [f"{'Passed' if gate.get('passed') else 'Failed'}: {gate.get('reason', '')}.",
                                        f"Model kept: {gate.get('model')}"]})
    views = []
    if labelled is not None:
        views.append(query_view("labels", "Labelled queries", labelled, corpus, _contrast(out_dir, labelled), max_queries, seed))
    if label_free is not None and label_free.results:
        views.append(query_view("dev", "Synthetic dev set (judge by eye)", label_free, corpus,
                                label_free.default_contrast() if labelled is not None else _contrast(out_dir, label_free),
                                max_queries, seed))
    views = [v for v in views if v["queries"]]
    if views:
        sections.append({"id": "queries", "title": "Per query: two runs side by side", "views": views})
    else:
        sections.append(_note("queries", "Per query", "no judged queries with results to show"))
    return {"title": title, "generated": _now(), "documents": len(corpus), "top": TOP, "sections": sections}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _note(section_id: str, title: str, note: str) -> dict[str, Any]:
    return {"id": section_id, "title": title, "note": note}


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _comparison_table(comparison: Any, label: str) -> dict[str, Any]:
    """The metric table of ``Comparison.markdown`` (scores ×100, † where a run differs from the baseline)."""
    alpha = comparison.alpha
    header = ["run", *comparison.metrics, *comparison.columns]
    rows = []
    for row in comparison.table():
        cells: list[Any] = [row["name"]]
        for metric in comparison.metrics:
            p = row.get("p_value_vs_baseline", {}).get(metric)
            cells.append(_pct(row["metrics"][metric]) + ("†" if p is not None and p < alpha else ""))
        cells += [_pct(col[row["name"]]) if row["name"] in col else "–" for col in comparison.columns.values()]
        rows.append(cells)
    note = (f"Scores ×100 on {len(comparison.qrels)} {label}. † = differs from {comparison.baseline} "
            f"(paired two-sided t-test over queries, p < {alpha}).")
    return {"paragraphs": [], "tables": [{"header": header, "rows": rows, "baseline": comparison.baseline}], "footnote": note}


def _plots(plot_dir: Path) -> dict[str, Any]:
    titles = {"ndcg10.png": "nDCG@10 per run", "recall_at_k.png": "Recall@k per run"}
    paths = sorted(plot_dir.glob("*.png"), key=lambda p: (p.name not in titles, p.name)) if plot_dir.is_dir() else []
    images = [{"src": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii"),
               "alt": titles.get(p.name, p.stem)} for p in paths]
    if not images:
        return _note("plots", "Plots", f"no plots in {plot_dir}")
    return {"id": "plots", "title": "Plots", "images": images}


def _tuned_fusion(tuned: dict[str, Any]) -> dict[str, Any]:
    if not tuned:
        return _note("fusion", "Fusion tuned on the dev set", "no fusion was tuned (no synthetic dev set, or no hybrid-tuned mode)")
    rows = [[model, c["setting"], _pct(c["label_free_ndcg@10"]), "yes" if c["decided"] else "no", c.get("confidence", "n/a"),
             c["reason"]] for model, c in tuned.items()]
    return {"id": "fusion", "title": "Fusion tuned on the dev set",
            "tables": [{"header": ["model", "choice", "label-free nDCG@10", "decided", "confidence", "why"], "rows": rows}]}


def _agreement(agree: dict[str, Any], with_labels: bool) -> dict[str, Any]:
    title = "Does label-free agree with labels?"
    if not with_labels:
        return _note("agreement", title, "no labelled queries: agreement with labels is not measured")
    if not agree.get("pairs") and agree.get("kendall_tau") is None:
        return _note("agreement", title, "no run was measured both with labels and label-free (no synthetic dev set)")
    tau, share = agree.get("kendall_tau"), agree.get("sign_agreement")
    section: dict[str, Any] = {"id": "agreement", "title": title, "tables": [], "paragraphs": [
        (f"Kendall's τ of the run order by nDCG@10: {'n/a' if tau is None else f'{tau:.2f}'} over {agree.get('runs', 0)} runs; "
        f"Δ nDCG@10 has the same sign in {'n/a' if share is None else f'{100 * share:.0f}%'} of {agree.get('pairs', 0)} contrasts.")]}
    contrasts = agree.get("contrasts") or []
    if contrasts:
        section["tables"].append({"header": ["contrast", "Δ label-free", "Δ labels", "same sign"], "rows": [
            [f"{r['a']} → {r['b']}", _pct(r["label_free_delta"], True), _pct(r["label_delta"], True), "yes" if r["agree"] else "NO"]
            for r in contrasts]})
    grids = agree.get("fusion_grid") or {}
    if grids:
        section["tables"].append({"header": ["model", "τ over fusion settings", "chosen (labels)", "best on labels",
                                             "loss vs best", "loss vs better input"], "rows": [
            [m, "n/a" if g["kendall_tau"] is None else f"{g['kendall_tau']:.2f}", f"{g['chosen']} ({_pct(g['chosen_label_ndcg@10'])})",
             f"{g['best_on_labels']} ({_pct(g['best_label_ndcg@10'])})", _pct(g["loss_vs_best"]), _pct(g["loss_vs_better_input"])]
            for m, g in grids.items()]})
    return section


def _contrast(out_dir: Path, comparison: Any) -> tuple[str, str] | None:
    """The contrast of ``report.md`` (``winloss.json``), else the comparison's default one."""
    try:
        contrast = json.loads((out_dir / "winloss.json").read_text()).get("contrast")
    except (OSError, ValueError):
        contrast = None
    if contrast and all(name in comparison.results for name in contrast):
        return (contrast[0], contrast[1])
    return comparison.default_contrast()


def _clip(text: Any, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def select_queries(scores: dict[str, dict[str, float]], max_queries: int, seed: int = 0) -> tuple[list[str], str]:
    """At most ``max_queries`` query ids: all when there are that few, else half with the largest nDCG@10 spread
    between runs and the rest drawn at random (seeded); and a sentence saying so."""
    qids = sorted({q for per_run in scores.values() for q in per_run})
    if len(qids) <= max_queries:
        return qids, "every query"

    def spread(qid: str) -> float:
        values = [per_run.get(qid, 0.0) for per_run in scores.values()]
        return max(values) - min(values)

    top = sorted(qids, key=lambda q: (-spread(q), q))[: max_queries // 2]
    chosen = set(top)
    rest = [q for q in qids if q not in chosen]
    sample = random.Random(seed).sample(rest, max_queries - len(top))
    return top + sorted(sample), (f"{max_queries} of {len(qids)} queries: the {len(top)} whose nDCG@10 differs most between "
                                  f"runs and {len(sample)} drawn at random (seed {seed}); only their top {TOP} is embedded")


def query_view(view_id: str, title: str, comparison: Any, corpus: Corpus, contrast: tuple[str, str] | None,
               max_queries: int = MAX_QUERIES, seed: int = 0) -> dict[str, Any]:
    """One query set of the per-query view: runs, per-query nDCG@10 of each, top ``TOP`` ids, judgements, documents."""
    from genq_search.labelfree import ndcg_per_query

    runs = list(comparison.results)
    ndcg = {run: ndcg_per_query(comparison, run) for run in runs}
    qids, selection = select_queries(ndcg, max_queries, seed)
    docs: dict[str, list[str]] = {}

    def doc(doc_id: str) -> str:
        if doc_id not in docs:
            found = corpus.get(doc_id)
            docs[doc_id] = ([_clip(found.get("title"), TITLE_CHARS), _clip(found.get("text"), SNIPPET_CHARS)] if found
                            else ["", "(not in the corpus)"])
        return doc_id

    queries = []
    for qid in qids:
        judged = comparison.qrels.get(qid, {})
        kept = sorted(judged.items(), key=lambda x: (-x[1], x[0]))[:MAX_JUDGED]
        tops = []
        for run in runs:
            scored = comparison.results[run].get(qid, {})
            tops.append([doc(d) for d, _ in sorted(scored.items(), key=lambda x: -x[1])[:TOP]])  # the order of the run file
        queries.append({"id": qid, "text": comparison.queries.get(qid, ""), "scores": [round(ndcg[run].get(qid, 0.0), 4) for run in runs],
                        "judged": {doc(d): grade for d, grade in kept}, "top": tops})
    pair = list(contrast) if contrast else runs[:2] if len(runs) > 1 else runs * 2
    return {"id": view_id, "title": title, "kind": "dev" if view_id == "dev" else "labels", "runs": runs, "pair": pair,
            "total": len({q for per_run in ndcg.values() for q in per_run}), "shown": len(queries), "selection": selection,
            "queries": queries, "docs": docs}


# --- upgrade -----------------------------------------------------------------------------------------------------


def write_upgrade_html(out_dir: Path, report: dict[str, Any], compare_dir: Path) -> Path | None:
    """Write ``out_dir/report.html`` for an upgrade: its plan, gate and deployment, then the page of its compare stage
    (``compare_dir/report.html``) when there is one. A failure is logged, never raised."""
    try:
        return write_html(Path(out_dir) / "report.html", upgrade_payload(report, Path(compare_dir)))
    except Exception:
        logger.warning("report.html not written in %s", out_dir, exc_info=True)
        return None


def upgrade_payload(report: dict[str, Any], compare_dir: Path) -> dict[str, Any]:
    plan, gate = report["plan"], report.get("gate") or {}
    rows = [["source", f"{plan['source']} → {', '.join(plan['source_indices'])} ({plan['documents']} documents; only read)"],
            ["method", plan["method"]],
            ["gate", f"{'passed' if gate.get('passed') else 'FAILED'}: {gate.get('reason', '')}"],
            ["tuned fusion", (report.get("tuned_fusion") or {}).get("setting", "(none)")]]
    if report.get("deployed"):
        move, rx = report["alias_move"], report["reindex"]
        rows += [["alias", f"{report['alias']}: {', '.join(move['from']) or '(new)'} → {move['to']} ({move['switch_s'] * 1000:.0f} ms)"],
                 ["index before / after", f"{', '.join(report['index_before']) or '(none)'} / {report['index_after']}"],
                 ["documents", (f"{rx['copied']} copied, {rx['caught_up']} caught up, {rx['deleted_caught_up']} deletions caught up, "
                               f"{rx['verified_ids']} ids verified, {rx['without_text']} without text, "
                               f"{rx['changed_after_switch']} changed after the switch")],
                 ["search pipeline", report.get("search_pipeline") or "(none)"]]
    else:
        rows.append(["deployed", f"no: the alias stays on {', '.join(report.get('index_before') or []) or '(nothing)'}"])
    verdict = (f"Deployed: alias {report['alias']} now on {report['index_after']}." if report.get("deployed")
               else f"Not deployed: {gate.get('reason') or 'the upgrade stopped before the reindex'}.")
    upgrade: dict[str, Any] = {"id": "upgrade", "title": "Upgrade", "verdict": bool(report.get("deployed")), "paragraphs": [verdict],
                               "tables": [{"header": ["", ""], "rows": rows, "keys": True}]}
    if report.get("deployed"):
        body = report["query_body"]
        upgrade["code"] = f"{body['method']} {body['path']}\n{json.dumps(body['body'], indent=2)}"
    compare_html = compare_dir / "report.html"
    compare = read_payload(compare_html) if compare_html.is_file() else None
    if compare is None:
        return {"title": f"Upgrade of {plan['source']}", "generated": _now(),
                "sections": [upgrade, _note("metrics", "Comparison", f"no comparison page in {compare_dir}")]}
    return {**compare, "title": f"Upgrade of {plan['source']}", "generated": _now(), "sections": [upgrade, *compare["sections"]]}


# --- the page ----------------------------------------------------------------------------------------------------


def read_payload(path: Path) -> dict[str, Any] | None:
    """The data blob of a page written by ``write_html`` (None when there is none)."""
    found = _BLOB.search(Path(path).read_text(encoding="utf-8"))
    return json.loads(found.group(1)) if found else None


def write_html(path: Path, payload: dict[str, Any]) -> Path:
    """The page: static shell, inline CSS and JS, and ``payload`` as JSON (every ``<`` escaped as ``\\u003c``, so no
    text in it can close the script element or open a comment)."""
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    blob = blob.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    title = payload.get("title", "Report").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    page = (_PAGE.replace("@@TITLE@@", title).replace("@@CSS@@", _CSS).replace("@@JS@@", _JS)
            .replace("@@DATA@@", blob))
    with atomic_write(path) as handle:
        handle.write(page)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>@@CSS@@</style>
</head>
<body>
<main id="report"><noscript>This report is drawn by JavaScript; its data is in the script element below.</noscript></main>
<script type="application/json" id="report-data">@@DATA@@</script>
<script>@@JS@@</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#d9dee7; --bg:#f7f8fa; --good:#117a43; --bad:#b42318; --rel:#e3f5ea; --accent:#2f5fb3; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:#fff; }
main { max-width:1400px; margin:0 auto; padding:16px 24px 48px; }
h1 { font-size:22px; margin:8px 0 2px; } h2 { font-size:17px; margin:28px 0 8px; border-bottom:1px solid var(--line); padding-bottom:4px; }
.meta, .note, .foot { color:var(--muted); } .note { margin:6px 0; } .note b { color:var(--fg); font-weight:600; }
table { border-collapse:collapse; margin:8px 0; font-variant-numeric:tabular-nums; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th.num, td.num { text-align:right; } th { background:var(--bg); font-weight:600; }
tr.baseline td:first-child::after { content:" (baseline)"; color:var(--muted); font-size:12px; }
.keys td:first-child { font-weight:600; white-space:nowrap; } .keys td { text-align:left; }
.plots { display:flex; flex-wrap:wrap; gap:16px; } .plots figure { margin:0; flex:0 1 560px; } .plots img { width:100%; height:auto; border:1px solid var(--line); }
.plots figcaption { color:var(--muted); font-size:12px; }
.verdict-pass { color:var(--good); font-weight:600; } .verdict-fail { color:var(--bad); font-weight:600; }
pre { background:var(--bg); border:1px solid var(--line); padding:8px; overflow:auto; }
.controls { display:flex; flex-wrap:wrap; gap:12px; align-items:center; background:var(--bg); border:1px solid var(--line); padding:8px 10px; position:sticky; top:0; z-index:1; }
.controls label { display:flex; gap:6px; align-items:center; } select, input { font:inherit; padding:2px 4px; }
input[type=search] { min-width:260px; }
.query { border:1px solid var(--line); margin:10px 0; border-radius:4px; }
.qhead { display:flex; gap:12px; align-items:baseline; padding:6px 10px; background:var(--bg); border-bottom:1px solid var(--line); }
.qid { color:var(--muted); font-family:ui-monospace,monospace; font-size:12px; } .qtext { font-weight:600; flex:1; }
.delta { font-variant-numeric:tabular-nums; font-weight:600; white-space:nowrap; } .up { color:var(--good); } .down { color:var(--bad); } .same { color:var(--muted); }
.sides { display:grid; grid-template-columns:1fr 1fr; }
.side { padding:6px 10px; min-width:0; } .side + .side { border-left:1px solid var(--line); }
.side h3 { font-size:13px; margin:2px 0 4px; } .side h3 .score { color:var(--muted); font-weight:400; }
.side ol { margin:0; padding-left:26px; } .side li { padding:3px 4px; margin:1px 0; border-radius:3px; }
.side li.rel { background:var(--rel); } .side li.only { box-shadow:inset 3px 0 0 var(--accent); }
.mark { display:inline-block; font-size:11px; padding:0 5px; border-radius:8px; margin-right:4px; background:var(--good); color:#fff; }
.mark.zero { background:#98a2b3; }
.dtitle { font-weight:600; } .did { color:var(--muted); font-family:ui-monospace,monospace; font-size:11px; margin-left:4px; }
.snip { color:#475467; font-size:12.5px; overflow-wrap:anywhere; }
.missed { color:var(--muted); font-size:12px; margin-top:4px; } .empty { color:var(--muted); font-style:italic; }
button { font:inherit; padding:4px 12px; margin:8px 0; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var root = document.getElementById("report");
  root.textContent = "";
  var PAGE = 50, TOP = data.top || 10;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function add(parent) {  // append the children; returns the last one
    var last = null;
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) last = parent.appendChild(arguments[i]);
    return last;
  }
  function fmt(v) { return (100 * v).toFixed(1); }
  function signed(v) { var s = (100 * v).toFixed(1); return v > 0 ? "+" + s : s; }

  function table(spec) {
    var t = el("table", spec.keys ? "keys" : "");
    var numeric = spec.header.map(function (h, i) {  // right-aligned: columns of figures only
      return i > 0 && spec.rows.every(function (row) { return /^[-+]?[0-9.]+%?†?$|^–$|^n\/a$/.test(String(row[i])); });
    });
    if (!spec.keys) {
      var hr = add(t, el("thead")).appendChild(el("tr"));
      spec.header.forEach(function (h, i) { hr.appendChild(el("th", numeric[i] ? "num" : "", h)); });
    }
    var body = add(t, el("tbody"));
    spec.rows.forEach(function (row) {
      var tr = add(body, el("tr", spec.baseline !== undefined && row[0] === spec.baseline ? "baseline" : ""));
      row.forEach(function (cell, i) { tr.appendChild(el("td", numeric[i] ? "num" : "", cell)); });
    });
    return t;
  }

  add(root, el("h1", "", data.title));
  add(root, el("div", "meta", "Generated " + data.generated + (data.documents !== undefined ? " · " + data.documents + " documents" : "")));

  data.sections.forEach(function (s) {
    var sec = add(root, el("section"));
    sec.id = "section-" + s.id;
    add(sec, el("h2", "", s.title));
    if (s.note) { add(sec, el("p", "note", "Not shown: " + s.note + ".")); return; }
    if (s.verdict !== undefined) sec.classList.add(s.verdict ? "passed" : "failed");
    (s.paragraphs || []).forEach(function (p, i) {
      add(sec, el("p", i === 0 && s.verdict !== undefined ? (s.verdict ? "verdict-pass" : "verdict-fail") : "", p));
    });
    (s.tables || []).forEach(function (spec) { if (spec.rows.length) add(sec, table(spec)); });
    if (s.footnote) add(sec, el("p", "foot", s.footnote));
    if (s.code) add(sec, el("pre", "", s.code));
    if (s.images) {
      var box = add(sec, el("div", "plots"));
      s.images.forEach(function (im) {
        if (!/^data:image\/png;base64,/.test(im.src)) return;
        var fig = add(box, el("figure")), img = el("img");
        img.src = im.src; img.alt = im.alt;
        add(fig, img, el("figcaption", "", im.alt));
      });
    }
    if (s.views) queryViews(sec, s.views);
  });

  function queryViews(sec, views) {
    var controls = add(sec, el("div", "controls"));
    var summary = add(sec, el("p", "note"));
    summary.id = "query-summary";
    var list = add(sec, el("div"));
    list.id = "query-list";
    var more = el("button", "", "Show more");
    add(sec, more);

    function select(id, labelText) {
      var lab = add(controls, el("label", "", labelText));
      var sel = el("select"); sel.id = id; lab.appendChild(sel);
      return sel;
    }
    function fill(sel, values, chosen) {
      sel.textContent = "";
      values.forEach(function (v) { var o = el("option", "", v[1]); o.value = v[0]; sel.appendChild(o); });
      sel.value = chosen;
    }
    var setSel = views.length > 1 ? select("query-set", "Queries") : null;
    if (setSel) fill(setSel, views.map(function (v, i) { return [String(i), v.title]; }), "0");
    var aSel = select("run-a", "Run A"), bSel = select("run-b", "Run B");
    var sortSel = select("sort", "Sort by");
    fill(sortSel, [["asc", "Δ (B − A), B worst first"], ["desc", "Δ (B − A), B best first"], ["abs", "|Δ|, largest first"]], "asc");
    var lab = add(controls, el("label", "", "Filter"));
    var filter = el("input"); filter.type = "search"; filter.id = "query-filter"; filter.placeholder = "query text or id";
    lab.appendChild(filter);

    var view, shown = PAGE;
    function setView() {
      view = views[setSel ? Number(setSel.value) : 0];
      var runs = view.runs.map(function (r, i) { return [String(i), r]; });
      fill(aSel, runs, String(Math.max(0, view.runs.indexOf(view.pair[0]))));
      fill(bSel, runs, String(Math.max(0, view.runs.indexOf(view.pair[1]))));
      render(true);
    }

    function resultList(q, run, other) {
      var box = el("div", "side");
      var h = add(box, el("h3", "", view.runs[run] + " "));
      h.appendChild(el("span", "score", "nDCG@10 " + fmt(q.scores[run])));
      var ids = q.top[run];
      if (!ids.length) { add(box, el("div", "empty", "no results")); return box; }
      var ol = add(box, el("ol"));
      ids.forEach(function (id) {
        var grade = Object.prototype.hasOwnProperty.call(q.judged, id) ? q.judged[id] : null;
        var li = add(ol, el("li", grade !== null && grade > 0 ? "rel" : ""));
        li.setAttribute("data-doc", id);
        if (grade !== null) {
          var text = view.kind === "dev" ? (grade > 0 ? "source" : "judged 0") : (grade > 0 ? "relevant " + grade : "judged 0");
          var m = add(li, el("span", grade > 0 ? "mark" : "mark zero", text));
          m.title = view.kind === "dev" ? "the document this query was generated from" : "judged grade " + grade;
        }
        var d = view.docs[id] || ["", ""];
        add(li, el("span", "dtitle", d[0] || "(no title)"), el("span", "did", id), el("div", "snip", d[1]));
        if (other.indexOf(id) < 0) { li.classList.add("only"); li.title = "not in the other run's top 10"; }
      });
      var missed = Object.keys(q.judged).filter(function (id) { return q.judged[id] > 0 && ids.indexOf(id) < 0; });
      if (missed.length) {
        add(box, el("div", "missed", (view.kind === "dev" ? "Source not in this top 10: " : "Relevant, not in this top 10: ")
          + missed.map(function (id) { return (view.docs[id] && view.docs[id][0] ? view.docs[id][0] + " " : "") + "[" + id + "]"; }).join("; ")));
      }
      return box;
    }

    function render(reset) {
      if (reset) shown = PAGE;
      var a = Number(aSel.value), b = Number(bSel.value), needle = filter.value.trim().toLowerCase(), how = sortSel.value;
      var rows = view.queries.filter(function (q) {
        return !needle || q.id.toLowerCase().indexOf(needle) >= 0 || q.text.toLowerCase().indexOf(needle) >= 0;
      }).map(function (q) { return { q: q, d: q.scores[b] - q.scores[a] }; });
      rows.sort(function (x, y) {
        var k = how === "asc" ? x.d - y.d : how === "desc" ? y.d - x.d : Math.abs(y.d) - Math.abs(x.d);
        return k || (x.q.id < y.q.id ? -1 : x.q.id > y.q.id ? 1 : 0);
      });
      var better = rows.filter(function (r) { return r.d > 1e-9; }).length, worse = rows.filter(function (r) { return r.d < -1e-9; }).length;
      summary.textContent = view.title + ": " + view.shown + " of " + view.total + " queries embedded (" + view.selection + "). "
        + (needle ? rows.length + " of them match the filter. " : "") + view.runs[b] + " vs " + view.runs[a] + ": "
        + better + " better, " + worse + " worse, " + (rows.length - better - worse) + " unchanged (nDCG@10)."
        + (view.kind === "dev" ? " Marked: the query's source document (its synthetic positive)." : " Marked: judged documents with their grade.")
        + " A blue edge: not in the other run's top " + TOP + ".";
      list.textContent = "";
      rows.slice(0, shown).forEach(function (r) {
        var q = r.q, box = add(list, el("div", "query"));
        box.setAttribute("data-qid", q.id);
        var head = add(box, el("div", "qhead"));
        add(head, el("span", "qid", q.id), el("span", "qtext", q.text || "(no text)"),
          el("span", "delta " + (r.d > 1e-9 ? "up" : r.d < -1e-9 ? "down" : "same"), "Δ nDCG@10 " + signed(r.d)));
        var sides = add(box, el("div", "sides"));
        add(sides, resultList(q, a, q.top[b]), resultList(q, b, q.top[a]));
      });
      if (!rows.length) add(list, el("p", "empty", "No query matches the filter."));
      more.style.display = rows.length > shown ? "" : "none";
      more.textContent = "Show " + Math.min(PAGE, rows.length - shown) + " more (" + (rows.length - shown) + " left)";
    }

    if (setSel) setSel.addEventListener("change", setView);
    [aSel, bSel, sortSel].forEach(function (s) { s.addEventListener("change", function () { render(true); }); });
    ["input", "change", "search"].forEach(function (e) { filter.addEventListener(e, function () { render(true); }); });
    more.addEventListener("click", function () { shown += PAGE; render(false); });
    setView();
  }
})();
"""
