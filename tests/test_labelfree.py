"""Label-free evaluation: the synthetic dev set, fusion tuned on it, agreement with labels, the model gate."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from conftest import SAMPLE

from genq_search.config import CompareConfig, GateConfig, GenerateConfig, RunConfig
from genq_search.data import (
    load_collection,
    read_qrels,
    read_queries,
    write_jsonl,
    write_qrels,
)
from genq_search.errors import GenqError
from genq_search.evaluate import Comparison
from genq_search.fusion import FusionMethod, Retrieval, fuse, fuse_many
from genq_search.generate import STOP_WORDS, dev_filter, lexical_overlap, run_generate
from genq_search.labelfree import (
    Candidates,
    agreement,
    choose_fusion,
    fusion_grid,
    model_gate,
    run_contrasts,
    tune_fusion,
)
from genq_search.passages import document_text
from genq_search.search import Mode


def sample_corpus(n: int) -> dict[str, dict[str, str]]:
    corpus = load_collection(SAMPLE, with_qrels=False).corpus
    return {d: corpus[d] for d in sorted(corpus)[:n]}


def gen_cfg(model: Path, **changes: object) -> GenerateConfig:
    settings: dict[str, object] = {"queries_per_passage": "2", "batch_size": 8, "chunk_size": 8, "max_new_tokens": 8,
                                   "max_input_tokens": 48, "min_query_words": 1, "device": "cpu", "max_passages": 8,
                                   "dev_queries": 12, "dev_max_overlap": 0.5}
    return GenerateConfig(generator=str(model), **(settings | changes))


# --- the dev set ------------------------------------------------------------------------------------------------


def test_lexical_gap_filter_ignores_stop_words_and_needs_a_shared_word() -> None:
    doc = "Python decorators wrap a function and return a new function."
    assert lexical_overlap("what is a decorator in python", doc) == pytest.approx(1 / 2)  # decorator, python
    assert lexical_overlap("the of and", doc) is None
    assert dev_filter("python function decorators", doc, 0.4) == ("lexical_overlap", 1.0)
    assert dev_filter("rust borrow checker", doc, 0.4) == ("no_shared_word", 0.0)
    assert dev_filter("how to memoize a python call cheaply", doc, 0.4) == (None, 0.25)
    assert {"the", "what", "is"} <= STOP_WORDS


def test_dev_set_is_kept_out_of_training_and_resumes_identically(tiny_t5: Path, tmp_path: Path) -> None:
    corpus = sample_corpus(60)
    cfg = gen_cfg(tiny_t5)
    summary = run_generate(cfg, corpus, tmp_path / "full")
    train = read_qrels(tmp_path / "full" / "gen-qrels" / "train.tsv")
    dev = read_qrels(tmp_path / "full" / "dev-qrels" / "dev.tsv")
    dev_queries = read_queries(tmp_path / "full" / "dev-queries.jsonl")
    train_docs = {d for judged in train.values() for d in judged}
    dev_docs = {d for judged in dev.values() for d in judged}
    assert train_docs and dev_docs and not train_docs & dev_docs
    assert summary["documents"] == 8 and set(dev_queries) == set(dev) and 0 < len(dev) <= 12 == summary["dev"]["target"]
    assert summary["dev"]["generated_documents"] > 8  # more than one chunk: the resume below is a real one
    assert all(dev_filter(dev_queries[q], document_text(corpus[d]), 0.5)[0] is None for q, judged in dev.items() for d in judged)
    # a crash after the first dev chunk: only the missing chunks are generated, and the output is byte-identical
    partial = tmp_path / "partial"
    (partial / "dev" / "chunks").mkdir(parents=True)
    for name in ["dev/chunks/chunk-00000.jsonl", "dev/settings.json"]:
        (partial / name).write_bytes((tmp_path / "full" / name).read_bytes())
    calls: list[int] = []

    class Counting:
        def __init__(self) -> None:
            from genq_search.generate import load_generator

            self.inner = load_generator(cfg)

        def generate(self, documents: list[str], per_document: int, seed: int) -> list[list[str]]:
            calls.append(len(documents))
            return self.inner.generate(documents, per_document, seed)

    run_generate(cfg, corpus, partial, generator=Counting())
    assert sum(calls) == summary["dev"]["generated_documents"] - 8 + 8
    for name in ["gen-queries.jsonl", "gen-qrels/train.tsv", "dev-queries.jsonl", "dev-qrels/dev.tsv"]:
        assert (partial / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    # the dev filter is part of the settings: a looser one reruns the stage from the stored chunks, generating nothing
    calls.clear()
    looser = run_generate(cfg.model_copy(update={"dev_max_overlap": 0.9}), corpus, partial, generator=Counting())
    assert calls == [] and looser["dev"]["max_overlap"] == 0.9 and looser["dev"]["queries"] >= summary["dev"]["queries"]
    # no dev set asked for: an earlier one is removed, so compare cannot read it as this run's
    run_generate(cfg.model_copy(update={"dev_queries": 0}), corpus, partial, generator=Counting())
    assert not (partial / "dev-qrels" / "dev.tsv").exists() and not (partial / "dev-queries.jsonl").exists()


def test_every_dev_query_filtered_out_is_a_clear_error_and_writes_nothing(tiny_t5: Path, tmp_path: Path) -> None:
    with pytest.raises(GenqError, match="no dev query passed clean-up and the lexical-gap filter.*dev_max_overlap"):
        run_generate(gen_cfg(tiny_t5, dev_max_overlap=0.001), sample_corpus(14), tmp_path)
    assert not (tmp_path / "gen-queries.jsonl").exists() and not (tmp_path / "manifest.json").exists()


# --- fusion tuning ----------------------------------------------------------------------------------------------


def constructed(kind: str, n: int) -> tuple[Candidates, dict[str, dict[str, int]]]:
    """Candidate lists where the relevant document 'r' comes first only for some fusion settings.

    'dense': dense ranks r first, just above a decoy that BM25 ranks first. 'minmax-0.3': half the queries need a lexical
    weight above 0.29, the other half one below 0.33 (normalised scores chosen so); no z-score or RRF setting gets both.
    """
    lexical, dense = {}, {}
    for i in range(n):
        q = f"q{i}"
        if kind == "dense":  # any lexical weight lifts decoy 'a' above r
            lexical[q] = {"a": 3.0, "b": 2.0, **({"r": 1.0} if i % 3 == 0 else {})}
            dense[q] = {"r": 1.0, "a": 0.99 if i % 5 else 1.01, "b": 0.5 if i % 2 else 0.2, "c": 0.0}
        elif i % 2:  # min-max needs w > 0.286: r = 0.6 + 0.4 w vs c = 1 - w ('z' moves the z-scores, not min-max)
            lexical[q] = {"r": 1.0, "x": 0.5, "c": 0.0}
            dense[q] = {"c": 1.0, "r": 0.6, "z": 0.5, "x": 0.0}
        else:  # min-max needs w < 0.333: r = 1 - w vs c = 0.5 + 0.5 w; RRF ranks c first
            lexical[q] = {"c": 1.0, "x": 0.5, "r": 0.0}
            dense[q] = {"r": 1.0, "c": 0.5, "x": 0.0}
    return Candidates(lexical, dense, depth=100), {q: {"r": 1} for q in lexical}


def test_fuse_many_gives_fuse_rankings_for_every_setting() -> None:
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(60)]
    lexical = {f"q{i}": {d: float(rng.randint(0, 3)) for d in rng.sample(docs, 20)} for i in range(30)}  # many ties
    dense = {f"q{i}": {d: round(rng.random(), 1) for d in rng.sample(docs, 20)} for i in range(30)}
    lexical["only-dense"], dense["only-lexical"] = {}, {"d1": 1.0}
    settings = [(FusionMethod.MINMAX, [0.3, 0.7], 60), (FusionMethod.ZSCORE, [0.8, 0.2], 60), (FusionMethod.RRF, [0.5, 0.5], 10)]
    for many, (method, weights, rrf_k) in zip(fuse_many([lexical, dense], settings, k=5), settings, strict=True):
        reference = fuse([lexical, dense], method, weights, rrf_k, k=5)
        assert all(list(many[q].items()) == list(reference[q].items()) for q in reference) and many.keys() == reference.keys()
    tied = fuse_many([{"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, {}], [(FusionMethod.MINMAX, [0.5, 0.5], 60)], k=1, with_ties=True)
    assert list(tied[0]["q"]) == ["a", "b", "c"]


@pytest.mark.parametrize(("kind", "setting", "decided"), [("dense", "dense", True), ("minmax-0.3", "minmax-0.3", True)])
def test_tuned_fusion_picks_the_known_best_setting(kind: str, setting: str, decided: bool) -> None:
    candidates, qrels = constructed(kind, 120)
    choice, scores = tune_fusion(candidates, qrels, CompareConfig())
    assert choice["setting"] == setting and choice["decided"] is decided, choice["reason"]
    assert choice["label_free_ndcg@10"] == max(choice["grid"].values()) and len(scores) == 2 + 2 * 9 + 4
    if setting == "minmax-0.3":
        assert Retrieval.from_dict(choice) == Retrieval("minmax", 0.3) and Retrieval.from_dict(choice).weights == (0.3, 0.7)
        assert [name for name, value in choice["grid"].items() if value == pytest.approx(1.0)] == ["minmax-0.3"]
    else:
        assert Retrieval.from_dict(choice) == Retrieval("dense")


def test_tuning_prefers_the_simple_choice_when_the_dev_set_cannot_tell() -> None:
    grid = fusion_grid(CompareConfig(tune_lexical_weights=[0.0, 0.5, 1.0], tune_rrf_k=[60]))
    assert [g.method for g in grid] == ["dense", "bm25", "minmax", "zscore", "rrf"]
    rng = random.Random(0)
    noise = {name: {f"q{i}": rng.random() for i in range(40)} for name in ["dense", "bm25", "minmax-0.5", "zscore-0.5", "rrf-60"]}
    noise["minmax-0.5"] = {q: v + rng.gauss(0.02, 0.3) for q, v in noise["dense"].items()}  # better by noise only
    choice = choose_fusion(noise, grid, alpha=0.05, min_queries=10)
    assert choice["method"] in ("dense", "bm25") and not choice["decided"] and choice["reason"].startswith("undecided")
    small = choose_fusion(noise, grid, alpha=0.05, min_queries=100)
    assert not small["decided"] and "dev set too small" in small["reason"]


def _scores(means: dict[str, float], n: int = 300, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-query scores with these means: a per-query difficulty shared by every setting plus each one's own noise."""
    rng = random.Random(seed)
    difficulty = {f"q{i}": rng.gauss(0, 0.1) for i in range(n)}
    return {name: {q: mean + d + rng.gauss(0, 0.1) for q, d in difficulty.items()} for name, mean in means.items()}


GRID = CompareConfig(tune_lexical_weights=[0.0, 0.2, 0.5, 1.0], tune_rrf_k=[60])


def test_synthetic_queries_that_favour_bm25_do_not_buy_a_bm25_heavy_hybrid() -> None:
    """Constructed case: on the dev set the BM25-heavy minmax-0.5 is best, a light minmax-0.2 within its noise, both
    far above dense; on the real queries dense and minmax-0.2 tie and minmax-0.5 loses 8 points. The rule takes the
    least lexical weight the dev set cannot tell from the best: within 0.5 of the better input on the real queries,
    where the best hybrid alone (the former rule) is not."""
    dev = {"dense": 0.45, "bm25": 0.40, "minmax-0.2": 0.55, "minmax-0.5": 0.56, "zscore-0.2": 0.53, "zscore-0.5": 0.54,
           "rrf-60": 0.50}
    real = {"dense": 0.60, "bm25": 0.45, "minmax-0.2": 0.60, "minmax-0.5": 0.52, "zscore-0.2": 0.59, "zscore-0.5": 0.53,
            "rrf-60": 0.55}
    choice = choose_fusion(_scores(dev), fusion_grid(GRID), alpha=0.05, min_queries=100)
    assert choice["setting"] == "minmax-0.2" and choice["best_hybrid"] == "minmax-0.5" and choice["decided"]
    assert choice["confidence"] == "strong" and "the least lexical weight" in choice["reason"]
    assert max(real["dense"], real["bm25"]) - real[choice["setting"]] <= 0.005
    assert max(real["dense"], real["bm25"]) - real[choice["best_hybrid"]] > 0.05


def test_a_hybrid_the_dev_set_separates_from_the_lighter_ones_is_kept() -> None:
    dev = {"dense": 0.45, "bm25": 0.40, "minmax-0.2": 0.50, "minmax-0.5": 0.60, "zscore-0.2": 0.50, "zscore-0.5": 0.55,
           "rrf-60": 0.50}
    choice = choose_fusion(_scores(dev), fusion_grid(GRID), alpha=0.05, min_queries=100)
    assert choice["setting"] == "minmax-0.5" == choice["best_hybrid"] and "least lexical weight" not in choice["reason"]
    assert choice["decided"] and choice["confidence"] == "strong" and choice["p_value"] < 0.005


# --- agreement --------------------------------------------------------------------------------------------------


def test_agreement_kendall_tau_and_sign_of_deltas() -> None:
    free = {"bm25": 0.5, "dense-zs": 0.6, "dense-genq": 0.7}
    real = {"bm25": 0.4, "dense-zs": 0.8, "dense-genq": 0.6}
    out = agreement(free, real, [("bm25", "dense-zs"), ("dense-zs", "dense-genq")])
    assert out["kendall_tau"] == pytest.approx(1 / 3) and out["sign_agreement"] == 0.5 and out["pairs"] == 2
    assert [r["agree"] for r in out["contrasts"]] == [True, False]
    assert agreement(free, None, [])["kendall_tau"] is None
    runs = {"bm25", "dense-zs", "dense-genq", "hybrid-rrf-zs", "hybrid-rrf-genq", "hybrid-tuned-zs"}
    pairs = run_contrasts([Mode.BM25, Mode.DENSE, Mode.HYBRID_RRF, Mode.HYBRID_TUNED], ["zs", "genq"], runs)
    assert ("dense-zs", "hybrid-tuned-zs") in pairs and ("hybrid-rrf-zs", "hybrid-tuned-zs") in pairs
    assert ("dense-zs", "dense-genq") in pairs and ("hybrid-rrf-zs", "hybrid-rrf-genq") in pairs
    assert all(a in runs and b in runs for a, b in pairs)


# --- the model gate ---------------------------------------------------------------------------------------------


def _good_and_shuffled(good_name: str = "good", shuffled_name: str = "shuffled") -> Comparison:
    """150 queries: one run ranks each query's relevant document first, the other is the same lists shuffled."""
    rng = random.Random(1)
    corpus_ids = [f"d{i}" for i in range(50)]
    qrels = {f"q{i}": {f"d{i % 50}": 1} for i in range(150)}
    good = {}
    for q, rel in qrels.items():
        relevant = next(iter(rel))
        ranked = [relevant, *rng.sample([d for d in corpus_ids if d != relevant], 20)]
        good[q] = {d: 1.0 - j / 100 for j, d in enumerate(ranked)}
    shuffled = {q: dict(zip(rng.sample(list(r), len(r)), sorted(r.values(), reverse=True), strict=True)) for q, r in good.items()}
    comparison = Comparison(qrels, {q: q for q in qrels}, ["ndcg@10"])
    comparison.add(good_name, good)
    comparison.add(shuffled_name, shuffled)
    return comparison


def test_gate_rejects_a_shuffled_run_and_accepts_a_clearly_better_one() -> None:
    comparison = _good_and_shuffled()
    qrels = comparison.qrels
    pq = {n: comparison.scores[n]["ndcg@10"] for n in ("good", "shuffled")}
    args = ("zs", "adapted", GateConfig(), 0.05, 100)
    worse = model_gate((pq["good"], pq["shuffled"]), None, *args)
    assert not worse["passed"] and worse["model"] == "zs" and worse["label_free_delta"] < 0 and "does not beat" in worse["reason"]
    better = model_gate((pq["shuffled"], pq["good"]), None, *args)
    assert better["passed"] and better["model"] == "adapted" and better["label_free_p"] < 0.05 and better["label_delta"] is None
    # labels, when given, must agree
    assert not model_gate((pq["shuffled"], pq["good"]), (pq["good"], pq["shuffled"]), *args)["passed"]
    # a margin larger than the gain fails it
    assert not model_gate((pq["shuffled"], pq["good"]), None, "zs", "adapted", GateConfig(margin=0.99), 0.05, 100)["passed"]
    # too small a dev set is not gated on: fail closed, unless labelled queries decide
    few = ({q: pq["shuffled"][q] for q in list(qrels)[:20]}, {q: pq["good"][q] for q in list(qrels)[:20]})
    closed = model_gate(few, None, *args)
    assert not closed["passed"] and closed["reason"].startswith("dev set too small")
    assert model_gate(few, (pq["shuffled"], pq["good"]), *args)["passed"]


def test_a_genq_model_without_labelled_queries_needs_a_larger_gain_on_the_dev_set() -> None:
    from genq_search.pipeline import _gate

    def gate(method: str, with_labels: bool = False) -> dict:
        cfg = RunConfig.load(None, {"run": {"method": method}, "compare": {"models": {"zeroshot": "zs", method: "adapted"}}})
        dev = _good_and_shuffled(f"dense-{method}", "dense-zeroshot")
        return _gate(cfg, ("zeroshot", method), dev if with_labels else None, dev)

    genq, gpl, labelled = gate("genq"), gate("gpl"), gate("genq", with_labels=True)
    assert genq["passed"] and genq["dev_margin"] == GateConfig().overrating and "gate.overrating" in genq["reason"]
    assert gpl["passed"] and gpl["dev_margin"] == 0.0 and "overrat" not in gpl["reason"]
    # with labelled queries the labels decide too, on gate.margin alone
    assert labelled["passed"] and labelled["dev_margin"] == 0.0 and "overrat" not in labelled["reason"]


def test_a_genq_gain_within_the_dev_sets_overrating_needs_labelled_queries() -> None:
    """A GenQ model 2 points better on the dev set (significantly) fails without labels (the dev set overrates GenQ
    by up to gate.overrating) and passes when labelled queries show the same gain."""
    rng = random.Random(3)
    zeroshot = {f"q{i}": rng.random() * 0.5 for i in range(400)}
    adapted = {q: v + 0.02 + rng.gauss(0, 0.01) for q, v in zeroshot.items()}
    args = ("zs", "adapted", GateConfig(), 0.05, 100)
    alone = model_gate((zeroshot, adapted), None, *args, overrated=True)
    assert not alone["passed"] and alone["label_free_delta"] == pytest.approx(0.02, abs=0.005)
    assert "gate.overrating" in alone["reason"] and "labelled queries" in alone["reason"]
    assert model_gate((zeroshot, adapted), (zeroshot, adapted), *args, overrated=True)["passed"]
    assert model_gate((zeroshot, adapted), None, *args, overrated=False)["passed"]  # GPL: no overrating measured


# --- compare / adapt end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bow_bi_encoder(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path) -> Path:
    """A 0-layer BERT without position embeddings (mean of random 256-d word vectors): a bag-of-words encoder that
    matches shared words, far better than the random 2-layer ``tiny_bi_encoder`` on word-overlap queries."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=0, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128, initializer_range=1.0))
    with torch.no_grad():
        bert.embeddings.position_embeddings.weight.zero_()
        bert.embeddings.token_type_embeddings.weight.zero_()
    hf_dir = tmp_path_factory.mktemp("bow-bert")
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    model = SentenceTransformer(modules=[st_models.Transformer(str(hf_dir), max_seq_length=64), st_models.Pooling(256, "mean"),
                                         st_models.Normalize()])
    out = tmp_path_factory.mktemp("bow-bi-encoder")
    model.save(str(out))
    return out


def write_dev_set(generate_dir: Path, corpus: dict[str, dict[str, str]], documents: int, seed: int = 0) -> None:
    """A hand-made dev set: per document, two of its rarer words and one word from elsewhere (a lexical gap)."""
    rng = random.Random(seed)
    vocabulary = sorted({w for doc in corpus.values() for w in re.findall(r"[a-z]{5,}", doc["text"].lower())} - STOP_WORDS)
    rows, qrels = [], {}
    for doc_id in sorted(corpus)[:documents]:
        words = sorted(set(re.findall(r"[a-z]{5,}", corpus[doc_id]["text"].lower())) - STOP_WORDS)
        if len(words) < 2:
            continue
        qid = f"dev-{doc_id}-0"
        rows.append({"_id": qid, "text": " ".join([*rng.sample(words, 2), rng.choice(vocabulary)])})
        qrels[qid] = {doc_id: 1}
    write_jsonl(generate_dir / "dev-queries.jsonl", rows)
    write_qrels(generate_dir / "dev-qrels" / "dev.tsv", qrels)
    (generate_dir / "manifest.json").write_text(json.dumps({"settings_hash": "hand-made"}))


def test_compare_without_labels_reports_label_free_figures_and_the_gate(
    tiny_bi_encoder: Path, bow_bi_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genq_search import pipeline
    from genq_search.data import Collection

    corpus = sample_corpus(160)
    monkeypatch.setattr(pipeline, "load_run_collection", lambda cfg, with_qrels=True: Collection(corpus, {}, {}))
    monkeypatch.setattr(Comparison, "_plot", lambda self, plot_dir: None)  # plots are not under test here, and slow
    cfg = RunConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "encoder": {"device": "cpu"},
        "compare": {"models": {"zeroshot": str(tiny_bi_encoder), "bow": str(bow_bi_encoder)},
                    "modes": ["bm25", "dense", "hybrid-minmax", "hybrid-tuned"], "tune_rrf_k": [60], "min_dev_queries": 50},
    })
    with pytest.raises(GenqError, match="no labelled queries and no synthetic dev set.*genq-search generate"):
        pipeline.run_compare(cfg)
    write_dev_set(tmp_path / "run" / "generate", corpus, 80)
    comparison, summary = pipeline.run_compare(cfg, gate=("zeroshot", "bow"))
    assert set(summary["label_free"]) == {"bm25", "dense-zeroshot", "hybrid-minmax-zeroshot", "hybrid-tuned-zeroshot",
                                          "dense-bow", "hybrid-minmax-bow", "hybrid-tuned-bow"}
    assert summary["runs"] == {} and summary["dev_set"]["queries"] >= 70 and len(comparison.qrels) == summary["dev_set"]["queries"]
    assert summary["agreement"] == {"kendall_tau": None, "sign_agreement": None, "pairs": 0, "runs": 0, "contrasts": [], "fusion_grid": {}}
    for label, choice in summary["tuned_fusion"].items():
        assert choice["method"] in {"minmax", "zscore", "rrf", "dense", "bm25"} and isinstance(choice["decided"], bool)
        assert summary["label_free"][f"hybrid-tuned-{label}"]["ndcg@10"] == pytest.approx(choice["label_free_ndcg@10"])
    gate = summary["gate"]
    assert gate["passed"] and gate["model"] == str(bow_bi_encoder) and gate["label_p"] is None, gate
    reverse = pipeline.run_compare(cfg, gate=("bow", "zeroshot"))[1]["gate"]
    assert not reverse["passed"] and reverse["model"] == str(bow_bi_encoder)
    report = (tmp_path / "run" / "compare" / "report.md").read_text()
    assert "label-free" in report and "## Fusion tuned on the dev set" in report and "## Model gate" in report
    metrics = json.loads((tmp_path / "run" / "compare" / "metrics.json").read_text())
    assert metrics["tuned_fusion"]["bow"]["setting"] == summary["tuned_fusion"]["bow"]["setting"]


def test_cli_compare_hybrid_tuned_with_labels_measures_agreement(tiny_bi_encoder: Path, beir_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genq_search.cli import app

    run_dir = tmp_path / "run"
    write_dev_set(run_dir / "generate", load_collection(beir_dir, with_qrels=False).corpus, 6)
    args = ["compare", "--corpus", str(beir_dir), "--run-dir", str(run_dir), "--model", f"tiny={tiny_bi_encoder}",
            "--device", "cpu", "--mode", "bm25", "--mode", "dense", "--mode", "hybrid-rrf", "--mode", "hybrid-tuned"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| hybrid-tuned-tiny |" in result.output and "label-free ndcg@10" in result.output
    summary = json.loads((run_dir / "compare" / "summary.json").read_text())
    choice = summary["tuned_fusion"]["tiny"]
    assert not choice["decided"] and "dev set too small" in choice["reason"]
    assert summary["runs"]["hybrid-tuned-tiny"]["metrics"]["ndcg@10"] >= 0 and summary["agreement"]["pairs"] >= 3
    assert summary["agreement"]["fusion_grid"]["tiny"]["chosen"] == choice["setting"]
    empty = CliRunner().invoke(app, [*args[:4], str(tmp_path / "elsewhere"), *args[5:]])
    assert empty.exit_code == 1 and "mode 'hybrid-tuned' tunes the fusion on the synthetic dev set" in empty.output


@pytest.mark.parametrize("choice", [{"method": "minmax", "lexical_weight": 0.3, "rrf_k": None},
                                    {"method": "rrf", "lexical_weight": None, "rrf_k": 10},
                                    {"method": "dense", "lexical_weight": None, "rrf_k": None}])
def test_hybrid_tuned_search_ranks_as_the_in_memory_fusion(choice: dict, tiny_bi_encoder: Path, beir_dir: Path) -> None:
    from genq_search.encoders import load_encoder
    from genq_search.engines.embedded import EmbeddedBackend
    from genq_search.labelfree import mode_retrieval, results_for, retrieve_candidates
    from genq_search.passages import split_documents
    from genq_search.search import search

    collection = load_collection(beir_dir)
    encoder = load_encoder(str(tiny_bi_encoder), device="cpu")
    passages = split_documents(collection.corpus, encoder.tokenizer, encoder.max_seq_length, 32)
    backend = EmbeddedBackend()
    backend.index(collection.corpus, passages, encoder.encode_passages([p.text for p in passages], progress=False))
    cfg = CompareConfig(k=5, fusion_depth=4)
    retrieval = mode_retrieval(Mode.HYBRID_TUNED, cfg, choice)
    searched = search(backend, retrieval, collection.queries, encoder, cfg)
    in_memory = results_for(retrieve_candidates(backend, collection.queries, encoder, cfg, 8), retrieval, cfg.k)
    assert {q: list(r) for q, r in searched.items()} == {q: list(r) for q, r in in_memory.items()}
