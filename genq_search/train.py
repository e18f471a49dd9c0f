"""Bi-encoder training with the sentence-transformers v3+ trainer.

- ``genq``: (generated query, source passage) pairs, MultipleNegativesRankingLoss, no-duplicates batches.
- ``gpl``: (query, positive, negative, teacher margin) tuples from the label stage, MarginMSE on the model's own
  similarity scaled to the teacher's margins.

Both use the model's own similarity (``similarity_fn_name``: cosine, or dot product for dot-product models), as
search and the ONNX bundle do; so does the best-checkpoint metric. Warm-up is ``ceil(warmup_ratio * steps)`` steps.
Checkpoints go to ``<stage>/checkpoints``, keyed by the settings hash (which includes the base model folder's
fingerprint): a rerun under the same settings resumes from the last one, under other settings it starts afresh.
The final model is a normal sentence-transformers folder with a model card and ``GENQ_TRAINING.json``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from pathlib import Path
from typing import Any

from genq_search.config import TrainConfig
from genq_search.data import (
    Collection,
    Corpus,
    fingerprint,
    iter_jsonl,
    mark_stage_complete,
    read_manifest,
    stage_is_complete,
    write_json,
)
from genq_search.encoders import model_fingerprint, pick_device
from genq_search.errors import GenqError
from genq_search.generate import read_generated, read_positives
from genq_search.models import resolve_model
from genq_search.passages import document_text

logger = logging.getLogger(__name__)

METHODS = {"genq": "GenQ (MultipleNegativesRankingLoss, no-duplicates batches)",
           "gpl": "GPL (MarginMSE on teacher margins, the model's similarity scaled)"}


def training_pairs(generate_dir: Path, corpus: Corpus) -> list[dict[str, str]]:
    """(query, passage) pairs from the generate stage; queries whose document is missing are an error."""
    queries, qrels = read_generated(generate_dir, corpus)
    windows = read_positives(generate_dir)
    return [{"anchor": queries[qid], "positive": windows.get(qid) or document_text(corpus[doc_id])}
            for qid, judged in qrels.items() for doc_id in judged]


def training_tuples(generate_dir: Path, label_dir: Path, corpus: Corpus) -> list[dict[str, Any]]:
    """(query, positive, negative, margin) rows from the label stage (each document's text built once and shared)."""
    queries, _ = read_generated(generate_dir, corpus)
    windows = read_positives(generate_dir)
    path = Path(label_dir) / "gpl-training.jsonl"
    texts: dict[str, str] = {}
    rows = []
    for line_no, row in iter_jsonl(path):
        for field in ("qid", "positive", "negative", "margin"):
            if field not in row:
                raise GenqError(f"{path}:{line_no}: field '{field}' is missing")
        if row["qid"] not in queries or row["positive"] not in corpus or row["negative"] not in corpus:
            raise GenqError(f"{path}:{line_no}: unknown query or document id (was the label stage run on another corpus?)")
        for doc_id in (row["positive"], row["negative"]):
            if doc_id not in texts:
                texts[doc_id] = document_text(corpus[doc_id])
        rows.append({"query": queries[row["qid"]], "positive": windows.get(row["qid"]) or texts[row["positive"]], "negative": texts[row["negative"]],
                     "label": float(row["margin"])})
    return rows


def train_stage_dir(run_dir: Path, method: str) -> Path:
    """Where a run keeps the model trained with ``method`` (GenQ keeps its original ``train/``)."""
    return Path(run_dir) / ("train" if method == "genq" else f"train-{method}")


def save_model(model: Any, stage_dir: Path, card: dict[str, Any]) -> Path:
    """Save a sentence-transformers model with ``GENQ_TRAINING.json`` into ``stage_dir/model``, swapped in only when complete."""
    out, tmp = Path(stage_dir) / "model", Path(stage_dir) / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.model_card_data.model_id = None
    model.save(str(tmp))
    (tmp / "GENQ_TRAINING.json").write_text(json.dumps(card, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def set_max_seq_length(model: Any, wanted: int) -> None:
    """Use ``wanted`` tokens, capped by the transformer's position embeddings (and said so when capped)."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    limit = getattr(config, "max_position_embeddings", None) or wanted
    if wanted > limit:
        logger.warning("max_seq_length %d exceeds the model's %d positions; using %d", wanted, limit, limit)
    model.max_seq_length = min(wanted, limit)


def calibrate_score_scale(model: Any, rows: list[dict[str, Any]], seed: int, sample: int = 256) -> float:
    """The scale that puts the base model's margins (its own similarity) on the teacher's scale (equal root mean
    square on a sample of tuples). MarginMSE otherwise spends its first steps squashing or stretching all margins,
    which wrecks a normalised encoder (cosine margins ~0.1) under a teacher whose margins are ~1-10."""
    import numpy as np

    picked = random.Random(seed).sample(rows, min(sample, len(rows)))
    q, p, n = (model.encode([r[k] for r in picked], batch_size=32, convert_to_tensor=True) for k in ("query", "positive", "negative"))
    student = (model.similarity_pairwise(q, p) - model.similarity_pairwise(q, n)).double().cpu().numpy()
    teacher = np.array([r["label"] for r in picked])
    student_rms = float(np.sqrt(np.mean(student**2)))
    scale = float(np.sqrt(np.mean(teacher**2))) / student_rms if student_rms > 1e-6 else 1.0
    logger.info("MarginMSE student score scale %.2f (teacher margin RMS %.3f, base-model margin RMS %.4f)",
                scale, float(np.sqrt(np.mean(teacher**2))), student_rms)
    return scale


class ScaledSimilarity:
    """``scale * similarity(a, b)`` pairwise: MarginMSE on a normalised encoder needs scores on the teacher's scale,
    not in [-1, 1]."""

    def __init__(self, scale: float, similarity: str):
        from sentence_transformers import SimilarityFunction

        self.scale, self.pairwise = scale, SimilarityFunction.to_similarity_pairwise_fn(similarity)
        self.__name__ = f"{self.pairwise.__name__}_x{scale:g}"

    def __call__(self, a: Any, b: Any) -> Any:
        return self.scale * self.pairwise(a, b)


def warmup_steps(rows: int, batch_size: int, epochs: int, ratio: float) -> int:
    """``ceil(ratio * optimizer steps)``, passed to the trainer as a step count: transformers before 5 reads a float
    ``warmup_steps`` as steps (0.1 step: no warm-up), so a ratio there would not mean 10% on every version."""
    return math.ceil(ratio * epochs * math.ceil(rows / batch_size))


def keep_checkpoints(checkpoints: Path, key: str) -> bool:
    """Wipe ``checkpoints`` unless they were written under ``key`` (settings hash and batch size), mark them with it,
    and say whether there is one to resume from."""
    marker = checkpoints / "settings.json"
    if checkpoints.exists() and not (marker.is_file() and json.loads(marker.read_text()).get("settings_hash") == key):
        logger.info("train: checkpoints in %s were written under other settings; starting afresh", checkpoints)
        shutil.rmtree(checkpoints)
    write_json(marker, {"settings_hash": key})
    drop_incomplete_checkpoints(checkpoints)
    return any(checkpoints.glob("checkpoint-*"))


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def drop_incomplete_checkpoints(checkpoints: Path) -> None:
    """Remove checkpoints a killed run left half-written (the trainer writes a checkpoint's files in place, its
    ``trainer_state.json`` last) or half-deleted (rotation): resuming from one would fail on every rerun."""
    for folder in sorted(Path(checkpoints).glob("checkpoint-*")):
        try:
            weights = any(folder.rglob("*.safetensors")) or any(folder.rglob("pytorch_model.bin"))
            complete = weights and all((folder / name).is_file() for name in CHECKPOINT_FILES)
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            complete = False
        if not complete:
            logger.warning("removing the incomplete checkpoint %s (an interrupted run was saving or deleting it)", folder)
            shutil.rmtree(folder, ignore_errors=True)


def run_train(cfg: TrainConfig, corpus: Corpus, generate_dir: Path, stage_dir: Path, label_dir: Path | None = None,
              eval_collection: Collection | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train into ``stage_dir/model`` (checkpoints in ``stage_dir/checkpoints``; resumes from the last one): GPL on the
    label stage's tuples when ``label_dir`` is given, else GenQ on the generated pairs."""
    method = "genq" if label_dir is None else "gpl"
    stage_dir = Path(stage_dir)
    inputs = [read_manifest(generate_dir).get("settings_hash")]
    if method == "gpl":
        inputs.append(read_manifest(label_dir).get("settings_hash"))  # type: ignore[arg-type]
    scale_rule = "rms-calibrated" if method == "gpl" and cfg.score_scale is None else None
    local_base = Path(cfg.base_model).expanduser()  # e.g. the TSDAE output: retrain when it is rewritten
    base_identity = model_fingerprint(str(local_base)) if local_base.exists() else None
    settings = fingerprint([{**cfg.hashed({"device"}), "method": method}, inputs, bool(eval_collection), scale_rule, base_identity])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("train: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    rows = training_pairs(generate_dir, corpus) if method == "genq" else training_tuples(generate_dir, label_dir, corpus)  # type: ignore[arg-type]
    batch_size = cfg.batch_size
    distinct_passages = len({r["positive"] for r in rows})
    if method == "genq":
        if distinct_passages < 2:
            raise GenqError(f"only {distinct_passages} distinct passage(s) to train on: in-batch negatives need at least 2")
        if batch_size > distinct_passages:
            batch_size = distinct_passages
            logger.warning("batch size %d exceeds the %d distinct passages; using %d", cfg.batch_size, distinct_passages, batch_size)
    elif not rows:
        raise GenqError(f"{label_dir}: no training tuples")
    device = pick_device(cfg.device)
    checkpoints = stage_dir / "checkpoints"
    if overwrite and checkpoints.exists():
        shutil.rmtree(checkpoints)
    while True:
        resume = keep_checkpoints(checkpoints, fingerprint([settings, batch_size]))
        model, trainer, scale = _trainer(cfg, method, rows, batch_size, device, checkpoints, eval_collection)
        try:
            result = trainer.train(resume_from_checkpoint=True if resume else None)
            break
        except RuntimeError as exc:  # CUDA out of memory: start again with half the batch, from the base model
            if "out of memory" not in str(exc).lower() or batch_size == 1:
                raise
            import torch

            del model, trainer
            torch.cuda.empty_cache()
            shutil.rmtree(checkpoints, ignore_errors=True)
            batch_size //= 2
            logger.warning("out of memory at batch size %d; restarting with %d (lower --train-batch-size)", batch_size * 2, batch_size)
    history = trainer.state.log_history
    losses_seen = [row["loss"] for row in history if "loss" in row]
    out = save_model(model, stage_dir, {
        "method": METHODS[method], "base_model": cfg.base_model, "training_examples": len(rows),
        "distinct_passages": distinct_passages, "generated_queries": str(generate_dir),
        "pseudo_labels": str(label_dir) if label_dir else None,
        "hyper_parameters": {**cfg.model_dump(mode="json"), "method": method, "batch_size": batch_size, "score_scale": scale},
        "similarity_fn_name": model.similarity_fn_name, "best_checkpoint": trainer.state.best_model_checkpoint,
    })
    summary = {"model": str(out), "method": method, "pairs": len(rows), "batch_size": batch_size, "steps": result.global_step,
               "similarity_fn_name": model.similarity_fn_name, "warmup_steps": trainer.args.warmup_steps,
               "train_loss": result.training_loss, "losses": losses_seen, "resumed": resume, "device": device,
               "evaluations": [{k: v for k, v in row.items() if "ndcg" in k or k == "step"} for row in history if any("ndcg" in k for k in row)],
               "best_checkpoint": trainer.state.best_model_checkpoint}
    mark_stage_complete(stage_dir, settings, summary)
    return summary


def _trainer(cfg: TrainConfig, method: str, rows: list[dict[str, Any]], batch_size: int, device: str, checkpoints: Path,
             eval_collection: Collection | None) -> tuple[Any, Any, float | None]:
    """The base model, its loss (MNRL with no-duplicate batches, or MarginMSE), both on the model's own similarity,
    and a configured trainer."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    model = SentenceTransformer(resolve_model(cfg.base_model, "base bi-encoder"), device=device)
    set_max_seq_length(model, cfg.max_seq_length)
    similarity = model.similarity_fn_name  # sentence-transformers says "cosine" when the model names none
    if method == "genq":  # the usual temperature 1/20 for cosine; unbounded scores (dot product) are not scaled
        mnrl = losses.MultipleNegativesRankingLoss(model, scale=20.0 if similarity == "cosine" else 1.0, similarity_fct=model.similarity)
        loss, sampler, scale = mnrl, BatchSamplers.NO_DUPLICATES, None
    else:
        scale = cfg.score_scale or calibrate_score_scale(model, rows, cfg.seed)
        loss, sampler = losses.MarginMSELoss(model, similarity_fct=ScaledSimilarity(scale, similarity)), BatchSamplers.BATCH_SAMPLER
    evaluator, eval_args = _evaluator(eval_collection, cfg, similarity)
    cuda = device.startswith("cuda")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=cfg.epochs, per_device_train_batch_size=batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=warmup_steps(len(rows), batch_size, cfg.epochs, cfg.warmup_ratio),
        seed=cfg.seed, data_seed=cfg.seed,
        batch_sampler=sampler, save_strategy="steps", save_steps=cfg.eval_steps if evaluator else cfg.checkpoint_steps,
        save_total_limit=2, logging_steps=max(1, min(50, math.ceil(len(rows) / batch_size / 10))),
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=cuda and not torch.cuda.is_bf16_supported(),
        report_to="none", use_cpu=not cuda, dataloader_drop_last=False, **eval_args,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss, evaluator=evaluator)
    return model, trainer, scale


def _evaluator(collection: Collection | None, cfg: TrainConfig, similarity: str) -> tuple[Any, dict[str, Any]]:
    """nDCG@10 on labelled queries under the model's ``similarity`` every ``eval_steps``; the best checkpoint (by
    that metric) is loaded at the end."""
    if collection is None:
        return None, {}
    from sentence_transformers import SimilarityFunction
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    name = cfg.eval_split or "eval"
    evaluator = InformationRetrievalEvaluator(
        queries=collection.queries, corpus={d: document_text(doc) for d, doc in collection.corpus.items()},
        relevant_docs={q: {d for d, s in judged.items() if s > 0} for q, judged in collection.qrels.items()},
        name=name, ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[100], map_at_k=[100],
        score_functions={similarity: SimilarityFunction.to_similarity_fn(similarity)}, main_score_function=similarity,
        show_progress_bar=False)
    metric = f"eval_{name}_{similarity}_ndcg@10"
    return evaluator, {"eval_strategy": "steps", "eval_steps": cfg.eval_steps, "load_best_model_at_end": True,
                       "metric_for_best_model": metric, "greater_is_better": True}
