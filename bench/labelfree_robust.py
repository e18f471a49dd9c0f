"""How often a label-free choice (fusion setting, model gate) is right, over SciFact and constructed cases.

    python bench/labelfree_robust.py [--run-dir runs/bench-labelfree] [--resamples 200]

Step 1 (resumable, the expensive part): the run of ``bench/labelfree_scifact.py`` without GPL: Gemma-3 270M queries
for 200 documents, GenQ, and a synthetic dev set (``--dev-queries``, 300 here: 480 held-out documents generated) —
then, for the zero-shot and the GenQ model, BM25 and dense top-100 lists of (a) every cleaned candidate of every
generated dev document, with its word overlap with its source, and (b) SciFact's *training* queries
(``qrels/train.tsv``, 809 queries). Per-query nDCG@10 of every setting of the fusion grid is kept in
``<run-dir>/robust/``. The test queries are never read.

Step 2 (minutes): every rule chooses from the dev-set scores, the choice is scored on the labelled queries. Cases:

- label side: all training queries; the third with the *least* word overlap with their relevant document (real
  queries that favour dense or a light hybrid); the third with the most (real queries that favour BM25);
- dev side, all from the same generated chunks: the lexical-gap filter at caps 0.4 (the former default), 0.5 (the
  default now) and 0.6, cap 0.4 with one query per document, and raw generations (no filter: queries that copy their
  source and favour BM25);
- both models; dev sets of 100-1,000 queries (the first n in generation order: what a run asking for n gets), each
  drawn again ``--resamples`` times (bootstrap).

For each rule: how often its choice is within 0.5 nDCG@10 of the better input (BM25 or dense alone) and of the best
setting on labels, the largest loss, and the generated dev documents (and seconds: the generate stage's own median
time per chunk) a decision costs. ``headline`` sums it up for the dev sets the docs compare. The model gate: the dev
set's gain of GenQ over zero-shot against the labels' gain (the overrating ``gate.overrating`` covers).
Writes bench/results/labelfree_robust.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import SCIFACT, write_results
from labelfree_scifact import BASE, run_config

from genq_search import labelfree
from genq_search.data import (
    Collection,
    atomic_write,
    fingerprint,
    read_qrels,
    read_queries,
)
from genq_search.fusion import Retrieval
from genq_search.generate import (
    CleanStats,
    clean_queries,
    lexical_overlap,
    run_generate,
)
from genq_search.passages import document_text
from genq_search.pipeline import load_run_collection
from genq_search.search import build_index, load_encoders
from genq_search.train import run_train

SIZES = (100, 150, 200, 300, 500, 1000)
THIRD = 1 / 3


def dev_candidates(gen_dir: Path, corpus: dict[str, Any], cfg: Any) -> list[dict[str, Any]]:
    """Every cleaned candidate of every generated dev document, in generation order, with its lexical overlap."""
    rows = []
    stats = CleanStats()
    lines = [line for chunk in sorted((gen_dir / "dev" / "chunks").glob("chunk-*.jsonl"))
             for line in chunk.read_text(encoding="utf-8").splitlines()]
    for doc_index, line in enumerate(lines):
        row = json.loads(line)
        text = document_text(corpus[row["doc_id"]])
        for i, query in enumerate(clean_queries(row["candidates"], cfg, stats)):
            rows.append({"qid": f"dev-{row['doc_id']}-{i}", "query": query, "doc_id": row["doc_id"], "doc_index": doc_index,
                         "overlap": lexical_overlap(query, text)})
    return rows


def cached_grid(path: Path, key: str, compute: Any) -> dict[str, dict[str, float]]:
    """Per-query nDCG@10 of every grid setting, kept in ``path`` under the settings ``key``."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return saved["scores"]
    scores = compute()
    with atomic_write(path) as handle:
        json.dump({"key": key, "scores": scores}, handle)
    return scores


def step1(args: argparse.Namespace) -> dict[str, Any]:
    cfg = run_config(args, args.run_dir)
    collection = load_run_collection(cfg, with_qrels=False)
    corpus = collection.corpus
    started = time.perf_counter()
    generated = run_generate(cfg.generate, corpus, cfg.run_dir / "generate")
    generate_s = time.perf_counter() - started
    models = {"zeroshot": BASE,
              "genq": run_train(cfg.train, corpus, cfg.run_dir / "generate",
                                cfg.run_dir / "train")["model"]}
    candidates = dev_candidates(cfg.run_dir / "generate", corpus, cfg.generate)
    dev_queries = {r["qid"]: r["query"] for r in candidates}
    dev_qrels = {r["qid"]: {r["doc_id"]: 1} for r in candidates}
    all_queries = read_queries(args.data / "queries.jsonl")
    train_qrels = read_qrels(args.data / "qrels" / "train.tsv", corpus)
    train_queries = {q: all_queries[q] for q in train_qrels}
    overlap = {q: max(lexical_overlap(train_queries[q], document_text(corpus[d])) or 0.0 for d in judged)
               for q, judged in train_qrels.items()}
    grid = labelfree.fusion_grid(cfg.compare)
    out: dict[str, Any] = {"dev": candidates, "train_overlap": overlap, "scores": {}, "generate": generated, "grid": grid,
                           "generate_s": generate_s}
    lexical: dict[str, Any] = {}
    for label, encoder in load_encoders(models, cfg.encoder).items():
        backend, _ = build_index(Collection(corpus, {}, {}), encoder, cfg.corpus, cfg.encoder, cfg.backend, cfg.run_dir,
                                 label, separate_index=True)
        for name, queries, qrels in (("dev", dev_queries, dev_qrels), ("train", train_queries, train_qrels)):
            key = fingerprint([encoder.fingerprint(), sorted(queries.items()), sorted(qrels), cfg.compare.model_dump(mode="json")])

            def compute(queries: dict[str, str] = queries, qrels: dict[str, Any] = qrels, name: str = name,
                        backend: Any = backend, encoder: Any = encoder) -> Any:
                found = labelfree.retrieve_candidates(backend, queries, encoder, cfg.compare, cfg.encoder.batch_size, lexical.get(name))
                lexical[name] = found.lexical
                return labelfree.grid_scores(found, qrels, grid)

            out["scores"][f"{label}/{name}"] = cached_grid(cfg.run_dir / "robust" / f"{label}-{name}.json", key, compute)
    return out


# --- rules: per-query dev scores (settings x queries) -> the index of the chosen setting -------------------------------
# Matrix versions (thousands of resamples); ``check_product_rule`` shows the product's rule gives the same choice.

def p_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sided paired t-test of each row of ``b`` against ``a`` (1.0 where the rows are identical)."""
    from scipy.stats import t

    d = b - a
    n = d.shape[-1]
    sd = d.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = d.mean(axis=-1) / (sd / np.sqrt(n))
    p = 2 * t.sf(np.abs(stat), n - 1)
    return np.where(sd > 0, p, 1.0)


class Grid:
    """The tuning grid as rows of a score matrix."""

    def __init__(self, grid: list[Retrieval]):
        self.names = [s.name for s in grid]
        self.dense, self.bm25 = self.names.index("dense"), self.names.index("bm25")
        self.hybrids = np.array([i for i, s in enumerate(grid) if s.fusion is not None])
        self.weight = np.array([s.lexical_share for s in grid])


def rule_p_value(m: np.ndarray, g: Grid, alpha: float = 0.05, **_: Any) -> int:
    """Today's rule: the best hybrid if it beats the better single retriever at p < alpha."""
    means = m.mean(axis=1)
    single = g.dense if means[g.dense] >= means[g.bm25] else g.bm25
    hybrid = g.hybrids[np.argmax(means[g.hybrids])]
    if means[hybrid] > means[single] and p_values(m[single], m[hybrid]) < alpha:
        return int(hybrid)
    return single


def rule_effect(m: np.ndarray, g: Grid, alpha: float = 0.05, effect: float = 0.01, **_: Any) -> int:
    """Today's rule and an effect size: the hybrid must also win by more than ``effect``."""
    means = m.mean(axis=1)
    choice = rule_p_value(m, g, alpha)
    single = g.dense if means[g.dense] >= means[g.bm25] else g.bm25
    return choice if means[choice] - means[single] > effect else single


def _contenders(m: np.ndarray, g: Grid, alpha: float) -> tuple[int, np.ndarray | None, np.ndarray]:
    """The better single retriever, and (when today's rule picks a hybrid) the hybrids that beat it (p < alpha) and that
    the dev set cannot tell from the best (p >= alpha); the dev means."""
    means = m.mean(axis=1)
    choice = rule_p_value(m, g, alpha)
    single = g.dense if means[g.dense] >= means[g.bm25] else g.bm25
    if choice == single:
        return single, None, means
    h = g.hybrids
    beats = (means[h] > means[single]) & (p_values(m[single], m[h]) < alpha)
    tied = (h == choice) | (p_values(m[choice], m[h]) >= alpha)
    return single, h[beats & tied], means


def rule_shrink(m: np.ndarray, g: Grid, alpha: float = 0.05, **_: Any) -> int:
    """Of ``_contenders``, the one nearest the better single retriever in lexical share."""
    single, near, means = _contenders(m, g, alpha)
    if near is None:
        return single
    return int(near[np.lexsort((-means[near], np.abs(g.weight[near] - g.weight[single])))[0]])


def rule_strata(m: np.ndarray, g: Grid, alpha: float = 0.05, low: np.ndarray | None = None, **_: Any) -> int:
    """``rule_shrink``, and the hybrid must not lose to the better single retriever on the third of the dev queries
    with the least word overlap with their source (those least like the generator's copying habit)."""
    choice = rule_shrink(m, g, alpha)
    means = m.mean(axis=1)
    single = g.dense if means[g.dense] >= means[g.bm25] else g.bm25
    if choice == single or low is None or not low.any():
        return choice
    return choice if m[choice, low].mean() >= m[single, low].mean() else single


def rule_lean_dense(m: np.ndarray, g: Grid, alpha: float = 0.05, low: np.ndarray | None = None, check: bool = False,
                    **_: Any) -> int:
    """Of ``_contenders``, the one with the least lexical share (the product's rule): the dev set's bias is toward
    lexical weight whichever single retriever wins on it. ``check``: the choice must also not lose to that retriever
    on the least-overlap third of the dev queries."""
    single, near, means = _contenders(m, g, alpha)
    if near is None:
        return single
    pick = int(near[np.lexsort((-means[near], g.weight[near]))[0]])
    if check and low is not None and low.any() and m[pick, low].mean() < m[single, low].mean():
        return single
    return pick


def rule_lean_dense_checked(m: np.ndarray, g: Grid, alpha: float = 0.05, low: np.ndarray | None = None, **_: Any) -> int:
    return rule_lean_dense(m, g, alpha, low, check=True)


PRODUCT = "lean_dense"  # the rule labelfree.choose_fusion implements
RULES = {"p_value": rule_p_value, "effect_1pt": rule_effect, "shrink": rule_shrink, "strata": rule_strata,
         "lean_dense": rule_lean_dense, "lean_dense_checked": rule_lean_dense_checked}


def pools(dev: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Dev query positions in generation order, from the same generated chunks: the lexical-gap filter at caps 0.4
    (the former default), 0.5 (the default now) and 0.6 with every query of a document, cap 0.4 with one query per
    document, and the raw generations (no filter)."""
    capped = {f"cap_{cap}": [i for i, r in enumerate(dev) if r["overlap"] and r["overlap"] <= cap] for cap in (0.4, 0.5, 0.6)}
    seen: set[str] = set()
    one = [i for i in capped["cap_0.4"] if not (dev[i]["doc_id"] in seen or seen.add(dev[i]["doc_id"]))]
    return {**capped, "cap_0.4_one_per_doc": one, "raw": list(range(len(dev)))}


def sizes(pool: list[int]) -> list[int]:
    """The dev-set sizes measured on a pool: every ``SIZES`` entry it holds, and all of it."""
    return sorted({*(n for n in SIZES if n < len(pool)), len(pool)})


def label_subsets(overlap: dict[str, float], qids: list[str]) -> dict[str, np.ndarray]:
    """All training queries, and the thirds with the least and the most word overlap with their relevant document."""
    values = np.array([overlap[q] for q in qids])
    low, high = np.quantile(values, [THIRD, 1 - THIRD])
    return {"all": np.ones(len(qids), bool), "low_overlap": values <= low, "high_overlap": values >= high}


def step2(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    dev = data["dev"]
    overlap = np.array([r["overlap"] or 0.0 for r in dev])
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    gate: dict[str, Any] = {}
    dense_dev: dict[str, np.ndarray] = {}
    dense_train: dict[str, np.ndarray] = {}
    for model in ("zeroshot", "genq"):
        dev_scores, train_scores = data["scores"][f"{model}/dev"], data["scores"][f"{model}/train"]
        g = Grid(data["grid"])
        names = g.names
        m_dev = np.array([[dev_scores[n][r["qid"]] for r in dev] for n in names])
        train_qids = sorted(train_scores["dense"])
        m_train = np.array([[train_scores[n][q] for q in train_qids] for n in names])
        dense_dev[model], dense_train[model] = m_dev[g.dense], m_train[g.dense]
        subsets = label_subsets(data["train_overlap"], train_qids)
        for dev_kind, pool in pools(dev).items():
            for n in sizes(pool):
                first = np.array(pool[:n])
                docs = int(dev[first[-1]]["doc_index"]) + 1
                draws = [first] + [rng.choice(first, n, replace=True) for _ in range(args.resamples)]
                lows = [overlap[idx] <= np.quantile(overlap[idx], THIRD) for idx in draws]
                for rule, choose in RULES.items():
                    picks = np.array([choose(m_dev[:, idx], g, alpha=0.05, low=low) for idx, low in zip(draws, lows, strict=True)])
                    for label_kind, mask in subsets.items():
                        on_labels = m_train[:, mask].mean(axis=1)
                        best, better_input = on_labels.max(), max(on_labels[g.dense], on_labels[g.bm25])
                        lb, li = best - on_labels[picks], better_input - on_labels[picks]
                        rows.append({"model": model, "labels": label_kind, "dev": dev_kind, "dev_queries": n,
                                     "dev_documents_generated": docs, "rule": rule, "choice": names[picks[0]],
                                     "loss_vs_best": float(lb[0]), "loss_vs_better_input": float(li[0]),
                                     "within_0.5_of_best": float(np.mean(lb <= 0.005)),
                                     "within_0.5_of_better_input": float(np.mean(li <= 0.005)),
                                     "max_loss_vs_better_input": float(li.max()), "mean_loss_vs_best": float(lb.mean()),
                                     "choices": {names[i]: int(c) for i, c in zip(*np.unique(picks, return_counts=True), strict=True)},
                                     "best_on_labels": names[int(on_labels.argmax())], "best_ndcg@10": float(best),
                                     "better_input_ndcg@10": float(better_input)})
    for dev_kind, pool in pools(dev).items():
        for n in sizes(pool):
            first = np.array(pool[:n])
            gains = [float((dense_dev["genq"][idx] - dense_dev["zeroshot"][idx]).mean())
                     for idx in [first] + [rng.choice(first, n, replace=True) for _ in range(args.resamples)]]
            gate[f"{dev_kind}/{n}"] = {"dev_gain": gains[0], "dev_gain_p5": float(np.quantile(gains, 0.05)),
                                       "dev_gain_p95": float(np.quantile(gains, 0.95))}
    labels = {kind: float((dense_train["genq"][mask] - dense_train["zeroshot"][mask]).mean())
              for kind, mask in label_subsets(data["train_overlap"], sorted(data["scores"]["genq/train"]["dense"])).items()}
    return {"rows": rows, "gate": {"dev": gate, "label_gain": labels}}


def seconds_per_document(gen_dir: Path, chunk_size: int) -> float:
    """Generation seconds per dev document, from the generate stage's own dev chunks: the median time between two
    consecutive chunk files over the documents in a chunk (the median leaves out the minutes other work shared
    the cores)."""
    times = sorted(p.stat().st_mtime for p in (gen_dir / "dev" / "chunks").glob("chunk-*.jsonl"))
    return float(np.median(np.diff(times))) / chunk_size


def product_agrees(data: dict[str, Any]) -> dict[str, bool]:
    """The product's ``labelfree.choose_fusion`` picks what the matrix version of its rule picks, on every dev pool."""
    dev = data["dev"]
    out = {}
    for model in ("zeroshot", "genq"):
        scores = data["scores"][f"{model}/dev"]
        g = Grid(data["grid"])
        for kind, pool in pools(dev).items():
            qids = [dev[i]["qid"] for i in pool]
            sub = {n: {q: scores[n][q] for q in qids} for n in g.names}
            product = labelfree.choose_fusion(sub, data["grid"], 0.05, 100)["setting"]
            m = np.array([[sub[n][q] for q in qids] for n in g.names])
            out[f"{model}/{kind}"] = product == g.names[RULES[PRODUCT](m, g)]
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rule and dev-set size (the product's dev-set shape): share of every case's draws within 0.5 of the best
    setting / of the better input, and the largest loss over all."""
    out: dict[str, Any] = {}
    for row in rows:
        key = f"{row['rule']}/{row['dev']}/{row['dev_queries']}"
        agg = out.setdefault(key, {"cases": 0, "within_0.5_of_best": 0.0, "within_0.5_of_better_input": 0.0,
                                   "max_loss_vs_better_input": 0.0, "worst_case": None})
        agg["cases"] += 1
        agg["within_0.5_of_best"] += row["within_0.5_of_best"]
        agg["within_0.5_of_better_input"] += row["within_0.5_of_better_input"]
        if row["max_loss_vs_better_input"] >= agg["max_loss_vs_better_input"]:
            agg["max_loss_vs_better_input"] = row["max_loss_vs_better_input"]
            agg["worst_case"] = f"{row['model']}, labels {row['labels']}"
    for agg in out.values():
        agg["within_0.5_of_best"] /= agg["cases"]
        agg["within_0.5_of_better_input"] /= agg["cases"]
    return out


HEADLINE = {"former_default": ("cap_0.4", 319), "default": ("cap_0.5", 500), "cheaper": ("cap_0.5", 300),
            "raw": ("raw", 1000)}  # (dev pool, size) the docs compare; 319 = the whole cap-0.4 pool (1,000 asked for)


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rule and headline dev set: over both models and the label sets where dense or a light hybrid wins (all
    training queries, the least-overlap third), the smallest share of draws within 0.5 of the better input, the
    largest loss against it and the mean loss against the best setting; the same for the most-overlap third (real
    queries that favour BM25, the mirror case)."""
    out: dict[str, Any] = {}
    for name, (dev, n) in HEADLINE.items():
        for rule in RULES:
            for side, labels in (("dense_side", ("all", "low_overlap")), ("bm25_side", ("high_overlap",))):
                cases = [r for r in rows if r["dev"] == dev and r["dev_queries"] == n and r["rule"] == rule and r["labels"] in labels]
                out.setdefault(name, {"dev": dev, "dev_queries": n, "dev_documents_generated": cases[0]["dev_documents_generated"],
                                      "generation_s": cases[0].get("generation_s")}).setdefault(rule, {})[side] = {
                    "within_0.5_of_better_input": min(r["within_0.5_of_better_input"] for r in cases),
                    "max_loss_vs_better_input": max(r["max_loss_vs_better_input"] for r in cases),
                    "mean_loss_vs_best": float(np.mean([r["mean_loss_vs_best"] for r in cases])),
                    "choices": {f"{r['model']}/{r['labels']}": r["choice"] for r in cases}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-labelfree"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--train-documents", type=int, default=200)
    parser.add_argument("--dev-queries", type=int, default=1000)
    parser.add_argument("--tuples-per-query", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap draws of each dev set")
    parser.add_argument("--step1-only", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    data = step1(args)
    if args.step1_only:
        return
    result = step2(data, args)
    summary = summarise(result["rows"])
    for key, agg in summary.items():
        print(f"{key:>40}: best {100 * agg['within_0.5_of_best']:.0f}%  input {100 * agg['within_0.5_of_better_input']:.0f}%  "
              f"max loss {100 * agg['max_loss_vs_better_input']:.1f} ({agg['worst_case']})")
    print(json.dumps(result["gate"], indent=1))
    agrees = product_agrees(data)
    print("product rule = matrix rule:", agrees)
    cfg = run_config(args, args.run_dir)
    per_doc = seconds_per_document(cfg.run_dir / "generate", cfg.generate.chunk_size)
    for row in result["rows"]:
        row["generation_s"] = row["dev_documents_generated"] * per_doc
    gen = data["generate"]
    path = write_results("labelfree_robust", {
        "dataset": "scifact", "split": "train", "wall_s": time.perf_counter() - started, "headline": headline(result["rows"]),
        "summary": summary,
        "cases": [r for r in result["rows"] if r["rule"] in ("p_value", PRODUCT)],  # every rule: summary and headline
        "gate": result["gate"],
        "product_rule": PRODUCT, "product_rule_agrees": agrees, "generation_s_per_dev_document": per_doc,
        "generate": {"dev": gen.get("dev"), "documents": gen.get("documents"), "queries": gen.get("queries")},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
