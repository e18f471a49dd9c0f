"""ONNX export of a sentence-transformers bi-encoder and an ONNX Runtime encoder for the exported bundle.

The bundle is a directory: ``model.<variant>.onnx`` files (the whole embedding function: transformer, pooling,
normalisation; dynamic batch and sequence axes), the tokenizer files and ``manifest.json`` (dimension, max length,
pooling, normalisation, similarity, source model, variants with SHA-256 checksums, parity and speed on a sample).
Variants: ``fp32`` (graph-optimised with ONNX Runtime's transformer fusions), ``fp16`` (for CUDA) and ``int8``
(dynamic quantisation, per-channel weights, MatMul/Attention only).

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
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genq_search.data import file_sha256, fingerprint, write_json
from genq_search.encoders import row_cosines, usable_cores
from genq_search.errors import GenqError, InputError
from genq_search.models import resolve_model

logger = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp16", "int8")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FORMATS = ("sentence-transformers", "ml-commons")
# sentence-transformers pooling mode -> ML Commons model_config.pooling_mode
ML_COMMONS_POOLING = {"mean": "MEAN", "cls": "CLS", "max": "MAX", "mean_sqrt_len_tokens": "MEAN_SQRT_LEN"}
ML_COMMONS_IR_VERSION = 8  # ML Commons 2.19 runs ONNX Runtime 1.16.3 (DJL 0.31.1): IR <= 9, opset <= 19


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        raise GenqError("ONNX export and inference need onnx and onnxruntime: pip install 'genq-search[onnx]' "
                        "(or 'genq-search[gpu]' for onnxruntime-gpu)") from None


def load_profile(name: str) -> dict[str, Any]:
    profiles = json.loads(files("genq_search.export_profiles").joinpath("profiles.json").read_text())
    if name not in profiles or name.startswith("_"):
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

    Raises GenqError (and leaves nothing behind) when a variant misses its parity threshold.
    """
    _require_onnx()
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
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent if out_dir.parent.exists() else None))
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
            built["fp16"] = _to_fp16(work / "model.fp32.onnx", work / "model.fp16.onnx")
        if "int8" in settings["variants"]:
            built["int8"] = _quantise(work / "model.fp32.onnx", work / "model.int8.onnx")
        raw.unlink()
        tokenizer.save_pretrained(str(work / "tokenizer"))
        reference = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=info["normalize"])
        manifest: dict[str, Any] = {
            "format": "genq-search-onnx/1", "source_model": model_name, "source_fingerprint": fingerprint(path),
            "dimension": int(reference.shape[1]), "max_length": max_length, **info,
            "inputs": [n for n in INPUTS], "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "variants": {},
        }
        for variant in settings["variants"]:
            file = built[variant]
            encoder = OnnxEncoder(work, variant=variant, provider="cpu", verify=False, manifest=manifest | {"variants": {variant: {"file": file.name}}})
            encoder.encode_passages(texts[:8], progress=False)  # warm-up: session initialisation is not throughput
            start = time.perf_counter()
            vectors = encoder.encode_passages(texts, progress=False)
            seconds = time.perf_counter() - start
            cosine = row_cosines(vectors, reference)
            threshold = settings["min_mean_cosine"][variant]
            parity = {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "threshold": threshold,
                      "sample": len(texts), "cpu_docs_per_s": len(texts) / seconds, "passed": bool(cosine.mean() >= threshold)}
            manifest["variants"][variant] = {"file": file.name, "sha256": file_sha256(file), "bytes": file.stat().st_size, "parity": parity}
            logger.info("%s: mean cosine %.5f (min %.5f), %.1f docs/s on CPU", variant, parity["mean_cosine"], parity["min_cosine"], parity["cpu_docs_per_s"])
        failed = {v: m["parity"]["mean_cosine"] for v, m in manifest["variants"].items() if not m["parity"]["passed"]}
        if failed:
            raise GenqError(f"parity check failed for {failed} (mean cosine to PyTorch below the threshold); nothing written")
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
    vectors = []
    for start in range(0, len(texts), 32):
        features = model.tokenizer(texts[start : start + 32], padding=True, truncation=True, max_length=int(model.max_seq_length),
                                   return_tensors="np")
        features.setdefault("token_type_ids", np.zeros_like(features["input_ids"]))
        tokens = session.run(None, {n: features[n].astype(np.int64) for n in names})[0]
        vectors.append(pool(tokens, features["attention_mask"], info["pooling"]))
    pooled = np.concatenate(vectors)
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


def _to_fp16(fp32: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fp32)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out))
    return out


def _quantise(fp32: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out


def pick_providers(provider: str) -> list[str]:
    """ORT providers for ``auto`` (CUDA/TensorRT when available), ``cpu``, ``cuda`` or ``tensorrt``."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider in {"cpu"}:
        return ["CPUExecutionProvider"]
    wanted = {"cuda": ["CUDAExecutionProvider"], "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
    if provider in wanted:
        if wanted[provider][0] not in available:
            raise GenqError(f"ONNX Runtime provider '{wanted[provider][0]}' is not available (have {available}); "
                            "install onnxruntime-gpu on a machine with a GPU, or use --device cpu/auto")
        return wanted[provider] + ["CPUExecutionProvider"]
    if provider == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    raise GenqError(f"unknown ONNX provider '{provider}' (auto, cpu, cuda, tensorrt)")


class OnnxEncoder:
    """The Encoder interface over an exported bundle (``onnx:<dir>``): length-sorted batches, ORT session."""

    def __init__(self, bundle: str | Path, variant: str | None = None, provider: str = "auto", verify: bool = True,
                 manifest: dict[str, Any] | None = None, threads: int | None = None):
        _require_onnx()
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.bundle = Path(bundle)
        manifest_path = self.bundle / "manifest.json"
        if manifest is None:
            if not self.bundle.is_dir():
                raise GenqError(f"{self.bundle}: ONNX bundle not found (no such directory)")
            if not manifest_path.is_file():
                raise GenqError(f"{self.bundle}: not an ONNX bundle (no manifest.json); create one with `genq-search export`")
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InputError(manifest_path, f"malformed JSON ({exc.msg}, column {exc.colno}); re-export the bundle",
                                 exc.lineno) from None
            if not isinstance(manifest, dict) or not {"dimension", "max_length", "variants"} <= manifest.keys():
                raise GenqError(f"{manifest_path}: not a bundle manifest (dimension, max_length and variants missing); "
                                "re-export the bundle")
        self.manifest = manifest
        providers = pick_providers("cuda" if provider.startswith("cuda") else provider)
        on_gpu = providers[0] != "CPUExecutionProvider"
        self.variant = variant or self._fastest_passing(on_gpu)
        if self.variant not in manifest["variants"]:
            raise GenqError(f"{self.bundle}: no '{self.variant}' variant (have {', '.join(manifest['variants'])})")
        entry = manifest["variants"][self.variant]
        model_file = self.bundle / entry["file"]
        if verify:
            self._verify(model_file, entry)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.bundle / "tokenizer"))
        self.name = f"onnx:{self.bundle}"
        self.dim = int(manifest["dimension"])
        self.max_seq_length = int(manifest["max_length"])
        self.normalize = bool(manifest.get("normalize", True))
        self.truncated = 0

    def _fastest_passing(self, on_gpu: bool) -> str:
        variants = self.manifest["variants"]
        if on_gpu and "fp16" in variants:
            return "fp16"
        passing = {v: m for v, m in variants.items() if v != "fp16" and m.get("parity", {}).get("passed", True)}
        if not passing:
            raise GenqError(f"{self.bundle}: no CPU variant passed its parity check")
        return max(passing, key=lambda v: passing[v].get("parity", {}).get("cpu_docs_per_s", 0.0))

    def _verify(self, model_file: Path, entry: dict[str, Any]) -> None:
        if not model_file.is_file():
            raise GenqError(f"{self.bundle}: missing {model_file.name}")
        if file_sha256(model_file) != entry["sha256"]:
            raise GenqError(f"{self.bundle}: checksum mismatch for {model_file.name} (modified or corrupt); re-export it")
        for name, digest in self.manifest.get("tokenizer_files", {}).items():
            file = self.bundle / "tokenizer" / name
            if not file.is_file() or file_sha256(file) != digest:
                raise GenqError(f"{self.bundle}: tokenizer file {name} is missing or modified; re-export the bundle")

    def _encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: similar lengths share a batch
        for start in tqdm(range(0, len(texts), batch_size), desc="Batches", disable=not progress):
            rows = order[start : start + batch_size]
            batch = [texts[i] for i in rows]
            # one tokenizer pass: overflow windows tell which texts were truncated; only each text's first window is encoded
            features = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np",
                                      return_overflowing_tokens=True)
            windows = np.asarray(features["overflow_to_sample_mapping"])
            first = np.unique(windows, return_index=True)[1]
            self.truncated += int(np.sum(np.bincount(windows) > 1))
            feeds = {name: features[name][first].astype(np.int64) for name in self.input_names if name in features}
            if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
                feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
            vectors = self.session.run(None, feeds)[0].astype(np.float32)
            if self.normalize:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[rows] = vectors
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode(texts, batch_size, progress)

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        return self._encode(texts, batch_size, progress)

    def fingerprint(self) -> str:
        return fingerprint([self.manifest.get("source_fingerprint"), self.variant,
                            self.manifest["variants"][self.variant].get("sha256")])
