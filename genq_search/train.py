"""GenQ training: fine-tune a bi-encoder on (generated query, source passage) pairs with
MultipleNegativesRankingLoss and the no-duplicates batch sampler (sentence-transformers v3+ trainer)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from genq_search.config import TrainConfig
from genq_search.data import Corpus, fingerprint, mark_stage_complete, read_manifest, read_qrels, read_queries, stage_is_complete
from genq_search.encoders import pick_device
from genq_search.errors import GenqError
from genq_search.models import resolve_model
from genq_search.passages import document_text

logger = logging.getLogger(__name__)


def training_pairs(generate_dir: Path, corpus: Corpus) -> list[dict[str, str]]:
    """(query, passage) pairs from the generate stage; queries whose document is missing are an error."""
    queries = read_queries(Path(generate_dir) / "gen-queries.jsonl")
    qrels = read_qrels(Path(generate_dir) / "gen-qrels" / "train.tsv")
    pairs = []
    for qid, judged in qrels.items():
        for doc_id in judged:
            if doc_id not in corpus:
                raise GenqError(f"{generate_dir}: generated query '{qid}' points at unknown document '{doc_id}'")
            pairs.append({"anchor": queries[qid], "positive": document_text(corpus[doc_id])})
    return pairs


def run_train(cfg: TrainConfig, corpus: Corpus, generate_dir: Path, stage_dir: Path, overwrite: bool = False) -> dict[str, Any]:
    """Train into ``stage_dir/model`` (checkpoints in ``stage_dir/checkpoints``; resumes from the last one)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    if cfg.method != "genq":
        raise GenqError(f"training method '{cfg.method}' is not available yet (genq)")
    stage_dir = Path(stage_dir)
    pairs = training_pairs(generate_dir, corpus)
    settings = fingerprint([cfg.model_dump(mode="json", exclude={"device"}), read_manifest(generate_dir).get("settings_hash")])
    if stage_is_complete(stage_dir, settings) and not overwrite:
        logger.info("train: complete in %s, skipping", stage_dir)
        return read_manifest(stage_dir)
    distinct_passages = len({p["positive"] for p in pairs})
    batch_size = cfg.batch_size
    if distinct_passages < 2:
        raise GenqError(f"only {distinct_passages} distinct passage(s) to train on: in-batch negatives need at least 2")
    if batch_size > distinct_passages:
        batch_size = distinct_passages
        logger.warning("batch size %d exceeds the %d distinct passages; using %d", cfg.batch_size, distinct_passages, batch_size)
    device = pick_device(cfg.device)
    model = SentenceTransformer(resolve_model(cfg.base_model, "base bi-encoder"), device=device)
    model.max_seq_length = cfg.max_seq_length
    checkpoints = stage_dir / "checkpoints"
    if overwrite and checkpoints.exists():
        shutil.rmtree(checkpoints)
    cuda = device.startswith("cuda")
    import torch

    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=cfg.epochs, per_device_train_batch_size=batch_size,
        learning_rate=cfg.learning_rate, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="steps", save_steps=cfg.checkpoint_steps,
        save_total_limit=2, logging_steps=max(1, min(50, math.ceil(len(pairs) / batch_size / 10))),
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=cuda and not torch.cuda.is_bf16_supported(),
        report_to="none", use_cpu=not cuda, dataloader_drop_last=False,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                         loss=MultipleNegativesRankingLoss(model))
    resume = any(checkpoints.glob("checkpoint-*")) if checkpoints.exists() else False
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    out = stage_dir / "model"
    tmp = stage_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.model_card_data.model_id = None
    model.save(str(tmp))
    (tmp / "GENQ_TRAINING.json").write_text(json.dumps({
        "method": "GenQ (MultipleNegativesRankingLoss, no-duplicates batches)", "base_model": cfg.base_model,
        "training_pairs": len(pairs), "distinct_passages": distinct_passages, "generated_queries": str(generate_dir),
        "hyper_parameters": {**cfg.model_dump(mode="json"), "batch_size": batch_size},
    }, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    summary = {"model": str(out), "pairs": len(pairs), "batch_size": batch_size, "steps": result.global_step,
               "train_loss": result.training_loss, "losses": losses, "resumed": resume, "device": device}
    mark_stage_complete(stage_dir, settings, summary)
    return summary
