"""Training: warm-up in steps, checkpoints keyed by the settings (and the base model), the model's own similarity."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE
from test_genq import gen_cfg, small_corpus

from genq_search.config import TrainConfig
from genq_search.generate import run_generate


@pytest.fixture(scope="module")
def generated(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], Path]:
    """24 documents with 2 generated queries each (tiny T5)."""
    corpus = small_corpus(24)
    out = tmp_path_factory.mktemp("train-generated") / "generate"
    run_generate(gen_cfg(tiny_t5, dev_queries=0), corpus, out)
    return corpus, out


@pytest.fixture(scope="module")
def dot_bi_encoder(tiny_bi_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bi-encoder without its Normalize module, declared a dot-product model."""
    from sentence_transformers import SentenceTransformer

    cosine = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    model = SentenceTransformer(modules=[cosine[0], cosine[1]], similarity_fn_name="dot", device="cpu")
    out = tmp_path_factory.mktemp("tiny-dot-encoder")
    model.save(str(out))
    return out


def evaluation_set(corpus: dict[str, dict[str, str]]):
    from genq_search.data import load_collection

    labelled = load_collection(SAMPLE)
    judged = {q: labelled.qrels[q] for q in list(labelled.qrels)[:6]}
    docs = {d: labelled.corpus[d] for d in corpus.keys() | {d for j in judged.values() for d in j}}
    return type(labelled)(docs, {q: labelled.queries[q] for q in judged}, judged)


def test_warmup_is_a_step_count_the_scheduler_sees(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from genq_search.train import _trainer, warmup_steps

    texts = [f"{doc['title']} {doc['text']}" for doc in small_corpus(22).values()]
    rows = [{"anchor": text.split()[0], "positive": text} for text in texts]
    cfg = TrainConfig(base_model=str(tiny_bi_encoder), epochs=2, batch_size=4, warmup_ratio=0.25, max_seq_length=32, device="cpu")
    _, trainer, _ = _trainer(cfg, "genq", rows, 4, "cpu", tmp_path / "checkpoints", None)
    total = len(trainer.get_train_dataloader()) * cfg.epochs
    expected = math.ceil(0.25 * total)
    assert (total, expected) == (12, 3) and warmup_steps(len(rows), 4, 2, 0.25) == expected
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    factor = trainer.lr_scheduler.lr_lambdas[0]  # the learning rate's multiplier at each step
    assert [factor(step) for step in range(expected + 1)] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert factor(expected + 1) < 1


def test_training_with_changed_settings_starts_fresh(generated, tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from genq_search.train import run_train

    corpus, gen_dir = generated
    base = tmp_path / "base"  # a local base model folder, as TSDAE writes it
    shutil.copytree(tiny_bi_encoder, base)
    cfg = TrainConfig(base_model=str(base), epochs=1, batch_size=16, max_seq_length=32, device="cpu", checkpoint_steps=2)
    first = run_train(cfg, corpus, gen_dir, tmp_path / "train")
    assert not first["resumed"] and any((tmp_path / "train" / "checkpoints").glob("checkpoint-*"))
    (tmp_path / "train" / "manifest.json").unlink()  # as if interrupted after its checkpoints
    again = run_train(cfg, corpus, gen_dir, tmp_path / "train")
    assert again["resumed"]  # same settings: resumes

    (tmp_path / "train" / "manifest.json").unlink()
    changed = run_train(cfg.model_copy(update={"learning_rate": 1e-4}), corpus, gen_dir, tmp_path / "train")
    assert not changed["resumed"] and changed["steps"] == first["steps"]  # a new learning rate: starts afresh

    rerun_base = cfg.model_copy(update={"learning_rate": 1e-4})
    stamp = (tmp_path / "train" / "model" / "modules.json").stat().st_mtime_ns
    assert run_train(rerun_base, corpus, gen_dir, tmp_path / "train")["resumed"] is False  # complete: skipped
    assert (tmp_path / "train" / "model" / "modules.json").stat().st_mtime_ns == stamp
    for path in base.rglob("*"):  # the base model is rewritten (a TSDAE rerun): no longer complete, no resume either
        os.utime(path, (path.stat().st_mtime + 100, path.stat().st_mtime + 100))
    retrained = run_train(rerun_base, corpus, gen_dir, tmp_path / "train")
    assert not retrained["resumed"] and (tmp_path / "train" / "model" / "modules.json").stat().st_mtime_ns != stamp


def test_dot_product_models_train_evaluate_and_save_as_dot_product(generated, dot_bi_encoder: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from genq_search.train import _trainer, run_train

    corpus, gen_dir = generated
    cfg = TrainConfig(base_model=str(dot_bi_encoder), epochs=1, batch_size=16, max_seq_length=32, device="cpu",
                      eval_split="test", eval_steps=2)
    evaluation = evaluation_set(corpus)
    summary = run_train(cfg, corpus, gen_dir, tmp_path / "train", eval_collection=evaluation)
    assert summary["similarity_fn_name"] == "dot" and summary["best_checkpoint"]
    assert all("eval_test_dot_ndcg@10" in e for e in summary["evaluations"]) and summary["evaluations"]
    assert SentenceTransformer(summary["model"], device="cpu").similarity_fn_name == "dot"

    rows = [{"anchor": "a query", "positive": "a passage"}, {"anchor": "another", "positive": "more text"}]
    model, trainer, _ = _trainer(cfg, "genq", rows, 2, "cpu", tmp_path / "ck", evaluation)
    assert trainer.loss.similarity_fct == model.similarity and trainer.loss.scale == 1.0  # MNRL on raw dot products
    assert trainer.args.metric_for_best_model == "eval_test_dot_ndcg@10"
    gpl_rows = [{"query": "a query", "positive": "a passage", "negative": "other text", "label": 2.0}] * 4
    _, gpl_trainer, scale = _trainer(cfg, "gpl", gpl_rows, 2, "cpu", tmp_path / "ck2", None)
    assert gpl_trainer.loss.similarity_fct.__name__ == f"pairwise_dot_score_x{scale:g}"


def test_cosine_models_train_on_cosine(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    from genq_search.train import _trainer

    cfg = TrainConfig(base_model=str(tiny_bi_encoder), max_seq_length=32, device="cpu", score_scale=5.0)
    rows = [{"query": "a query", "positive": "a passage", "negative": "other text", "label": 2.0}] * 4
    model, trainer, _ = _trainer(cfg, "gpl", rows, 2, "cpu", tmp_path / "ck", None)
    assert model.similarity_fn_name == "cosine" and trainer.loss.similarity_fct.__name__ == "pairwise_cos_sim_x5"
    genq = TrainConfig(base_model=str(tiny_bi_encoder), max_seq_length=32, device="cpu")
    model, trainer, _ = _trainer(genq, "genq", [{"anchor": "q", "positive": "p"}, {"anchor": "r", "positive": "s"}], 2, "cpu", tmp_path / "ck2", None)
    assert trainer.loss.similarity_fct == model.similarity and trainer.loss.scale == 20.0
