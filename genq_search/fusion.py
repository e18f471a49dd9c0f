"""Hybrid fusion of ranked lists: reciprocal rank fusion and normalised linear combination (min-max, z-score), and
``Retrieval``, the one typed setting for how to rank (BM25, dense or a fusion of both).

Used by every backend, so embedded and cluster hybrids give the same ranking for the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from genq_search.data import Results
from genq_search.errors import GenqError

SINGLE = ("dense", "bm25")  # the single retrievers; every other method fuses both


class FusionMethod(StrEnum):
    RRF = "rrf"
    MINMAX = "minmax"
    ZSCORE = "zscore"


@dataclass(frozen=True)
class Retrieval:
    """How to rank: ``bm25`` or ``dense`` alone, or a fusion of the two lists (``rrf`` with ``rrf_k``, ``minmax`` /
    ``zscore`` with ``lexical_weight`` on BM25 and 1 - it on dense). Compare, the dev-set tuning, search and
    ``upgrade`` all pass this; ``as_dict`` / ``from_dict`` are its JSON form in summaries and reports."""

    method: str
    lexical_weight: float | None = None
    rrf_k: int | None = None

    def __post_init__(self) -> None:
        if self.method not in SINGLE and self.method not in FusionMethod._value2member_map_:
            raise GenqError(f"unknown retrieval method '{self.method}' (bm25, dense, {', '.join(FusionMethod)})")

    @property
    def fusion(self) -> FusionMethod | None:
        return None if self.method in SINGLE else FusionMethod(self.method)

    @property
    def name(self) -> str:
        """``dense``, ``bm25``, ``rrf-60``, ``minmax-0.3`` ...: how reports and the dev-set grid name it."""
        if self.fusion is None:
            return self.method
        return f"rrf-{self.rrf_k}" if self.fusion is FusionMethod.RRF else f"{self.method}-{self.lexical_weight:g}"

    @property
    def weights(self) -> tuple[float, float]:
        """(BM25, dense) weights of a fusion (even when no lexical weight is set, as for RRF)."""
        return (0.5, 0.5) if self.lexical_weight is None else (self.lexical_weight, 1.0 - self.lexical_weight)

    @property
    def lexical_share(self) -> float:
        """Where it sits between dense alone (0) and BM25 alone (1); RRF counts as an even mix."""
        if self.fusion is None:
            return 1.0 if self.method == "bm25" else 0.0
        return 0.5 if self.fusion is FusionMethod.RRF else float(self.weights[0])

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "lexical_weight": self.lexical_weight, "rrf_k": self.rrf_k}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Retrieval:
        rrf_k = data.get("rrf_k")
        weight = data.get("lexical_weight")
        return cls(data["method"], None if weight is None else float(weight), None if rrf_k is None else int(rrf_k))


def _normalise(scores: dict[str, float], method: FusionMethod) -> dict[str, float]:
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    if method is FusionMethod.MINMAX:
        low, span = values.min(), values.max() - values.min()
        normed = (values - low) / span if span > 0 else np.ones_like(values)
    else:
        std = values.std()
        normed = (values - values.mean()) / std if std > 0 else np.zeros_like(values)
    return dict(zip(scores, normed.tolist(), strict=True))


def fuse(
    runs: list[Results],
    method: FusionMethod = FusionMethod.RRF,
    weights: list[float] | None = None,
    rrf_k: int = 60,
    k: int = 1000,
) -> Results:
    """Fuse several result sets into one, keeping the top ``k`` per query.

    RRF: ``sum_i w_i / (rrf_k + rank_i)`` (rank from 1; a document missing from a list adds nothing).
    min-max / z-score: ``sum_i w_i * norm_i(score)``, each list normalised per query; a document missing from a
    list gets that list's lowest normalised score (0 for min-max).
    """
    method = FusionMethod(method)
    if weights is None:
        weights = [1.0] * len(runs) if method is FusionMethod.RRF else [1.0 / len(runs)] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} result lists")
    fused: Results = {}
    for qid in sorted({q for run in runs for q in run}):
        combined: dict[str, float] = {}
        lists = [run.get(qid, {}) for run in runs]
        if method is FusionMethod.RRF:
            for weight, scores in zip(weights, lists, strict=True):
                ranked = sorted(scores, key=scores.__getitem__, reverse=True)
                for rank, doc_id in enumerate(ranked, start=1):
                    combined[doc_id] = combined.get(doc_id, 0.0) + weight / (rrf_k + rank)
        else:
            normalised = [_normalise(scores, method) if scores else {} for scores in lists]
            docs = {d for scores in lists for d in scores}
            for weight, normed in zip(weights, normalised, strict=True):
                floor = min(normed.values()) if normed else 0.0
                for doc_id in docs:
                    combined[doc_id] = combined.get(doc_id, 0.0) + weight * normed.get(doc_id, floor)
        fused[qid] = dict(sorted(combined.items(), key=lambda item: (-item[1], item[0]))[:k])
    return fused


def fuse_many(runs: list[Results], settings: list[tuple[FusionMethod, list[float], int]], k: int = 1000,
              with_ties: bool = False) -> list[Results]:
    """``[fuse(runs, method, weights, rrf_k, k) for method, weights, rrf_k in settings]`` with the same output, each
    list normalised (or ranked) once per query for all settings: what a grid of fusion settings needs.

    ``with_ties`` also keeps the documents tied with the ``k``-th, so an evaluation that breaks ties its own way
    (trec_eval) sees the same top ``k`` as it would in a longer list.
    """
    fused: list[Results] = [{} for _ in settings]
    for qid in sorted({q for run in runs for q in run}):
        lists = [run.get(qid, {}) for run in runs]
        docs = sorted({d for scores in lists for d in scores})  # ties go to the smaller id, as in fuse
        position = {d: i for i, d in enumerate(docs)}
        terms: dict[FusionMethod, list[np.ndarray]] = {}
        for n, (method, weights, rrf_k) in enumerate(settings):
            method = FusionMethod(method)
            if method not in terms:
                terms[method] = [_aligned(scores, position, method) for scores in lists]
            combined = np.zeros(len(docs))
            for weight, values in zip(weights, terms[method], strict=True):
                combined = combined + (weight / (rrf_k + values) if method is FusionMethod.RRF else weight * values)
            order = np.lexsort((np.arange(len(docs)), -combined))
            cut = min(k, len(docs))
            while with_ties and 0 < cut < len(docs) and combined[order[cut]] == combined[order[cut - 1]]:
                cut += 1
            fused[n][qid] = {docs[i]: float(combined[i]) for i in order[:cut]}
    return fused


def _aligned(scores: dict[str, float], position: dict[str, int], method: FusionMethod) -> np.ndarray:
    """One list's part of ``fuse`` for every document of the query: the rank for RRF (inf when missing: it adds
    nothing), else the normalised score (the list's lowest when missing)."""
    if method is FusionMethod.RRF:
        out = np.full(len(position), np.inf)
        values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
        ids = list(scores)
        for rank, i in enumerate(np.argsort(-values, kind="stable"), start=1):  # sorted(reverse=True) keeps ties in order
            out[position[ids[i]]] = rank
        return out
    normed = _normalise(scores, method) if scores else {}
    out = np.full(len(position), min(normed.values()) if normed else 0.0)
    for doc_id, value in normed.items():
        out[position[doc_id]] = value
    return out
