import pytest

from genq_search.fusion import FusionMethod, fuse

LEXICAL = {"q": {"a": 10.0, "b": 6.0, "c": 2.0}}
DENSE = {"q": {"b": 0.9, "c": 0.8, "d": 0.5}}


def test_rrf_hand_checked() -> None:
    fused = fuse([LEXICAL, DENSE], FusionMethod.RRF, rrf_k=60)["q"]
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)
    assert list(fused) == ["b", "c", "a", "d"]


def test_minmax_hand_checked() -> None:
    fused = fuse([LEXICAL, DENSE], FusionMethod.MINMAX, weights=[0.5, 0.5])["q"]
    # lexical: a=1, b=0.5, c=0 ; dense: b=1, c=0.75, d=0 ; missing -> 0
    assert fused == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.375, "d": 0.0})
    assert list(fused) == ["b", "a", "c", "d"]


def test_zscore_missing_documents_get_the_list_minimum() -> None:
    fused = fuse([{"q": {"a": 1.0, "b": 3.0}}, {"q": {"b": 2.0, "c": 4.0}}], FusionMethod.ZSCORE, weights=[1.0, 1.0])["q"]
    # each list normalises to (-1, +1); a is missing from list 2 -> -1, c missing from list 1 -> -1
    assert fused == pytest.approx({"a": -2.0, "b": 0.0, "c": 0.0})


def test_weights_shift_the_ranking_and_k_truncates() -> None:
    lexical_heavy = fuse([LEXICAL, DENSE], FusionMethod.MINMAX, weights=[0.9, 0.1], k=2)["q"]
    assert list(lexical_heavy) == ["a", "b"]
    with pytest.raises(ValueError, match="weights"):
        fuse([LEXICAL, DENSE], FusionMethod.MINMAX, weights=[1.0])


def test_constant_scores_and_empty_lists() -> None:
    fused = fuse([{"q": {"a": 2.0, "b": 2.0}}, {}], FusionMethod.MINMAX)["q"]
    assert fused == pytest.approx({"a": 0.5, "b": 0.5})
