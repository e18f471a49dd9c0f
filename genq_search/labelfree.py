"""Label-free evaluation on the synthetic dev set (generated queries, each with its source document as the one relevant
document): every run's figures, the hybrid fusion tuned on it, how far it agrees with real labels, and the model gate
of ``adapt``.

The dev set comes from ``generate`` (``dev-queries.jsonl``, ``dev-qrels/dev.tsv``): documents set aside from training
and queries with a lexical gap to their source (``generate.dev_filter``). BM25 and dense top lists are retrieved once
per model and query set; every label-free run and every fusion setting is fused from them in memory with the same
``fusion.fuse`` the backends use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from genq_search.config import CompareConfig, GateConfig
from genq_search.data import (
    MANIFEST,
    Corpus,
    Qrels,
    Queries,
    Results,
    read_qrels,
    read_queries,
)
from genq_search.errors import GenqError
from genq_search.evaluate import Comparison, paired_p_value, per_query_scores
from genq_search.fusion import SINGLE, FusionMethod, Retrieval, fuse, fuse_many
from genq_search.search import Mode

logger = logging.getLogger(__name__)

NDCG = "ndcg@10"
CONFIDENCE = ("Confidence: *strong* = the choice and the other side differ on the dev set at p < alpha / 10, *weak* = "
              "at p < alpha, *none* = undecided (the simpler retriever is kept). The dev set rewards lexical weight more "
              "than real queries do, so of the hybrids it cannot tell apart the one with the least lexical weight is "
              "taken.")


@dataclass
class DevSet:
    queries: Queries
    qrels: Qrels
    documents: int


def read_dev_set(generate_dir: Path, corpus: Corpus) -> DevSet | None:
    """The dev set of a finished ``generate`` stage, or None when there is none; a source document missing from the
    corpus is an error (the dev set belongs to another corpus)."""
    from genq_search.generate import DEV_QRELS, DEV_QUERIES

    generate_dir = Path(generate_dir)
    qrels_path = generate_dir / DEV_QRELS
    if not qrels_path.is_file():
        return None
    if not (generate_dir / MANIFEST).is_file():
        logger.warning("%s: the generate stage is unfinished; its dev set is not used", generate_dir)
        return None
    queries, qrels = read_queries(generate_dir / DEV_QUERIES), read_qrels(qrels_path)
    for qid, judged in qrels.items():
        if qid not in queries:
            raise GenqError(f"{qrels_path}: query '{qid}' is not in {DEV_QUERIES}")
        missing = [d for d in judged if d not in corpus]
        if missing:
            raise GenqError(f"{qrels_path}: the source {missing[0]!r} of dev query '{qid}' is not in the corpus "
                            "(generated for another corpus?): rerun generate")
    return DevSet({q: queries[q] for q in qrels}, qrels, len({d for judged in qrels.values() for d in judged}))


@dataclass
class Candidates:
    """BM25 and dense top lists of one query set (``dense`` None without a bi-encoder), retrieved once."""

    lexical: Results
    dense: Results | None
    depth: int

    @cached_property
    def fusion_inputs(self) -> tuple[Results, Results]:
        """Both lists cut to the fusion depth, as the backends' ``hybrid_search`` fuses them."""
        if self.dense is None:
            raise GenqError("fusion needs a bi-encoder")
        return _top(self.lexical, self.depth), _top(self.dense, self.depth)


def _top(results: Results, k: int) -> Results:
    return {q: s if len(s) <= k else dict(sorted(s.items(), key=lambda x: (-x[1], x[0]))[:k]) for q, s in results.items()}


def retrieve_candidates(backend: Any, queries: Queries, encoder: Any, cfg: CompareConfig, batch_size: int,
                        lexical: Results | None = None) -> Candidates:
    """Top ``max(k, fusion_depth)`` BM25 (reused when given: it does not depend on the model) and dense lists."""
    depth = max(cfg.k, cfg.fusion_depth)
    lexical = backend.lexical_search(queries, depth) if lexical is None else lexical
    dense = None
    if encoder is not None:
        qids = list(queries)
        dense = backend.vector_search(qids, encoder.encode_queries([queries[q] for q in qids], batch_size=batch_size), depth)
    return Candidates(lexical, dense, cfg.fusion_depth)


def mode_retrieval(mode: Mode, cfg: CompareConfig, tuned: dict[str, Any] | None = None) -> Retrieval:
    """What a retrieval mode runs (``hybrid-tuned``: the ``tuned`` choice of ``tune_fusion``)."""
    if mode is Mode.HYBRID_TUNED:
        if tuned is None:
            raise GenqError("mode 'hybrid-tuned' needs the fusion tuned on the synthetic dev set")
        return Retrieval.from_dict(tuned)
    if mode.fusion is None:
        return Retrieval(mode.value)
    return Retrieval(mode.fusion.value, cfg.lexical_weight, cfg.rrf_k if mode.fusion is FusionMethod.RRF else None)


def results_for(candidates: Candidates, retrieval: Retrieval, k: int) -> Results:
    """The ranking of one setting (BM25, dense, or a fusion) from the candidate lists."""
    if retrieval.method == "bm25":
        return _top(candidates.lexical, k)
    if retrieval.method == "dense":
        if candidates.dense is None:
            raise GenqError("dense retrieval needs a bi-encoder")
        return _top(candidates.dense, k)
    assert retrieval.fusion is not None
    return fuse(list(candidates.fusion_inputs), retrieval.fusion, list(retrieval.weights), rrf_k=retrieval.rrf_k or 60, k=k)


def fusion_grid(cfg: CompareConfig) -> list[Retrieval]:
    """Dense, BM25, min-max and z-score at every ``tune_lexical_weights`` strictly between 0 and 1 (0 and 1 are dense
    and BM25 alone), RRF at every ``tune_rrf_k``."""
    if any(not 0 <= w <= 1 for w in cfg.tune_lexical_weights) or any(k < 1 for k in cfg.tune_rrf_k):
        raise GenqError("compare.tune_lexical_weights must lie in [0, 1] and compare.tune_rrf_k be positive")
    grid = [Retrieval(m) for m in SINGLE]
    weights = sorted({w for w in cfg.tune_lexical_weights if 0 < w < 1})
    grid += [Retrieval(m, w) for m in ("minmax", "zscore") for w in weights]
    grid += [Retrieval("rrf", rrf_k=k) for k in sorted(set(cfg.tune_rrf_k))]
    return grid


def grid_scores(candidates: Candidates, qrels: Qrels, grid: list[Retrieval]) -> dict[str, dict[str, float]]:
    """Per-query nDCG@10 of every setting: ``{setting name: {qid: value}}``, equal to that of the full runs. The
    hybrids are fused in one pass (``fusion.fuse_many``: the same rankings as ``fuse``), cut to the top 10 and ties."""
    hybrids = [s for s in grid if s.fusion is not None]
    fused = fuse_many(list(candidates.fusion_inputs), [(s.fusion, list(s.weights), s.rrf_k or 60) for s in hybrids],  # type: ignore[misc]
                      k=10, with_ties=True)
    results = {s.name: ranking for s, ranking in zip(hybrids, fused, strict=True)}
    results |= {s.name: results_for(candidates, s, 1000) for s in grid if s.fusion is None}
    return {s.name: per_query_scores(qrels, results[s.name], [NDCG])[NDCG]
            for s in tqdm(grid, desc="fusion grid", leave=False)}


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def choose_fusion(scores: dict[str, dict[str, float]], grid: list[Retrieval], alpha: float, min_queries: int) -> dict[str, Any]:
    """Pick a setting from per-query dev scores, leaning away from lexical weight.

    1. The best hybrid must beat the better of BM25 and dense alone on the dev set (paired t-test, p < ``alpha``);
       otherwise that single retriever is kept.
    2. Generated queries are written from their source document, so the dev set rewards lexical weight more than real
       queries do (measured: bench/results/labelfree_robust.json). Of the hybrids that also beat the single retriever
       (p < ``alpha``) and that the dev set cannot tell from the best one (p >= ``alpha``), the one with the least
       lexical weight (``Retrieval.lexical_share``) is chosen.

    ``decided`` says whether the dev set separates the choice from the other side (always False on a dev set smaller
    than ``min_queries``), ``confidence`` how firmly (``strong``: p < alpha / 10, ``weak``: p < alpha, ``none``:
    undecided), ``reason`` why, in words.
    """
    means = {name: _mean(values) for name, values in scores.items()}
    by_name = {s.name: s for s in grid}
    single = max((n for n in by_name if n in SINGLE), key=means.__getitem__)
    hybrids = [n for n in by_name if n not in SINGLE]
    best = max(hybrids, key=means.__getitem__, default=None)
    size = len(scores[single])
    small = size < min_queries
    p = paired_p_value(scores[single], scores[best]) if best else 1.0
    delta = means[best] - means[single] if best else 0.0
    if best and delta > 0 and p < alpha and not small:
        tied = [n for n in hybrids if means[n] > means[single] and paired_p_value(scores[single], scores[n]) < alpha
                and (n == best or paired_p_value(scores[n], scores[best]) >= alpha)]
        chosen, other, decided = min(tied, key=lambda n: (by_name[n].lexical_share, -means[n])), single, True
        if chosen != best:  # the test of the lighter hybrid; the best one's is p already
            p = paired_p_value(scores[single], scores[chosen])
        reason = f"{chosen} beats {single} alone by {100 * (means[chosen] - means[single]):+.1f} nDCG@10 on the dev set (p={p:.3g})"
        if chosen != best:
            reason += (f"; of the hybrids the dev set cannot tell from the best, {best} ({100 * delta:+.1f}), the one with "
                       "the least lexical weight (the dev set rewards lexical weight more than real queries do)")
    else:
        chosen, other = single, best or ("bm25" if single == "dense" else "dense")
        decided = bool(best) and delta < 0 and p < alpha and not small
        if small:
            reason = f"dev set too small to decide ({size} < {min_queries} queries): kept the better single retriever, {single}"
        elif decided:
            reason = f"{single} alone beats the best hybrid, {best}, by {-100 * delta:+.1f} nDCG@10 on the dev set (p={p:.3g})"
        else:
            reason = (f"undecided: the best hybrid, {best}, differs from {single} alone by {100 * delta:+.1f} nDCG@10 "
                      f"on the dev set (p={p:.3g}, not below {alpha}): kept the simpler {single}")
    confidence = "none" if not decided else "strong" if p < alpha / 10 else "weak"
    return {**by_name[chosen].as_dict(), "setting": chosen, "label_free_ndcg@10": means[chosen], "decided": decided,
            "confidence": confidence, "reason": reason, "runner_up": other, "runner_up_ndcg@10": means[other],
            "p_value": p, "best_hybrid": best, "dev_queries": size, "grid": means}


def tune_fusion(candidates: Candidates, qrels: Qrels, cfg: CompareConfig) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The fusion chosen on the dev set (``choose_fusion``) and the per-query scores of the whole grid."""
    grid = fusion_grid(cfg)
    scores = grid_scores(candidates, qrels, grid)
    choice = choose_fusion(scores, grid, cfg.alpha, cfg.min_dev_queries)
    logger.info("tuned fusion: %s (label-free nDCG@10 %.4f; %s)", choice["setting"], choice["label_free_ndcg@10"], choice["reason"])
    return choice, scores


def _kendall(x: list[float], y: list[float]) -> float | None:
    if len(x) < 2:
        return None
    from scipy.stats import kendalltau

    tau = float(kendalltau(x, y).statistic)
    return None if math.isnan(tau) else tau


def run_contrasts(modes: list[Mode], models: list[str], runs: set[str]) -> list[tuple[str, str]]:
    """Pairs of runs whose Δ nDCG@10 the agreement measures: BM25 vs dense, dense vs each hybrid, each fixed hybrid vs
    the tuned one (fusion weights), and the first model vs each other model in every mode (zero-shot vs adapted)."""
    hybrids = [m.value for m in modes if m not in (Mode.BM25, Mode.DENSE)]
    fixed = [h for h in hybrids if h != Mode.HYBRID_TUNED.value]
    pairs = []
    for model in models:
        pairs.append(("bm25", f"dense-{model}"))
        pairs += [(f"dense-{model}", f"{h}-{model}") for h in hybrids]
        pairs += [(f"{h}-{model}", f"hybrid-tuned-{model}") for h in fixed]
    pairs += [(f"{m.value}-{models[0]}", f"{m.value}-{other}") for other in models[1:] for m in modes if m is not Mode.BM25]
    return [p for p in dict.fromkeys(pairs) if p[0] in runs and p[1] in runs]


def agreement(label_free: dict[str, float], labels: dict[str, float] | None, contrasts: list[tuple[str, str]]) -> dict[str, Any]:
    """Kendall's tau of the run order by nDCG@10 (label-free vs labels) and the share of ``contrasts`` whose Δ has the
    same sign under both (None without labels)."""
    if not labels:
        return {"kendall_tau": None, "sign_agreement": None, "pairs": 0, "runs": 0, "contrasts": []}
    runs = [r for r in label_free if r in labels]
    rows = []
    for a, b in contrasts:
        free, real = label_free[b] - label_free[a], labels[b] - labels[a]
        rows.append({"a": a, "b": b, "label_free_delta": free, "label_delta": real,
                     "agree": (free > 0) - (free < 0) == (real > 0) - (real < 0)})
    return {"kendall_tau": _kendall([label_free[r] for r in runs], [labels[r] for r in runs]),
            "sign_agreement": sum(r["agree"] for r in rows) / len(rows) if rows else None, "pairs": len(rows),
            "runs": len(runs), "contrasts": rows}


def grid_agreement(choice: dict[str, Any], labels: dict[str, float]) -> dict[str, Any]:
    """How the fusion settings rank on the dev set vs labels, and what the choice is worth on labels."""
    names = list(labels)
    best = max(names, key=labels.__getitem__)
    chosen = labels[choice["setting"]]
    return {"kendall_tau": _kendall([choice["grid"][n] for n in names], [labels[n] for n in names]), "settings": len(names),
            "chosen": choice["setting"], "chosen_label_ndcg@10": chosen, "best_on_labels": best,
            "best_label_ndcg@10": labels[best], "loss_vs_best": labels[best] - chosen,
            "loss_vs_better_input": max(labels["dense"], labels["bm25"]) - chosen}


def ndcg_per_query(comparison: Comparison, run: str) -> dict[str, float]:
    if NDCG in comparison.metrics:
        return comparison.scores[run][NDCG]
    return per_query_scores(comparison.qrels, comparison.results[run], [NDCG])[NDCG]


def ndcg_means(comparison: Comparison) -> dict[str, float]:
    return {run: _mean(ndcg_per_query(comparison, run)) for run in comparison.results}


def model_gate(label_free: tuple[dict[str, float], dict[str, float]] | None,
               labels: tuple[dict[str, float], dict[str, float]] | None,
               baseline_model: str, adapted_model: str, cfg: GateConfig, alpha: float, min_dev_queries: int,
               overrated: bool = False) -> dict[str, Any]:
    """Keep the adapted model only if it beats the zero-shot one by more than ``cfg.margin`` nDCG@10.

    Each argument is ``(zero-shot, adapted)`` per-query nDCG@10 of the dense runs. The test is a one-sided paired
    t-test of "adapted - zero-shot > margin" at ``alpha``, on the dev set and, when there are labelled queries, on
    them too: both must pass. ``overrated`` (a GenQ model: it trained on the dev set's generator) without labelled
    queries raises the dev set's margin by ``cfg.overrating``. A dev set smaller than ``min_dev_queries`` is not gated
    on: labelled queries then decide alone, and without them the gate fails closed ('dev set too small'). ``model`` is
    the model to keep.
    """
    def test(pair: tuple[dict[str, float], dict[str, float]], margin: float) -> tuple[float, float, bool]:
        delta = _mean(pair[1]) - _mean(pair[0])
        p = paired_p_value(pair[0], pair[1], greater_by=margin)
        return delta, p, delta > margin and p < alpha

    size = len(label_free[0]) if label_free else 0
    label_delta, label_p, label_ok = test(labels, cfg.margin) if labels and labels[0] else (None, None, None)
    dev_margin = cfg.margin + (cfg.overrating if overrated and label_ok is None else 0.0)
    free_delta, free_p, free_ok = test(label_free, dev_margin) if label_free else (0.0, 1.0, False)
    on_dev = f"dev set {100 * free_delta:+.1f} nDCG@10 (p={free_p:.3g})"
    on_labels = "no labelled queries" if label_ok is None else f"labels {100 * label_delta:+.1f} nDCG@10 (p={label_p:.3g})"
    wanted = f"more than {100 * dev_margin:.1f} nDCG@10 (paired t-test, p < {alpha})"
    if dev_margin > cfg.margin:
        wanted += (f" on the dev set: gate.margin {100 * cfg.margin:.1f} + gate.overrating {100 * cfg.overrating:.1f}, "
                   "because the dev set comes from the generator this GenQ model trained on and overrates it; "
                   "labelled queries (corpus.queries / corpus.qrels) let it pass on gate.margin alone")
    if size < min_dev_queries:
        passed = bool(label_ok)
        reason = (f"dev set too small ({size} < {min_dev_queries} queries), not gated on; "
                  + (f"passed on labelled queries alone ({on_labels})" if passed else f"kept the zero-shot model ({on_labels})"))
    else:
        passed = free_ok and label_ok is not False
        verdict = "beats" if passed else "does not beat"
        reason = f"the adapted model {verdict} the zero-shot one by {wanted}: {on_dev}; {on_labels}"
    return {"passed": passed, "reason": reason, "label_free_delta": free_delta, "label_free_p": free_p,
            "label_delta": label_delta, "label_p": label_p, "model": adapted_model if passed else baseline_model,
            "adapted_model": adapted_model, "zeroshot_model": baseline_model, "margin": cfg.margin, "dev_margin": dev_margin,
            "alpha": alpha,
            "dev_queries": size}


def report_section(summary: dict[str, Any], label_free: Comparison | None, with_labels: bool) -> str:
    """Markdown for the end of ``report.md``: label-free table, tuned fusion, agreement with labels, model gate."""
    lines: list[str] = []
    dev = summary.get("dev_set")
    if label_free is not None and with_labels:
        lines += ["## Label-free: synthetic dev set", "",
                  f"{dev['queries']} generated queries for {dev['documents']} documents kept out of training; each "
                  "query's source document is its one relevant document." + (" Too small to decide." if dev["too_small"] else ""),
                  "", label_free.markdown()]
    tuned = summary.get("tuned_fusion") or {}
    if tuned:
        lines += ["## Fusion tuned on the dev set", "", CONFIDENCE, "",
                  "| model | choice | label-free nDCG@10 | decided | confidence | why |", "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {c['setting']} | {100 * c['label_free_ndcg@10']:.1f} | {'yes' if c['decided'] else 'no'} | "
                  f"{c.get('confidence', 'n/a')} | {c['reason']} |" for m, c in tuned.items()]
        lines.append("")
    agree = summary.get("agreement") or {}
    if agree.get("pairs") or agree.get("kendall_tau") is not None:
        tau = agree["kendall_tau"]
        share = agree["sign_agreement"]
        lines += ["## Does label-free agree with labels?", "",
                  (f"Kendall's τ of the run order by nDCG@10: {'n/a' if tau is None else f'{tau:.2f}'} over {agree['runs']} runs; "
                   f"Δ nDCG@10 has the same sign in {'n/a' if share is None else f'{100 * share:.0f}%'} of {agree['pairs']} contrasts."),
                  "", "| contrast | Δ label-free | Δ labels | same sign |", "|---|---|---|---|"]
        lines += [f"| {r['a']} → {r['b']} | {100 * r['label_free_delta']:+.1f} | {100 * r['label_delta']:+.1f} | {'yes' if r['agree'] else 'NO'} |"
                  for r in agree["contrasts"]]
        grids = agree.get("fusion_grid") or {}
        if grids:
            lines += ["", "| model | τ over fusion settings | chosen (labels) | best on labels | loss vs best | loss vs better input |",
                      "|---|---|---|---|---|---|"]
            for m, g in grids.items():
                tau = "n/a" if g["kendall_tau"] is None else f"{g['kendall_tau']:.2f}"
                lines.append(f"| {m} | {tau} | {g['chosen']} ({100 * g['chosen_label_ndcg@10']:.1f}) | {g['best_on_labels']} "
                             f"({100 * g['best_label_ndcg@10']:.1f}) | {100 * g['loss_vs_best']:.1f} | {100 * g['loss_vs_better_input']:.1f} |")
        lines.append("")
    gate = summary.get("gate")
    if gate:
        lines += ["## Model gate", "", f"**{'Passed' if gate['passed'] else 'Failed'}**: {gate['reason']}. Model kept: `{gate['model']}`.", ""]
    return "\n".join(lines)
