"""ONNX export of a sentence-transformers bi-encoder into a bundle (``genq_search.onnx_encoder`` runs it).

The bundle is a directory: ``model.<variant>.onnx`` files (the whole embedding function: transformer, pooling,
normalisation; dynamic batch and sequence axes), the tokenizer files, ``parity/`` (32 sample texts and their PyTorch
vectors, to check a variant on the device it is loaded on) and ``manifest.json`` (dimension, max length, pooling,
normalisation, similarity, source model, variants with SHA-256 checksums, parity and speed on a sample).
Variants: ``fp32`` (graph-optimised with ONNX Runtime's transformer fusions), ``fp16`` (for CUDA: fused for the GPU,
checked on it at load) and ``int8`` (dynamic quantisation, per-channel weights, MatMul/Attention only), run by ONNX
Runtime; and, with the ``openvino`` extra, OpenVINO IR of the same graph under ``openvino/``: ``openvino-fp32``,
``openvino-bf16`` (the fp32 IR run in bf16, built on CPUs with bf16 instructions) and ``openvino-int8`` (static int8,
NNCF, calibrated on the sample passages: the user's own documents). A required variant (the profile's ``variants``)
that misses its parity threshold stops the export; an optional one (OpenVINO's, in the ``cpu`` and ``all`` profiles)
is left out with a warning. The encoder runs the fastest variant that passed parity on this machine's runtimes.

Besides, the transformer alone (token embeddings, pooled by the caller) is written in the layouts the ecosystem loads:
``sentence-transformers/`` (the model folder with ``onnx/model.onnx``, sentence-transformers' ``backend="onnx"``
layout) and ``ml-commons/<name>.zip`` (one ``.onnx`` graph + ``tokenizer.json``: ML Commons pools the first output
itself) with its model config in the manifest, both parity-checked like the variants.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from genq_search.data import file_sha256, fingerprint, write_json
from genq_search.encoders import row_cosines
from genq_search.errors import GenqError
from genq_search.models import resolve_model

logger = logging.getLogger(__name__)

MIN_CALIBRATION = 64  # passages: fewer give int8 activation ranges that do not hold on the corpus
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FORMATS = ("sentence-transformers", "ml-commons")
# sentence-transformers pooling mode -> ML Commons model_config.pooling_mode
ML_COMMONS_POOLING = {"mean": "MEAN", "cls": "CLS", "max": "MAX", "mean_sqrt_len_tokens": "MEAN_SQRT_LEN"}
# sentence-transformers pooling mode -> its pooling_mode_<key> flag in the layout every release reads
ST_LEGACY_POOLING = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "weightedmean": "weightedmean_tokens", "lasttoken": "lasttoken"}
ML_COMMONS_IR_VERSION = 8  # ML Commons 2.19 runs ONNX Runtime 1.16.3 (DJL 0.31.1): IR <= 9, opset <= 19
# sample texts whose PyTorch vectors the bundle keeps, to check fp16 on the GPU it is loaded on (export runs on the CPU)
PARITY_REFERENCE_TEXTS = 32


def _profiles() -> dict[str, dict[str, Any]]:
    data = json.loads(files("genq_search.export_profiles").joinpath("profiles.json").read_text())
    return {name: profile for name, profile in data.items() if not name.startswith("_")}


def load_profile(name: str) -> dict[str, Any]:
    profiles = _profiles()
    if name not in profiles:
        raise GenqError(f"unknown export profile '{name}' (choose from {', '.join(k for k in profiles if not k.startswith('_'))})")
    return profiles[name]


class _EmbeddingGraph:
    """Wraps a SentenceTransformer as ``forward(input_ids, attention_mask, token_type_ids) -> embedding``."""

    @staticmethod
    def build(model: Any) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, st: Any):
                super().__init__()
                self.st = st

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
                return self.st(features)["sentence_embedding"]

        return Wrapper(model).eval()


def _describe(model: Any) -> dict[str, Any]:
    from sentence_transformers import models as st_models

    modules = list(model)
    if not modules or not isinstance(modules[0], st_models.Transformer):
        raise GenqError("only sentence-transformers bi-encoders (Transformer + Pooling [+ Normalize]) can be exported")
    pooling = next((m for m in modules if isinstance(m, st_models.Pooling)), None)
    if pooling is None:
        raise GenqError("the model has no Pooling module: it is not a sentence-transformers bi-encoder")
    extra = [type(m).__name__ for m in modules[1:] if not isinstance(m, st_models.Pooling | st_models.Normalize)]
    if extra:
        raise GenqError(f"cannot export modules {extra}: only Transformer, Pooling and Normalize are supported")
    return {
        "pooling": _pooling_mode(pooling),
        "normalize": any(isinstance(m, st_models.Normalize) for m in modules),
        "similarity": str(getattr(model, "similarity_fn_name", None) or "cosine"),
    }


def _pooling_mode(pooling: Any) -> str:
    """"mean", "cls", "max", "mean_sqrt_len_tokens", ... ("a+b" for several): the attribute in sentence-transformers
    6, ``get_pooling_mode_str()`` before."""
    mode = getattr(pooling, "pooling_mode", None) or pooling.get_pooling_mode_str()
    return "+".join(mode) if isinstance(mode, list | tuple) else str(mode)


def export_bundle(
    model_name: str,
    out_dir: Path,
    profile: str = "cpu",
    sample_texts: list[str] | None = None,
    overwrite: bool = False,
    opset: int | None = None,
    formats: tuple[str, ...] = FORMATS,
) -> dict[str, Any]:
    """Export ``model_name`` to an ONNX bundle in ``out_dir`` and check parity against PyTorch on ``sample_texts``;
    ``formats`` adds the sentence-transformers folder and/or the ML Commons zip.

    Raises GenqError (and leaves nothing behind) when a required variant misses its parity threshold; an optional
    one that misses is left out of the bundle (``left_out`` in the manifest) with a warning.
    """
    from genq_search.onnx_encoder import OnnxEncoder, require_onnx

    require_onnx()
    import onnx
    import torch
    from sentence_transformers import SentenceTransformer

    settings = load_profile(profile)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise GenqError(f"unknown export format(s) {sorted(unknown)} (choose from {', '.join(FORMATS)})")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise GenqError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    path = resolve_model(model_name, "bi-encoder")
    try:
        model = SentenceTransformer(path, device="cpu", model_kwargs={"attn_implementation": "eager"})
    except (OSError, ValueError) as exc:
        raise GenqError(f"cannot load bi-encoder '{model_name}': {exc}") from None
    info = _describe(model)
    max_length = int(model.max_seq_length)
    texts = sample_texts or ["a short query", "a somewhat longer passage about retrieval with several words in it"]
    wanted_ov = _openvino_variants(settings, len(texts))
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # the work dir beside it: the final rename stays on one filesystem
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        tokenizer = model.tokenizer
        example = tokenizer(texts[:2], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        if "token_type_ids" not in example:
            example["token_type_ids"] = torch.zeros_like(example["input_ids"])
        raw = work / "model.raw.onnx"
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"sentence_embedding": {0: "batch"}}
        with torch.no_grad():
            torch.onnx.export(
                _EmbeddingGraph.build(model), tuple(example[n] for n in INPUTS), str(raw), input_names=list(INPUTS),
                output_names=["sentence_embedding"], dynamic_axes=axes, opset_version=opset or settings["opset"], dynamo=False,
            )
        onnx.checker.check_model(str(raw))
        config = model[0].auto_model.config
        built = {"fp32": _optimise(raw, work / "model.fp32.onnx", config)}
        if "fp16" in settings["variants"]:
            built["fp16"] = _gpu_fp16(raw, work / "model.fp16.onnx", config)
        if "int8" in settings["variants"]:
            built["int8"] = _quantise(work / "model.fp32.onnx", work / "model.int8.onnx")
        if wanted_ov:
            built |= _openvino(raw, work / "openvino", wanted_ov, tokenizer, texts, max_length)
        raw.unlink()
        tokenizer.save_pretrained(str(work / "tokenizer"))
        reference = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=info["normalize"])
        manifest: dict[str, Any] = {
            "format": "genq-search-onnx/1", "source_model": model_name, "source_fingerprint": fingerprint(path),
            "dimension": int(reference.shape[1]), "max_length": max_length, **info,
            "inputs": [n for n in INPUTS], "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "variants": {},
        }
        for variant, file in built.items():
            entry = {"file": file.relative_to(work).as_posix(), **_runtime(variant)}
            encoder = OnnxEncoder(work, variant=variant, provider="cpu", verify=False, manifest=manifest | {"variants": {variant: entry}})
            encoder.encode_passages(texts[:8], progress=False)  # warm-up: session initialisation is not throughput
            start = time.perf_counter()
            vectors = encoder.encode_passages(texts, progress=False)
            seconds = time.perf_counter() - start
            cosine = row_cosines(vectors, reference)
            threshold = settings["min_mean_cosine"][variant]
            parity = {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "threshold": threshold,
                      "sample": len(texts), "cpu_docs_per_s": len(texts) / seconds, "passed": bool(cosine.mean() >= threshold)}
            weights = file.with_suffix(".bin")  # an OpenVINO IR's weights, beside its .xml
            manifest["variants"][variant] = {
                **entry, "sha256": file_sha256(file), "parity": parity,
                "bytes": file.stat().st_size + (weights.stat().st_size if weights.is_file() else 0),
                **({"weights_sha256": file_sha256(weights)} if weights.is_file() else {})}
            logger.info("%s: mean cosine %.5f (min %.5f), %.1f docs/s on CPU", variant, parity["mean_cosine"], parity["min_cosine"], parity["cpu_docs_per_s"])
        _drop_failed_variants(manifest, work, settings)
        manifest["parity_reference"] = _write_parity_reference(work, texts[:PARITY_REFERENCE_TEXTS], reference[:PARITY_REFERENCE_TEXTS])
        if formats:
            manifest.update(_ecosystem_formats(model, model_name, info, work, texts, reference, formats, opset or settings["opset"]))
        manifest["tokenizer_files"] = {p.name: file_sha256(p) for p in sorted((work / "tokenizer").iterdir())}
        write_json(work / "manifest.json", manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _runtime(variant: str) -> dict[str, str]:
    """How a variant runs: ONNX Runtime, or OpenVINO at an inference precision."""
    from genq_search.onnx_encoder import OPENVINO_VARIANTS

    if variant in OPENVINO_VARIANTS:
        return {"runtime": "openvino", "precision": "bf16" if variant == "openvino-bf16" else "f32"}
    return {"runtime": "onnxruntime"}


def _drop_failed_variants(manifest: dict[str, Any], work: Path, settings: dict[str, Any]) -> None:
    """Leave out (with a warning) an optional variant that missed its parity threshold on this machine; a required one
    that missed stops the export (nothing written), in one line naming it, its figures and what to do."""
    missed = {v: m["parity"] for v, m in manifest["variants"].items() if not m["parity"]["passed"]}
    if not missed:
        return
    figures = {v: f"{v} (mean cosine {p['mean_cosine']:.5f} to PyTorch, threshold {p['threshold']})" for v, p in missed.items()}
    required = [v for v in missed if v in settings["variants"]]
    if required:
        without = [name for name, profile in _profiles().items() if not set(required) & set(profile["variants"])]
        advice = (f"export with --profile {' or '.join(without)}, which does not build {'them' if len(required) > 1 else 'it'}"
                  if without else "the model does not export faithfully to ONNX with this machine's runtime")
        raise GenqError(f"parity check failed for {', '.join(figures[v] for v in required)}; nothing written: {advice}")
    dropped = {manifest["variants"].pop(variant)["file"] for variant in missed}
    for variant in missed:
        logger.warning("%s left out of the bundle: it missed its parity check on this machine's runtime", figures[variant])
    for name in dropped - {entry["file"] for entry in manifest["variants"].values()}:  # bf16 runs the fp32 IR
        (work / name).unlink()
        (work / name).with_suffix(".bin").unlink(missing_ok=True)  # an OpenVINO IR's weights
    if (work / "openvino").is_dir() and not any((work / "openvino").iterdir()):
        (work / "openvino").rmdir()
    manifest["left_out"] = missed


def _openvino_variants(settings: dict[str, Any], samples: int) -> list[str]:
    """The OpenVINO variants to build: the profile's ``variants`` (required) and ``optional_variants`` (built when
    the openvino extra is installed); bf16 only where the CPU has it, int8 only with enough calibration passages."""
    from genq_search.onnx_encoder import (
        OPENVINO_VARIANTS,
        cpu_has_bf16,
        openvino_available,
        require_openvino,
    )

    required = [v for v in settings["variants"] if v in OPENVINO_VARIANTS]
    optional = [v for v in settings.get("optional_variants", []) if v not in required]
    if required:
        require_openvino()
    elif optional and not openvino_available():
        logger.info("OpenVINO variants not built (pip install 'genq-search[openvino]' adds them)")
        return []
    wanted = required + optional
    if "openvino-bf16" in wanted and not cpu_has_bf16():
        logger.warning("openvino-bf16 not built: this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
        wanted.remove("openvino-bf16")
    if "openvino-int8" in wanted and samples < MIN_CALIBRATION:
        message = (f"openvino-int8 needs at least {MIN_CALIBRATION} calibration passages from the corpus, got {samples} "
                   "(export --corpus DIR, --sample N)")
        if "openvino-int8" in required:
            raise GenqError(message)
        logger.warning("%s; not built", message)
        wanted.remove("openvino-int8")
    return wanted


def _openvino(raw: Path, out: Path, variants: list[str], tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Path]:
    """OpenVINO IR of the raw (unfused) graph: OpenVINO applies its own fusions. int8 is NNCF's static quantisation
    for transformers (SmoothQuant, fast bias correction; softmax and layer norms stay float), calibrated on ``texts``."""
    from genq_search.onnx_encoder import require_openvino

    ov = require_openvino()
    out.mkdir()
    model = ov.convert_model(str(raw))
    built = {}
    if {"openvino-fp32", "openvino-bf16"} & set(variants):
        ov.save_model(model, str(out / "model.fp32.xml"), compress_to_fp16=False)
        built |= {v: out / "model.fp32.xml" for v in ("openvino-fp32", "openvino-bf16") if v in variants}
    if "openvino-int8" in variants:
        import nncf

        batches = list(_feed_batches(tokenizer, texts, max_length, 16))
        quantised = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))
        ov.save_model(quantised, str(out / "model.int8.xml"), compress_to_fp16=False)
        built["openvino-int8"] = out / "model.int8.xml"
    return built


def _feed_batches(tokenizer: Any, texts: list[str], max_length: int, size: int) -> Iterator[dict[str, np.ndarray]]:
    """``texts`` tokenised ``size`` at a time as int64 graph feeds (``token_type_ids`` zeros where the tokenizer has none)."""
    for start in range(0, len(texts), size):
        features = tokenizer(texts[start : start + size], padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds = {name: np.asarray(features[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
        feeds["token_type_ids"] = np.asarray(features.get("token_type_ids", np.zeros_like(feeds["input_ids"])), dtype=np.int64)
        yield feeds


def _token_graph_inputs(model_type: str) -> list[str]:
    """ML Commons' rule (and optimum's layout for these models): ``token_type_ids`` only for BERT and ALBERT."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if model_type in ("bert", "albert") else [])


def _export_token_graph(model: Any, texts: list[str], out: Path, opset: int) -> list[str]:
    """The transformer alone: (input_ids, attention_mask[, token_type_ids]) -> ``last_hidden_state``; returns its inputs."""
    import onnx
    import torch

    transformer = model[0].auto_model
    names = _token_graph_inputs(transformer.config.model_type)

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: Any) -> Any:
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    example = model.tokenizer(texts[:2], padding=True, truncation=True, max_length=int(model.max_seq_length), return_tensors="pt")
    example.setdefault("token_type_ids", torch.zeros_like(example["input_ids"]))
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"last_hidden_state": {0: "batch", 1: "sequence"}}
    with torch.no_grad():
        torch.onnx.export(TokenEmbeddings().eval(), tuple(example[n] for n in names), str(out), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    graph = onnx.load(str(out))
    graph.ir_version = min(graph.ir_version, ML_COMMONS_IR_VERSION)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out))
    return names


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence-transformers pooling of token embeddings ``(batch, seq, dim)`` under ``mask`` ``(batch, seq)``."""
    m = mask[..., None].astype(np.float32)
    if mode == "cls":
        return tokens[:, 0]
    if mode == "max":
        return np.where(m > 0, tokens, -1e9).max(1)
    summed, counts = (tokens * m).sum(1), np.maximum(m.sum(1), 1e-9)
    return summed / (np.sqrt(counts) if mode == "mean_sqrt_len_tokens" else counts)


def _ecosystem_formats(model: Any, model_name: str, info: dict[str, Any], work: Path, texts: list[str],
                       reference: np.ndarray, formats: tuple[str, ...], opset: int) -> dict[str, Any]:
    """Write the token-embedding graph as a sentence-transformers folder and/or an ML Commons zip (parity-checked)."""
    import zipfile

    import onnxruntime as ort

    if info["pooling"] not in ML_COMMONS_POOLING:
        logger.warning("pooling '%s' has no ML Commons equivalent: the sentence-transformers folder and the ML Commons zip "
                       "are not written", info["pooling"])
        return {}
    graph = work / "token-embeddings.onnx"
    names = _export_token_graph(model, texts, graph, opset)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    pooled = np.concatenate([pool(session.run(None, {n: feeds[n] for n in names})[0], feeds["attention_mask"], info["pooling"])
                             for feeds in _feed_batches(model.tokenizer, texts, int(model.max_seq_length), 32)])
    if info["normalize"]:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    cosine = row_cosines(pooled, reference)
    threshold = 0.9999  # the fp32 variant's: the same weights, pooled outside the graph
    parity = {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "threshold": threshold, "sample": len(texts),
              "passed": bool(cosine.mean() >= threshold)}
    if not parity["passed"]:
        raise GenqError(f"parity check failed for the token-embedding graph (mean cosine {parity['mean_cosine']:.5f}); nothing written")
    out: dict[str, Any] = {}
    if "sentence-transformers" in formats:
        folder = work / "sentence-transformers"
        model.save(str(folder))
        _portable_st_config(folder, info, int(reference.shape[1]), int(model.max_seq_length))
        (folder / "onnx").mkdir()
        shutil.copyfile(graph, folder / "onnx" / "model.onnx")
        out["sentence_transformers"] = {"dir": folder.name, "onnx": "onnx/model.onnx", "inputs": names, "parity": parity}
    if "ml-commons" in formats:
        name = _ml_commons_name(model_name)
        tokenizer_json = json.loads((work / "tokenizer" / "tokenizer.json").read_text())
        # ML Commons tokenises with this file alone: its truncation must be the model's, or the cluster embeds long texts
        # differently from the tool
        tokenizer_json["truncation"] = {"direction": "Right", "max_length": int(model.max_seq_length), "strategy": "LongestFirst", "stride": 0}
        tokenizer_json["padding"] = None
        (work / "ml-commons").mkdir()
        archive = work / "ml-commons" / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(graph, f"{name}.onnx")
            zf.writestr("tokenizer.json", json.dumps(tokenizer_json))
        config = model[0].auto_model.config
        out["ml_commons"] = {
            "zip": f"ml-commons/{archive.name}", "sha256": file_sha256(archive), "bytes": archive.stat().st_size,
            "inputs": names, "ir_version": ML_COMMONS_IR_VERSION, "parity": parity,
            "model_config": {"model_type": config.model_type, "embedding_dimension": int(reference.shape[1]),
                             "framework_type": "sentence_transformers", "pooling_mode": ML_COMMONS_POOLING[info["pooling"]],
                             "normalize_result": bool(info["normalize"]), "all_config": json.dumps(config.to_dict())},
        }
    graph.unlink()
    return out


def _portable_st_config(folder: Path, info: dict[str, Any], dimension: int, max_length: int) -> None:
    """Rewrite the module configs sentence-transformers 6 saved in the layout every release reads (that of the hub's
    models): ST 6 names its modules by paths ST <= 5 cannot import (``sentence_transformers.base.modules...``) and
    writes new config keys, while the only ``backend="onnx"`` loader that runs today (optimum-onnx 0.1) needs
    transformers < 4.58, hence ST <= 5. ST 6 loads this layout too (it is the hub's)."""
    modules = json.loads((folder / "modules.json").read_text())
    for module in modules:
        module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[-1]  # Transformer, Pooling, Normalize
        if module["type"].endswith(".Pooling"):
            legacy = ST_LEGACY_POOLING.get(info["pooling"])
            write_json(folder / module["path"] / "config.json", {
                "word_embedding_dimension": dimension,
                **{f"pooling_mode_{key}": key == legacy for key in ST_LEGACY_POOLING.values()}, "include_prompt": True})
    write_json(folder / "modules.json", modules)
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


def _ml_commons_name(model_name: str) -> str:
    """``genq-<model folder or hub name>``, reduced to the characters ML Commons accepts in a model file name."""
    tail = Path(model_name.rstrip("/")).name if Path(model_name).exists() else model_name.rsplit("/", 1)[-1]
    return "genq-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", tail).strip("-.")[:60] or "model")


def _optimise(raw: Path, out: Path, config: Any) -> Path:
    from onnxruntime.transformers import optimizer

    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    # "bert" fusions cover the BERT-family encoders sentence-transformers models are built on
    optimised = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden)
    logger.info("ONNX Runtime fusions: %s", {k: v for k, v in optimised.get_fused_operator_statistics().items() if v})
    optimised.save_model_to_file(str(out))
    return out


def _gpu_fp16(raw: Path, out: Path, config: Any) -> Path:
    """The CUDA variant, ONNX Runtime's recipe for BERT-family models on GPUs: its transformer fusions targeted at the
    GPU (``use_gpu``; without ONNX Runtime's CPU graph pass, which the CPU variants get and a CUDA session redoes for
    its own provider), then fp16 weights and compute with fp32 inputs and outputs."""
    from onnxruntime.transformers import optimizer

    optimised = optimizer.optimize_model(str(raw), model_type="bert", num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                                         hidden_size=int(getattr(config, "hidden_size", 0) or 0), opt_level=0, use_gpu=True)
    optimised.convert_float_to_float16(keep_io_types=True)
    optimised.save_model_to_file(str(out))
    return out


def _write_parity_reference(work: Path, texts: list[str], vectors: np.ndarray) -> dict[str, Any]:
    """Keep sample texts and their PyTorch vectors in the bundle (``parity/``), for the check on the device a variant
    is loaded on (fp16 on CUDA). The texts are the export's sample: the user's own documents."""
    folder = work / "parity"
    folder.mkdir()
    write_json(folder / "texts.json", texts)
    np.save(folder / "vectors.npy", vectors.astype(np.float32))
    return {"texts": "parity/texts.json", "vectors": "parity/vectors.npy", "sha256": {
        "texts": file_sha256(folder / "texts.json"), "vectors": file_sha256(folder / "vectors.npy")}}


def _quantise(fp32: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out
