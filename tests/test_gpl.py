"""GPL: mining, pseudo-labelling (cross-encoder and query-likelihood teachers), MarginMSE training, TSDAE, adapt."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE
from test_genq import gen_cfg, small_corpus

from genq_search.config import LabelConfig, MineConfig, PretrainConfig, TrainConfig
from genq_search.errors import GenqError
from genq_search.generate import run_generate
from genq_search.label import QueryLikelihoodTeacher, run_label
from genq_search.mine import negative_pool, run_mine


@pytest.fixture(scope="module")
def generated(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], Path]:
    """24 documents with 2 generated queries each (tiny T5)."""
    corpus = small_corpus(24)
    out = tmp_path_factory.mktemp("gpl-generated") / "generate"
    run_generate(gen_cfg(tiny_t5, dev_queries=0), corpus, out)
    return corpus, out


def mine_cfg(encoder: Path, **changes: object) -> MineConfig:
    return MineConfig(**({"retrievers": [str(encoder)], "negatives": 5, "chunk_size": 8, "device": "cpu"} | changes))


def lexical(corpus: dict[str, dict[str, str]]):
    from genq_search.engines.embedded import EmbeddedBackend
    from genq_search.passages import split_documents

    backend = EmbeddedBackend()
    backend.index(corpus, split_documents(corpus, None, 0, 0), None)
    return backend


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


class Interrupt(Exception):
    pass


def test_mining_excludes_the_positive_and_resumes_to_identical_output(generated, tiny_bi_encoder: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from genq_search import mine

    corpus, gen_dir = generated
    cfg = mine_cfg(tiny_bi_encoder, bm25=True)
    full = run_mine(cfg, corpus, gen_dir, tmp_path / "full" / "mine", lexical(corpus))
    mined = rows(tmp_path / "full" / "mine" / "hard-negatives.jsonl")
    assert full["queries"] == len(mined) > 8
    for row in mined:
        assert set(row["negatives"]) == {str(tiny_bi_encoder), "bm25"}
        assert len(row["negatives"][str(tiny_bi_encoder)]) == 5
        assert not set(row["positives"]) & set(negative_pool(row))  # the positive is never its own negative

    calls = {"n": 0}
    original = mine._mine_chunk

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(mine, "_mine_chunk", interrupted)
    with pytest.raises(Interrupt):
        run_mine(cfg, corpus, gen_dir, tmp_path / "resumed" / "mine", lexical(corpus))
    assert not (tmp_path / "resumed" / "mine" / "hard-negatives.jsonl").exists()
    assert len(list((tmp_path / "resumed" / "mine" / "chunks").glob("chunk-*.jsonl"))) == 1
    monkeypatch.setattr(mine, "_mine_chunk", original)
    resumed = run_mine(cfg, corpus, gen_dir, tmp_path / "resumed" / "mine", lexical(corpus))
    assert resumed["queries"] == full["queries"]
    assert (tmp_path / "resumed" / "mine" / "hard-negatives.jsonl").read_bytes() == \
        (tmp_path / "full" / "mine" / "hard-negatives.jsonl").read_bytes()


def test_mining_asks_for_no_more_negatives_than_the_corpus_has(tiny_t5: Path, tiny_bi_encoder: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    corpus = small_corpus(4)
    run_generate(gen_cfg(tiny_t5), corpus, tmp_path / "generate")
    summary = run_mine(mine_cfg(tiny_bi_encoder, negatives=50), corpus, tmp_path / "generate", tmp_path / "mine")
    assert summary["negatives"] == 3 and "exceeds the 3 other documents" in caplog.text
    assert all(len(negative_pool(r)) == 3 for r in rows(tmp_path / "mine" / "hard-negatives.jsonl"))


def test_a_query_whose_positive_is_missing_is_named(generated, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    corpus, gen_dir = generated
    first_doc = min(corpus)
    smaller = {d: v for d, v in corpus.items() if d != first_doc}
    with pytest.raises(GenqError, match=rf"train.tsv: the positive '{first_doc}' of query 'genq-{first_doc}-0' is not in the corpus"):
        run_mine(mine_cfg(tiny_bi_encoder), smaller, gen_dir, tmp_path / "mine")
    assert not (tmp_path / "mine" / "manifest.json").exists()


def cross_encoder_logit(model, tokenizer, query: str, passage: str, query_tokens: int, passage_tokens: int) -> float:
    """The logit on [CLS] query[:query_tokens] [SEP] passage[:passage_tokens] [SEP], one pair, no padding."""
    import torch

    q = tokenizer(query, add_special_tokens=False)["input_ids"][:query_tokens]
    p = tokenizer(passage, add_special_tokens=False)["input_ids"][:passage_tokens]
    ids = [tokenizer.cls_token_id, *q, tokenizer.sep_token_id, *p, tokenizer.sep_token_id]
    types = [0] * (len(q) + 2) + [1] * (len(p) + 1)
    with torch.inference_mode():
        return float(model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0, 0])


def test_margins_are_cross_encoder_differences_and_labelling_resumes(generated, tiny_bi_encoder: Path, tiny_cross_encoder: Path,
                                                                     tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from genq_search.label import load_teacher
    from genq_search.passages import document_text

    corpus, gen_dir = generated
    run_mine(mine_cfg(tiny_bi_encoder), corpus, gen_dir, tmp_path / "mine")
    cfg = LabelConfig(teacher=str(tiny_cross_encoder), tuples_per_query=2, chunk_size=10, batch_size=8, max_length=64,
                      max_query_tokens=3, device="cpu")
    summary = run_label(cfg, corpus, gen_dir, tmp_path / "mine", tmp_path / "full")
    labelled = rows(tmp_path / "full" / "gpl-training.jsonl")
    mined = {r["qid"]: r for r in rows(tmp_path / "mine" / "hard-negatives.jsonl")}
    assert summary["tuples"] == len(labelled) == 2 * len(mined)
    assert summary["truncated_this_run"] > 0  # pydocs docstrings are longer than 64 tokens
    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (gen_dir / "gen-queries.jsonl").open()}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    for row in labelled[:12]:  # query and passage cut separately (3 and 64 tokens), not the pair to 64
        assert row["negative"] in negative_pool(mined[row["qid"]]) and row["positive"] in mined[row["qid"]]["positives"]
        pos, neg = (cross_encoder_logit(model, tokenizer, queries[row["qid"]], document_text(corpus[row[k]]), 3, 64)
                    for k in ("positive", "negative"))
        assert row["margin"] == pytest.approx(pos - neg, rel=1e-3, abs=1e-8)  # a random teacher: margins ~1e-5
    per_query = {}
    for row in labelled:
        per_query.setdefault(row["qid"], []).append(row["negative"])
    assert all(len(set(negs)) == 2 for negs in per_query.values())  # a fresh negative per tuple

    teacher = load_teacher(cfg, corpus)
    calls = {"n": 0}
    original = teacher.score

    def interrupted(pairs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt
        return original(pairs)

    teacher.score = interrupted  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        run_label(cfg, corpus, gen_dir, tmp_path / "mine", tmp_path / "resumed", teacher=teacher)
    assert not (tmp_path / "resumed" / "gpl-training.jsonl").exists()
    run_label(cfg, corpus, gen_dir, tmp_path / "mine", tmp_path / "resumed")
    assert (tmp_path / "resumed" / "gpl-training.jsonl").read_bytes() == (tmp_path / "full" / "gpl-training.jsonl").read_bytes()


def test_query_likelihood_teacher_equals_unbatched_log_likelihood(tiny_causal_lm: Path) -> None:
    import torch

    cfg = LabelConfig(teacher=f"lm:{tiny_causal_lm}", batch_size=3, max_length=40, device="cpu")
    teacher = QueryLikelihoodTeacher(str(tiny_causal_lm), cfg)
    pairs = [("how to sort a list", "Return a new sorted list from the items in iterable."),
             ("open file", "Open file and return a stream. Raise OSError upon failure. " * 6),
             ("a much longer query about reading bytes from a socket", "Receive data from the socket."),
             ("x", "Short.")]
    batched = teacher.score(pairs)
    assert teacher.truncated == 1
    for (query, passage), score in zip(pairs, batched, strict=True):
        ids, n_query = teacher._ids(query, passage)
        with torch.inference_mode():
            logprobs = torch.log_softmax(teacher.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        direct = sum(float(logprobs[p - 1, ids[p]]) for p in range(len(ids) - n_query, len(ids))) / n_query
        assert score == pytest.approx(direct, abs=1e-3)
    assert np.all(batched < 0)


def test_a_tuple_budget_is_drawn_round_robin_over_the_queries(tmp_path: Path) -> None:
    from genq_search.label import plan_tuples

    pools = {f"q{i}": [f"n{i}-{j}" for j in range(3)] for i in range(4)}
    with (tmp_path / "hard-negatives.jsonl").open("w") as f:
        for qid, pool in pools.items():
            f.write(json.dumps({"qid": qid, "positives": [f"p-{qid}"], "negatives": {"r": pool}}) + "\n")
        f.write(json.dumps({"qid": "q-empty", "positives": ["p"], "negatives": {"r": []}}) + "\n")
    tuples, without = plan_tuples(tmp_path, 1, seed=7, total=22)  # 5.5 per query, pools of 3
    assert len(tuples) == 22 and without == 1
    assert [q for q, _, _ in tuples[:8]] == ["q0", "q1", "q2", "q3"] * 2  # every query's first, then second tuple, ...
    counts = {q: [t[0] for t in tuples].count(q) for q in pools}
    assert counts == {"q0": 6, "q1": 6, "q2": 5, "q3": 5}
    for qid, pool in pools.items():
        negatives = [n for q, _, n in tuples if q == qid]  # each negative once before any twice
        assert sorted(negatives[:3]) == pool and len(set(negatives[3:])) == len(negatives[3:]) and set(negatives[3:]) <= set(pool)
        assert all(p == f"p-{qid}" for q, p, _ in tuples if q == qid)
    assert plan_tuples(tmp_path, 1, seed=7, total=22) == (tuples, without)  # seeded
    assert plan_tuples(tmp_path, 2, seed=7)[0] == plan_tuples(tmp_path, 2, seed=7, total=8)[0]  # 2 per query either way


def test_ensemble_teacher_margins_equal_the_hand_computed_combination(generated, tiny_bi_encoder: Path, tiny_causal_lm: Path,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rank_bm25 import BM25Okapi
    from sentence_transformers import SentenceTransformer

    from genq_search import label
    from genq_search.passages import document_text

    corpus, gen_dir = generated
    run_mine(mine_cfg(tiny_bi_encoder), corpus, gen_dir, tmp_path / "mine")
    spec = f"ensemble:bm25+bi:{tiny_bi_encoder}+lm:{tiny_causal_lm}"
    cfg = LabelConfig(teacher=spec, teacher_weights=[1.0, 2.0, 0.5], tuples=24, chunk_size=8, max_length=40, device="cpu")
    summary = run_label(cfg, corpus, gen_dir, tmp_path / "mine", tmp_path / "full")
    labelled = rows(tmp_path / "full" / "gpl-training.jsonl")
    assert summary["tuples"] == len(labelled) == 24

    queries = {json.loads(l)["_id"]: json.loads(l)["text"] for l in (gen_dir / "gen-queries.jsonl").open()}
    doc_ids = list(corpus)
    bm25 = BM25Okapi([re.findall(r"\w+", document_text(corpus[d]).lower()) for d in doc_ids])
    encoder = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    lm = label.QueryLikelihoodTeacher(str(tiny_causal_lm), cfg)

    @functools.cache
    def members(qid: str, doc: str) -> list[float]:
        query, text = queries[qid], document_text(corpus[doc])
        encoder.max_seq_length = 64  # the model's own limit (queries are short)
        query_vector = encoder.encode([query], convert_to_tensor=True)
        encoder.max_seq_length = 40 + 2  # max_length passage tokens and [CLS], [SEP]
        vectors = [query_vector[0], encoder.encode([text], convert_to_tensor=True)[0]]
        return [float(bm25.get_scores(re.findall(r"\w+", query.lower()))[doc_ids.index(doc)]),
                float(encoder.similarity(vectors[0], vectors[1])[0, 0]), float(lm.score([(query, text)])[0])]

    scores = np.array([[members(r["qid"], r["positive"]), members(r["qid"], r["negative"])] for r in labelled])  # tuple, side, member
    member_margins = scores[:, 0] - scores[:, 1]
    rms = np.sqrt((member_margins**2).mean(0))
    # a member whose margins are all 0 (BM25 when the tiny generator's queries share no word with either side) adds 0
    expected = (member_margins / np.where(rms > 0, rms, 1.0) * np.array([1.0, 2.0, 0.5])).sum(1)
    # relative too: margins divided by a member's small RMS (~0.01) carry its float32 rounding up to ~1e-4 absolute
    assert [r["margin"] for r in labelled] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-4)
    assert list(summary["member_margin_rms"].values()) == pytest.approx(rms.tolist(), rel=1e-4)
    stored = np.array([[r["scores"][m] for m in r["scores"]] for r in labelled])  # tuple, member, side
    assert stored.transpose(0, 2, 1) == pytest.approx(scores, abs=1e-4)

    alone = run_label(LabelConfig(teacher="bm25", tuples=24, chunk_size=8, device="cpu"), corpus, gen_dir, tmp_path / "mine",
                      tmp_path / "bm25")  # each member also teaches alone, on its raw scale
    assert [r["margin"] for r in rows(tmp_path / "bm25" / "gpl-training.jsonl")] == pytest.approx(member_margins[:, 0].tolist())
    assert alone["member_margin_rms"] is None

    calls = {"n": 0}
    original = label._label_chunk

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(label, "_label_chunk", interrupted)
    with pytest.raises(Interrupt):
        run_label(cfg, corpus, gen_dir, tmp_path / "mine", tmp_path / "resumed")
    monkeypatch.setattr(label, "_label_chunk", original)
    run_label(cfg, corpus, gen_dir, tmp_path / "mine", tmp_path / "resumed")
    assert (tmp_path / "resumed" / "gpl-training.jsonl").read_bytes() == (tmp_path / "full" / "gpl-training.jsonl").read_bytes()


@pytest.mark.parametrize(("teacher", "weights", "message"), [
    ("ensemble:bm25", None, "two or more distinct members"),
    ("ensemble:bm25+bm25", None, "two or more distinct members"),
    ("ensemble:bm25+bi:x", [1.0], "one weight per member"),
    ("bm25", [1.0], "one weight per member"),
])
def test_bad_ensemble_specs_fail_before_any_work(teacher: str, weights: list[float] | None, message: str, tmp_path: Path) -> None:
    from genq_search.label import teacher_members

    with pytest.raises((GenqError, ValueError), match=message):  # the typed config or the teacher parser refuses it
        teacher_members(LabelConfig(teacher=teacher, teacher_weights=weights))


def test_gpl_training_reduces_the_margin_mse_loss(generated, tiny_bi_encoder: Path, tiny_cross_encoder: Path, tmp_path: Path) -> None:
    from genq_search.train import run_train

    corpus, gen_dir = generated
    run_mine(mine_cfg(tiny_bi_encoder), corpus, gen_dir, tmp_path / "mine")
    run_label(LabelConfig(teacher=str(tiny_cross_encoder), tuples_per_query=4, max_length=64, device="cpu"),
              corpus, gen_dir, tmp_path / "mine", tmp_path / "label")
    cfg = TrainConfig(base_model=str(tiny_bi_encoder), epochs=10, batch_size=16, learning_rate=5e-3,
                      max_seq_length=48, device="cpu", checkpoint_steps=1000)
    summary = run_train(cfg, corpus, gen_dir, tmp_path / "train", label_dir=tmp_path / "label")
    losses = summary["losses"]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    card = json.loads((Path(summary["model"]) / "GENQ_TRAINING.json").read_text())
    assert card["method"].startswith("GPL") and card["hyper_parameters"]["score_scale"] > 0  # calibrated to the teacher


def test_tsdae_pretraining_reduces_the_reconstruction_loss(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from genq_search.pretrain import corpus_sentences, run_pretrain

    corpus = small_corpus(40)
    sentences = corpus_sentences(corpus)
    cfg = PretrainConfig(epochs=3, batch_size=16, learning_rate=5e-3, max_sentences=96, max_seq_length=48, device="cpu")
    summary = run_pretrain(cfg, corpus, str(tiny_bi_encoder), tmp_path / "pretrain")
    assert summary["sentences"] == min(96, len(sentences))
    losses = summary["losses"]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert (Path(summary["model"]) / "modules.json").is_file()


@pytest.mark.parametrize("method", ["gpl", "tsdae+gpl"])
def test_adapt_gpl_runs_end_to_end_and_resumes(method: str, tiny_t5: Path, tiny_bi_encoder: Path, tiny_cross_encoder: Path,
                                               tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genq_search.cli import app

    config = tmp_path / "adapt.toml"
    config.write_text(f"""
run_dir = "{tmp_path / 'run'}"
method = "{method}"
[corpus]
path = "{SAMPLE}"
[generate]
generator = "{tiny_t5}"
queries_per_passage = "2"
max_passages = 16
batch_size = 8
max_new_tokens = 8
min_query_words = 1
[pretrain]
max_sentences = 64
batch_size = 16
[mine]
retrievers = ["{tiny_bi_encoder}"]
bm25 = true
negatives = 5
[label]
teacher = "{tiny_cross_encoder}"
max_length = 64
[train]
base_model = "{tiny_bi_encoder}"
batch_size = 8
max_seq_length = 48
[compare]
modes = ["bm25", "dense", "hybrid-minmax"]
""")
    result = CliRunner().invoke(app, ["adapt", "--config", str(config), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    label = method.replace("+", "-")
    for name in ["| bm25 |", "| dense-zeroshot |", f"| dense-{label} |", f"| hybrid-minmax-{label} |"]:
        assert name in result.output
    summary = json.loads((tmp_path / "run" / "adapt-summary.json").read_text())
    assert summary["adapt"]["mine"]["retrievers"] == [str(tiny_bi_encoder), "bm25"]
    assert ("pretrain" in summary["adapt"]) == (method == "tsdae+gpl")
    model_file = tmp_path / "run" / "train-gpl" / "model" / "modules.json"
    stamp = model_file.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "run" / "compare")
    again = CliRunner().invoke(app, ["adapt", "--config", str(config), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert model_file.stat().st_mtime_ns == stamp  # finished stages are skipped


def test_gpl_stages_run_one_by_one_from_the_cli(tiny_t5: Path, tiny_bi_encoder: Path, tiny_cross_encoder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genq_search.cli import app

    config = tmp_path / "gpl.toml"
    config.write_text(f"""
run_dir = "{tmp_path / 'run'}"
[corpus]
path = "{SAMPLE}"
[generate]
generator = "{tiny_t5}"
queries_per_passage = "1"
max_passages = 12
max_new_tokens = 8
min_query_words = 1
[train]
base_model = "{tiny_bi_encoder}"
batch_size = 4
max_seq_length = 48
""")
    runner = CliRunner()
    steps = [["generate"], ["mine", "--retriever", str(tiny_bi_encoder), "--negatives", "3"],
             ["label", "--teacher", str(tiny_cross_encoder)], ["train", "--method", "gpl"]]
    for step in steps:
        result = runner.invoke(app, [*step, "--config", str(config), "--device", "cpu"])
        assert result.exit_code == 0, (step, result.output)
    assert "examples" in result.output and (tmp_path / "run" / "train-gpl" / "model" / "modules.json").is_file()
    missing = runner.invoke(app, ["label", "--config", str(config), "--run-dir", str(tmp_path / "other")])
    assert missing.exit_code == 1 and "gen-queries.jsonl: file not found" in missing.output


def test_out_of_memory_halves_the_teacher_batch_and_is_reported(generated, tiny_bi_encoder: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    corpus, gen_dir = generated
    run_mine(mine_cfg(tiny_bi_encoder), corpus, gen_dir, tmp_path / "mine")

    class SmallMemoryTeacher:
        """Scores by word overlap; 'runs out of memory' above 4 pairs per batch."""

        truncated, batch_size = 0, 32

        def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
            if self.batch_size > 4:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return np.array([len(set(q.split()) & set(p.split())) for q, p in pairs], dtype=float)

    teacher = SmallMemoryTeacher()
    summary = run_label(LabelConfig(teacher="overlap"), corpus, gen_dir, tmp_path / "mine", tmp_path / "label", teacher=teacher)
    assert teacher.batch_size == 4 and summary["tuples"] > 0
    assert "teacher batch size lowered to 8" in caplog.text and "lowered to 4" in caplog.text


def test_unfetchable_default_teacher_and_retriever_fail_fast_with_an_offline_hint(generated, tmp_path: Path) -> None:
    corpus, gen_dir = generated
    with pytest.raises(GenqError, match=r"cannot load bi-encoder 'sentence-transformers/msmarco-distilbert-base-v3'.*--retriever sentence-transformers/all-MiniLM"):
        run_mine(MineConfig(device="cpu"), corpus, gen_dir, tmp_path / "mine")
    (tmp_path / "mine").mkdir(exist_ok=True)  # a mined pool, so that labelling gets as far as loading its teacher
    (tmp_path / "mine" / "manifest.json").write_text('{"settings_hash": "x"}')
    (tmp_path / "mine" / "hard-negatives.jsonl").write_text(json.dumps({"qid": "genq-x", "positives": ["a"], "negatives": {"r": ["b"]}}) + "\n")
    with pytest.raises(GenqError, match=r"cross-encoder teacher 'cross-encoder/ms-marco-MiniLM-L-6-v2'.*--teacher lm:google/gemma-3-270m"):
        run_label(LabelConfig(device="cpu"), corpus, gen_dir, tmp_path / "mine", tmp_path / "label")
    assert not (tmp_path / "label" / "gpl-training.jsonl").exists()


def test_training_evaluates_on_qrels_keeps_the_best_checkpoint_and_resumes(generated, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from genq_search.data import load_collection
    from genq_search.train import run_train

    corpus, gen_dir = generated
    labelled = load_collection(SAMPLE)
    judged = {q: labelled.qrels[q] for q in list(labelled.qrels)[:6]}
    docs = {d: labelled.corpus[d] for d in corpus.keys() | {d for j in judged.values() for d in j}}
    evaluation = type(labelled)(docs, {q: labelled.queries[q] for q in judged}, judged)
    cfg = TrainConfig(base_model=str(tiny_bi_encoder), epochs=2, batch_size=8, max_seq_length=48, device="cpu",
                      eval_split="test", eval_steps=3)
    summary = run_train(cfg, corpus, gen_dir, tmp_path / "train", eval_collection=evaluation)
    assert len(summary["evaluations"]) >= 2 and all("eval_test_cosine_ndcg@10" in e for e in summary["evaluations"])
    assert summary["best_checkpoint"] and "checkpoint-" in summary["best_checkpoint"]
    # a rerun after the manifest is lost resumes from the last checkpoint instead of starting over
    (tmp_path / "train" / "manifest.json").unlink()
    again = run_train(cfg, corpus, gen_dir, tmp_path / "train", eval_collection=evaluation)
    assert again["resumed"] and again["steps"] == summary["steps"]


def test_a_query_written_for_a_window_is_labelled_against_that_window() -> None:
    """passage_windows: the teacher scores a query's positive as the window the query was written for (what training
    uses), its negatives as whole documents."""
    from genq_search.label import _label_chunk

    corpus = {"d1": {"title": "", "text": "whole first document"}, "d2": {"title": "", "text": "whole second document"}}
    seen: list[tuple[str, str]] = []

    class Recorder:
        truncated, batch_size = 0, 8

        def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
            seen.extend(pairs)
            return np.arange(len(pairs), dtype=np.float32)

    rows = _label_chunk([("q1", "d1", "d2"), ("q2", "d2", "d1")], {"q1": "first", "q2": "second"}, corpus, Recorder(),
                        ["teacher"], windows={"q1": "the second window of d1"})
    assert seen == [("first", "the second window of d1"), ("first", "whole second document"),
                    ("second", "whole second document"), ("second", "whole first document")]
    assert [r["margin"] for r in rows] == [-1.0, -1.0]
