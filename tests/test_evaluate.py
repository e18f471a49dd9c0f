import math
from pathlib import Path

import pytest

from genq_search.evaluate import (
    Comparison,
    evaluate,
    paired_p_value,
    per_query_scores,
    win_loss,
)

QRELS = {"q1": {"d1": 1, "d3": 1}, "q2": {"d2": 2}}


def test_metrics_against_hand_computed_values() -> None:
    results = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d9": 1.0}}
    scores = per_query_scores(QRELS, results, ["ndcg@10", "recall@1", "mrr@10", "map@100"])
    idcg = 1 + 1 / math.log2(3)
    assert scores["ndcg@10"]["q1"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert scores["ndcg@10"]["q2"] == 0.0
    assert scores["recall@1"]["q1"] == pytest.approx(0.5)
    assert scores["mrr@10"]["q1"] == 1.0
    assert scores["map@100"]["q1"] == pytest.approx((1 + 2 / 3) / 2)


def test_queries_without_results_count_as_zero_and_mrr_is_cut() -> None:
    results = {"q1": {f"x{i}": 100.0 - i for i in range(12)} | {"d1": 1.0}}
    means = evaluate(QRELS, results, ["mrr@10", "recall@100"])
    assert means["mrr@10"] == 0.0  # d1 is at rank 13
    assert means["recall@100"] == pytest.approx(0.25)  # q1: 1/2, q2 missing: 0


def test_paired_p_value_and_win_loss() -> None:
    a = {f"q{i}": 0.2 for i in range(20)}
    b = {f"q{i}": 0.2 + (0.5 if i % 2 else 0.4) for i in range(20)}
    assert paired_p_value(a, a) == 1.0
    assert paired_p_value(a, a, greater_by=-0.01) == 0.0 and paired_p_value(a, a, greater_by=0.0) == 1.0  # no variance
    assert paired_p_value(a, b) < 1e-6
    rows = win_loss({"q1": "text"}, {"q1": 0.5, "q2": 0.3, "q3": 0.1}, {"q1": 0.2, "q2": 0.3, "q3": 0.9})
    assert [(r["qid"], round(r["delta"], 2)) for r in rows] == [("q3", 0.8), ("q1", -0.3)]
    assert rows[1]["query"] == "text"


def test_comparison_writes_every_artifact(tmp_path: Path) -> None:
    comparison = Comparison(QRELS, {"q1": "one", "q2": "two"}, ["ndcg@10", "recall@10"])
    comparison.add("bm25", {"q1": {"d2": 1.0}, "q2": {"d2": 1.0}}, backend="embedded")
    comparison.add("dense-x", {"q1": {"d1": 1.0, "d3": 0.5}, "q2": {"d2": 1.0}}, backend="embedded")
    comparison.write(tmp_path)
    for name in ["report.md", "metrics.json", "winloss.json", "runs/bm25.trec", "runs/dense-x.trec",
                 "plots/ndcg10.png", "plots/recall_at_k.png"]:
        assert (tmp_path / name).is_file(), name
    assert "q1 Q0 d1 1 1.000000 dense-x" in (tmp_path / "runs" / "dense-x.trec").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "| dense-x | 100.0 | 100.0 |" in report
    assert "`bm25` → `dense-x`" in report and "1 improved, 0 regressed, 1 unchanged" in report
