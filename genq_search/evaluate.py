"""Relevance metrics (trec_eval via pytrec_eval), paired significance tests, per-query win/loss, reports.

Metric names follow the usual short forms: ``ndcg@10``, ``recall@100``, ``mrr@10``, ``map@100``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from genq_search.data import Qrels, Queries, Results, atomic_write, write_json

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"]
RECALL_CURVE_KS = [1, 3, 5, 10, 20, 50, 100]
_TREC_NAMES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "precision": "P"}


def trec_measure(metric: str) -> str:
    """The trec_eval measure of a metric name (``ndcg@10`` -> ``ndcg_cut.10``); ValueError for an unknown one."""
    name, _, cutoff = metric.partition("@")
    if name == "mrr" and (not cutoff or cutoff.isdigit()):
        return "recip_rank"
    if name in _TREC_NAMES and cutoff.isdigit():
        return f"{_TREC_NAMES[name]}.{cutoff}"
    raise ValueError(f"unknown metric '{metric}' (use ndcg@k, recall@k, mrr@k, map@k or precision@k)")


def per_query_scores(qrels: Qrels, results: Results, metrics: list[str]) -> dict[str, dict[str, float]]:
    """``{metric: {qid: value}}`` for every judged query (a query with no results scores 0)."""
    import pytrec_eval

    measures = {trec_measure(metric) for metric in metrics}
    run = {qid: {d: float(s) for d, s in results.get(qid, {}).items()} for qid in qrels}
    judged = {qid: {d: int(r) for d, r in rels.items()} for qid, rels in qrels.items()}
    raw = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run)
    out: dict[str, dict[str, float]] = {}
    for metric in metrics:
        name, _, cutoff = metric.partition("@")
        if name == "mrr":
            top = {q: dict(sorted(r.items(), key=lambda x: -x[1])[: int(cutoff or 10**9)]) for q, r in run.items()}
            mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top)
            out[metric] = {q: mrr[q]["recip_rank"] for q in judged}
        else:
            key = f"{_TREC_NAMES[name]}_{cutoff}"
            out[metric] = {q: raw[q][key] for q in judged}
    return out


def mean_scores(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: sum(v.values()) / len(v) if v else 0.0 for m, v in scores.items()}


def evaluate(qrels: Qrels, results: Results, metrics: list[str] | None = None) -> dict[str, float]:
    return mean_scores(per_query_scores(qrels, results, metrics or DEFAULT_METRICS))


def paired_p_value(a: dict[str, float], b: dict[str, float], greater_by: float | None = None) -> float:
    """Paired t-test over the queries both dicts score: two-sided (1.0 when the runs are identical), or with
    ``greater_by = m`` one-sided for "``b`` beats ``a`` by more than ``m``" (per-query differences minus ``m``; a
    constant difference gives 0.0 when it exceeds ``m``, else 1.0)."""
    from scipy.stats import ttest_rel

    qids = sorted(a.keys() & b.keys())
    x, y = [a[q] for q in qids], [b[q] for q in qids]
    differences = {j - i - (greater_by or 0.0) for i, j in zip(x, y, strict=True)}
    if len(qids) < 2 or len(differences) == 1:  # no variance: the test is undefined, the answer is not
        return 0.0 if greater_by is not None and len(qids) >= 2 and differences.pop() > 0 else 1.0
    if greater_by is None:
        p = float(ttest_rel(x, y).pvalue)
    else:
        p = float(ttest_rel(y, [v + greater_by for v in x], alternative="greater").pvalue)
    return 1.0 if math.isnan(p) else p


def win_loss(
    queries: Queries, a: dict[str, float], b: dict[str, float], min_delta: float = 1e-9
) -> list[dict[str, Any]]:
    """Per-query change from run ``a`` to run ``b`` (biggest changes first), ties left out."""
    rows = [
        {"qid": q, "query": queries.get(q, ""), "before": a[q], "after": b[q], "delta": b[q] - a[q]}
        for q in a.keys() & b.keys()
        if abs(b[q] - a[q]) > min_delta
    ]
    return sorted(rows, key=lambda r: (-abs(r["delta"]), r["qid"]))


def write_trec_run(path: Path, results: Results, name: str) -> None:
    with atomic_write(path) as handle:
        for qid, scored in results.items():
            for rank, (doc_id, score) in enumerate(sorted(scored.items(), key=lambda x: -x[1]), start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {name}\n")


class Comparison:
    """Metrics of several named runs on one set of judged queries, with tests against a baseline."""

    def __init__(self, qrels: Qrels, queries: Queries, metrics: list[str] | None = None, baseline: str | None = None,
                 alpha: float = 0.05, label: str = "queries"):
        self.qrels, self.queries = qrels, queries
        self.metrics = metrics or DEFAULT_METRICS
        self.baseline = baseline
        self.alpha, self.label = alpha, label
        self.results: dict[str, Results] = {}
        self.scores: dict[str, dict[str, dict[str, float]]] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.columns: dict[str, dict[str, float]] = {}  # extra columns of the table: {title: {run: value}}

    def add(self, name: str, results: Results, **info: Any) -> dict[str, float]:
        self.results[name] = results
        self.scores[name] = per_query_scores(self.qrels, results, self.metrics)
        self.info[name] = info
        if self.baseline is None:
            self.baseline = name
        return mean_scores(self.scores[name])

    def table(self) -> list[dict[str, Any]]:
        rows = []
        base = self.scores.get(self.baseline or "", {})
        for name, scores in self.scores.items():
            row: dict[str, Any] = {"name": name, **self.info[name], "metrics": mean_scores(scores)}
            if name != self.baseline and base:
                row["p_value_vs_baseline"] = {m: paired_p_value(base[m], scores[m]) for m in self.metrics}
            rows.append(row)
        return rows

    def markdown(self, alpha: float | None = None) -> str:
        alpha = self.alpha if alpha is None else alpha
        header = "| run | " + " | ".join([*self.metrics, *self.columns]) + " |"
        lines = [header, "|" + "---|" * (len(self.metrics) + len(self.columns) + 1)]
        for row in self.table():
            cells = []
            for m in self.metrics:
                p = row.get("p_value_vs_baseline", {}).get(m)
                mark = "†" if p is not None and p < alpha else ""
                cells.append(f"{100 * row['metrics'][m]:.1f}{mark}")
            cells += [f"{100 * col[row['name']]:.1f}" if row["name"] in col else "–" for col in self.columns.values()]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
        note = (
            f"\nScores ×100 on {len(self.qrels)} {self.label}. † = differs from `{self.baseline}` "
            f"(paired two-sided t-test over queries, p < {alpha})."
        )
        return "\n".join(lines) + "\n" + note + "\n"

    def recall_curve(self, name: str) -> dict[int, float]:
        metrics = [f"recall@{k}" for k in RECALL_CURVE_KS]
        means = mean_scores(per_query_scores(self.qrels, self.results[name], metrics))
        return {k: means[f"recall@{k}"] for k in RECALL_CURVE_KS}

    def write(self, out_dir: Path, contrast: tuple[str, str] | None = None, top: int = 20, title: str = "Retrieval comparison",
              appendix: str = "", extra: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write ``report.md`` (``appendix`` at its end), ``metrics.json`` (``extra`` merged in), ``runs/<name>.trec``,
        ``winloss.json`` and ``plots/*.png``."""
        out_dir = Path(out_dir)
        for name, results in self.results.items():
            write_trec_run(out_dir / "runs" / f"{name}.trec", results, name)
        contrast = contrast or self.default_contrast()
        report = [f"# {title}", "", self.markdown()]
        wl: list[dict[str, Any]] = []
        if contrast:
            a, b = contrast
            wl = win_loss(self.queries, self.scores[a]["ndcg@10"], self.scores[b]["ndcg@10"])
            wins = sum(r["delta"] > 0 for r in wl)
            report += [
                f"## Per-query nDCG@10: `{a}` → `{b}`",
                "",
                f"{wins} improved, {len(wl) - wins} regressed, {len(self.qrels) - len(wl)} unchanged.",
                "",
                "| qid | query | before | after | Δ |",
                "|---|---|---|---|---|",
            ]
            for row in wl[:top]:
                query = row["query"].replace("|", "\\|")[:90]
                report.append(
                    f"| {row['qid']} | {query} | {row['before']:.3f} | {row['after']:.3f} | {row['delta']:+.3f} |"
                )
        write_json(out_dir / "winloss.json", {"contrast": contrast, "queries": wl})
        write_json(out_dir / "metrics.json", {"baseline": self.baseline, "runs": self.table(), **(extra or {})})
        with atomic_write(out_dir / "report.md") as handle:
            handle.write("\n".join(report) + "\n" + (f"\n{appendix.rstrip()}\n" if appendix else ""))
        self._plot(out_dir / "plots")
        return {"report": out_dir / "report.md", "metrics": out_dir / "metrics.json"}

    def default_contrast(self) -> tuple[str, str] | None:
        """Baseline against the best other run by nDCG@10."""
        others = [n for n in self.scores if n != self.baseline]
        if not others or "ndcg@10" not in self.metrics or self.baseline is None:
            return None
        best = max(others, key=lambda n: mean_scores(self.scores[n])["ndcg@10"])
        return (self.baseline, best)

    def _plot(self, plot_dir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plot_dir.mkdir(parents=True, exist_ok=True)
        names = list(self.scores)
        if "ndcg@10" in self.metrics:
            values = [100 * mean_scores(self.scores[n])["ndcg@10"] for n in names]
            fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
            ax.bar(names, values, color="#4C72B0")
            for i, v in enumerate(values):
                ax.text(i, v + 0.5, f"{v:.1f}", ha="center", fontsize=8)
            ax.set_ylabel("nDCG@10 (×100)")
            ax.tick_params(axis="x", rotation=30)
            fig.tight_layout()
            _save_figure(fig, plot_dir / "ndcg10.png")
            plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in names:
            curve = self.recall_curve(name)
            ax.plot(list(curve), [100 * v for v in curve.values()], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k (×100)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        _save_figure(fig, plot_dir / "recall_at_k.png")
        plt.close(fig)


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
