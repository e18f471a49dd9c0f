"""The Encoder interface over an exported bundle (``onnx:<dir>``, written by ``genq_search.export``): ONNX Runtime or
OpenVINO, the fastest variant that passed parity on this machine's runtimes, checked on the device it runs on."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from genq_search.data import file_sha256, fingerprint
from genq_search.encoders import length_batches, prefetched, row_cosines, usable_cores
from genq_search.errors import GenqError, InputError

logger = logging.getLogger(__name__)

OPENVINO_VARIANTS = ("openvino-fp32", "openvino-bf16", "openvino-int8")
VARIANTS = ("fp32", "fp16", "int8", *OPENVINO_VARIANTS)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        raise GenqError("ONNX export and inference need onnx and onnxruntime: pip install 'genq-search[onnx]' "
                        "(or 'genq-search[gpu]' for onnxruntime-gpu)") from None


def require_openvino() -> Any:
    try:
        import openvino
    except ModuleNotFoundError:
        raise GenqError("OpenVINO variants need openvino and nncf: pip install 'genq-search[openvino]'") from None
    return openvino


def openvino_available() -> bool:
    from importlib.util import find_spec

    return find_spec("openvino") is not None


@functools.cache
def cpu_has_bf16() -> bool:
    """OpenVINO's own view of the CPU: bf16 kernels exist (AVX512-BF16 or AMX). Asked once per process."""
    return "BF16" in require_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


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
    """The Encoder interface over an exported bundle (``onnx:<dir>``): length-sorted batches tokenised a batch ahead of
    the forward pass, one ONNX Runtime session or OpenVINO compiled model (the variant's ``runtime``).

    On a GPU provider the vectors of the bundle's parity texts are checked against their PyTorch vectors at load
    (``device_parity``; export checks on the CPU only): an automatically chosen variant that misses its threshold
    there falls back to fp32, a requested one is refused. Inputs and outputs are bound to the device (``io_binding``).
    Both default to "on a GPU provider"."""

    def __init__(self, bundle: str | Path, variant: str | None = None, provider: str = "auto", verify: bool = True,
                 manifest: dict[str, Any] | None = None, threads: int | None = None, device_parity: bool | None = None,
                 io_binding: bool | None = None):
        require_onnx()
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
        self.providers = pick_providers("cuda" if provider.startswith("cuda") else provider)
        on_gpu = self.providers[0] != "CPUExecutionProvider"
        self.threads = threads or usable_cores()
        self.io_binding = on_gpu if io_binding is None else io_binding
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.bundle / "tokenizer"))
        self.name = f"onnx:{self.bundle}"
        self.dim = int(manifest["dimension"])
        self.max_seq_length = int(manifest["max_length"])
        self.normalize = bool(manifest.get("normalize", True))
        self.truncated = 0
        self._load(variant or self._fastest_passing(on_gpu), verify)
        self.device_parity: dict[str, Any] | None = None
        if on_gpu if device_parity is None else device_parity:
            self._check_device_parity(requested=variant is not None, verify=verify)

    def _load(self, variant: str, verify: bool) -> None:
        """Open ``variant``'s session (ONNX Runtime) or compiled model (OpenVINO)."""
        import onnxruntime as ort

        if variant not in self.manifest["variants"]:
            raise GenqError(f"{self.bundle}: no '{variant}' variant (have {', '.join(self.manifest['variants'])})")
        self.variant = variant
        entry = self.manifest["variants"][variant]
        model_file = self.bundle / entry["file"]
        if verify:
            self._verify(model_file, entry)
        if entry.get("runtime") == "openvino":
            ov = require_openvino()
            compiled = ov.Core().compile_model(str(model_file), "CPU", {
                "INFERENCE_PRECISION_HINT": entry.get("precision", "f32"), "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads})
            self.input_names = {name for port in compiled.inputs for name in port.get_names()}
            self._run = lambda feeds: compiled(feeds)[0]
            return
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=self.providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        # where the session runs (ONNX Runtime without CUDA runs a CUDA provider list on the CPU) and its output's name
        self._output = ("cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu", self.session.get_outputs()[0].name)
        self._run = self._run_bound if self.io_binding else lambda feeds: self.session.run(None, feeds)[0]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One forward pass with the inputs and the output bound to the session's device (IOBinding): ONNX Runtime
        allocates the output there and copies it back once, instead of through its generic ``run`` path."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        device, name = self._output
        binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _check_device_parity(self, requested: bool, verify: bool) -> None:
        """Compare this device's vectors of the bundle's parity texts with PyTorch's; fall back to fp32 or refuse."""
        self.device_parity = self._device_parity()
        unchecked = self.device_parity is None and self.variant == "fp16"
        failed = self.device_parity is not None and not self.device_parity["passed"]
        if unchecked and requested:
            logger.warning("%s: fp16 is not checked on this device (the bundle predates parity texts; re-export it)", self.bundle)
        elif (unchecked or failed) and not requested and self.variant != "fp32":
            why = (f"mean cosine {self.device_parity['mean_cosine']:.5f} to PyTorch on this device, below "
                   f"{self.device_parity['threshold']}" if failed else "not checkable: the bundle predates parity texts; re-export it")
            logger.warning("%s: %s %s; using fp32", self.bundle, self.variant, why)
            self._load("fp32", verify)
            self.device_parity = self._device_parity()
            failed = self.device_parity is not None and not self.device_parity["passed"]
        if failed:
            raise GenqError(f"{self.bundle}: variant {self.variant} fails its parity check on {self.providers[0]} (mean cosine "
                            f"{self.device_parity['mean_cosine']:.5f} to PyTorch, threshold {self.device_parity['threshold']}); "
                            "choose another variant (onnx:<dir>@fp32) or re-export")

    def _device_parity(self) -> dict[str, Any] | None:
        """Mean cosine of this session's vectors of the bundle's parity texts to their PyTorch vectors (None: a bundle
        exported without them)."""
        reference = self.manifest.get("parity_reference")
        if not reference:
            return None
        files = {key: self.bundle / reference[key] for key in ("texts", "vectors")}
        for key, file in files.items():
            if not file.is_file() or file_sha256(file) != reference["sha256"][key]:
                raise GenqError(f"{self.bundle}: {reference[key]} is missing, modified or corrupt; re-export the bundle")
        texts = json.loads(files["texts"].read_text(encoding="utf-8"))
        truncated = self.truncated
        cosine = row_cosines(self._encode(texts, 8, False), np.load(files["vectors"]))
        self.truncated = truncated  # the check is not the caller's work
        threshold = float(self.manifest["variants"][self.variant].get("parity", {}).get("threshold", 0.99))
        return {"variant": self.variant, "provider": self.providers[0], "mean_cosine": float(cosine.mean()),
                "min_cosine": float(cosine.min()), "threshold": threshold, "sample": len(texts),
                "passed": bool(cosine.mean() >= threshold)}

    def _fastest_passing(self, on_gpu: bool) -> str:
        """On a GPU fp16 (checked there at load), or fp32 in a bundle without it; else the CPU variant that was fastest
        at export among those that passed parity and whose runtime is installed here."""
        variants = self.manifest["variants"]
        if on_gpu:
            return "fp16" if "fp16" in variants else "fp32"
        passing = {v: m for v, m in variants.items() if v != "fp16" and m.get("parity", {}).get("passed", True)}
        if not passing:
            raise GenqError(f"{self.bundle}: no CPU variant passed its parity check")
        speed = {v: m.get("parity", {}).get("cpu_docs_per_s", 0.0) for v, m in passing.items()}
        runnable = [v for v in speed if self._runs_here(passing[v])] or list(speed)  # none: the fastest says what it needs
        fastest, chosen = max(speed, key=speed.__getitem__), max(runnable, key=speed.__getitem__)
        if fastest != chosen:
            needs = ("OpenVINO (pip install 'genq-search[openvino]')" if not openvino_available()
                     else "a CPU with bf16 instructions (AVX512-BF16 or AMX)")
            logger.info("%s: using %s; the faster %s needs %s", self.bundle, chosen, fastest, needs)
        return chosen

    @staticmethod
    def _runs_here(entry: dict[str, Any]) -> bool:
        """The variant's runtime is installed and the CPU has its instructions (bf16 falls back to fp32 without them)."""
        if entry.get("runtime") != "openvino":
            return True
        return openvino_available() and (entry.get("precision") != "bf16" or cpu_has_bf16())

    def _verify(self, model_file: Path, entry: dict[str, Any]) -> None:
        if not model_file.is_file():
            raise GenqError(f"{self.bundle}: missing {model_file.name}")
        if file_sha256(model_file) != entry["sha256"]:
            raise GenqError(f"{self.bundle}: checksum mismatch for {model_file.name} (modified or corrupt); re-export it")
        weights = model_file.with_suffix(".bin")
        if "weights_sha256" in entry and (not weights.is_file() or file_sha256(weights) != entry["weights_sha256"]):
            raise GenqError(f"{self.bundle}: {weights.name} is missing, modified or corrupt; re-export the bundle")
        for name, digest in self.manifest.get("tokenizer_files", {}).items():
            file = self.bundle / "tokenizer" / name
            if not file.is_file() or file_sha256(file) != digest:
                raise GenqError(f"{self.bundle}: tokenizer file {name} is missing or modified; re-export the bundle")

    def _features(self, batch: list[str]) -> tuple[dict[str, np.ndarray], int]:
        """The session's inputs for ``batch`` and how many of its texts are truncated. One tokenizer pass: overflow
        windows tell which texts were truncated; only each text's first window is encoded."""
        features = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np",
                                  return_overflowing_tokens=True)
        windows = np.asarray(features["overflow_to_sample_mapping"])
        first = np.unique(windows, return_index=True)[1]
        feeds = {name: features[name][first].astype(np.int64) for name in self.input_names if name in features}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return feeds, int(np.sum(np.bincount(windows) > 1))

    def _encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        rows = length_batches(texts, batch_size)
        batches = ([texts[i] for i in r] for r in rows)
        # one batch (a query): no thread to start; more: the next batch is tokenised while this one runs
        features = map(self._features, batches) if len(rows) <= 1 else prefetched(batches, self._features)
        for batch_rows, (feeds, truncated) in zip(rows, tqdm(features, total=len(rows), desc="Batches", disable=not progress), strict=True):
            self.truncated += truncated
            vectors = np.array(self._run(feeds), dtype=np.float32)  # a copy: OpenVINO reuses its output buffer
            if self.normalize:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[batch_rows] = vectors
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode(texts, batch_size, progress)

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        return self._encode(texts, batch_size, progress)

    def fingerprint(self) -> str:
        return fingerprint([self.manifest.get("source_fingerprint"), self.variant,
                            self.manifest["variants"][self.variant].get("sha256")])
