"""Bi-encoders behind one small interface (sentence-transformers now, ONNX bundles via ``onnx:<dir>``),
plus an on-disk embedding cache keyed by (model, texts)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from genq_search.data import atomic_write, fingerprint
from genq_search.errors import GenqError
from genq_search.models import resolve_model

logger = logging.getLogger(__name__)
T, R = TypeVar("T"), TypeVar("R")
DTYPES = {"float32", "bfloat16", "float16"}


class Encoder(Protocol):
    """What indexing and search need from an encoder."""

    name: str
    dim: int
    max_seq_length: int
    tokenizer: Any

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prefetched(items: Iterable[T], fn: Callable[[T], R], ahead: int = 2) -> Iterator[R]:
    """``fn(item)`` for each item in order, computed in one background thread up to ``ahead`` items before it is
    consumed: tokenisation of the next batches overlaps the forward pass of this one (fast tokenizers release the
    GIL). An exception in ``fn`` is raised where its result would have been."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def length_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """The rows of each batch, longest texts first, so that similar lengths share a batch (little padding)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_fingerprint(path: str) -> str:
    """Cheap identity of a model folder/file: names, sizes and modification times of its files."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return fingerprint([(str(p.relative_to(root.parent)), p.stat().st_size, int(p.stat().st_mtime)) for p in files])


class SentenceTransformerEncoder:
    """A sentence-transformers bi-encoder (any HF id or local path); batches are length-sorted. On a CPU the library's
    ``encode`` runs; on a GPU ``_encode_on_device`` (see there)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        normalize: bool = True,
        max_seq_length: int | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
        dtype: str = "float32",
    ):
        import torch
        from sentence_transformers import SentenceTransformer

        if dtype not in DTYPES:
            raise GenqError(f"unknown encoder dtype '{dtype}' ({', '.join(sorted(DTYPES))})")

        if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
            raise GenqError(f"cannot load bi-encoder '{model}': no such file or directory")
        self.path = resolve_model(model, "bi-encoder")
        self.name = model
        self.normalize = normalize
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        try:
            self.model = SentenceTransformer(self.path, device=pick_device(device))
        except (OSError, ValueError) as exc:
            raise GenqError(f"cannot load bi-encoder '{model}' from {self.path}: {exc}") from None
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.dtype = dtype
        if dtype == "float16" and self.model.device.type == "cpu":
            raise GenqError("encoder dtype float16 needs a GPU (on a CPU use bfloat16, or float32)")
        if dtype != "float32":
            self.model.to(getattr(torch, dtype))
        self.max_seq_length = int(self.model.max_seq_length or 512)
        self.dim = int(self.model.get_embedding_dimension())
        self.tokenizer = self.model.tokenizer

    def _encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        if self.model.device.type == "cuda":
            return self._encode_on_device(texts, batch_size, progress)
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _encode_on_device(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """The library's ``encode`` loop with the GPU kept busy. Hand-written because ``encode`` tokenises each batch in
        the calling thread and copies its vectors to the CPU before starting the next (a synchronisation per batch):
        on an H100 it reached 1,092 docs/s at fp16, bound by tokenisation. Here the next batches are tokenised in a
        background thread (``prefetched``) while the GPU runs, inputs go over from pinned memory without blocking, and
        the vectors stay on the GPU until one copy at the end. The vectors are ``encode``'s, in the caller's order."""
        import torch
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        device = self.model.device
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize  # preprocess: sentence-transformers >= 6
        rows = length_batches(texts, batch_size)
        batches = [[texts[i] for i in r] for r in rows]

        def features(batch: list[str]) -> dict[str, Any]:
            out = tokenize(batch)
            return {k: v.pin_memory() if device.type == "cuda" and isinstance(v, torch.Tensor) else v for k, v in out.items()}

        self.model.eval()
        parts = []
        with torch.inference_mode():
            for batch in tqdm(prefetched(batches, features), total=len(batches), desc="Batches", disable=not progress):
                batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                vectors = self.model(batch)["sentence_embedding"].float()
                parts.append(torch.nn.functional.normalize(vectors, p=2, dim=1) if self.normalize else vectors)
            sorted_vectors = torch.cat(parts).cpu().numpy()
        out = np.empty_like(sorted_vectors)
        out[np.concatenate(rows)] = sorted_vectors
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode([self.query_prefix + t for t in texts], batch_size, progress)

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        return self._encode([self.passage_prefix + t for t in texts], batch_size, progress)

    def fingerprint(self) -> str:
        settings = [self.normalize, self.max_seq_length, self.query_prefix, self.passage_prefix] + ([self.dtype] if self.dtype != "float32" else [])
        return fingerprint([model_fingerprint(self.path), settings])


def load_encoder(spec: str, device: str = "auto", normalize: bool = True, max_seq_length: int | None = None,
                 dtype: str = "float32") -> Encoder:
    """``spec`` is a HF id / local sentence-transformers folder, or ``onnx:<bundle dir>`` (``onnx:<dir>@fp32`` picks a
    variant; default: CUDA's fp16 on a GPU, else the fastest CPU variant that passed parity); ``dtype``: PyTorch only."""
    if spec.startswith("onnx:"):
        from genq_search.onnx_encoder import VARIANTS, OnnxEncoder

        bundle, _, variant = spec.removeprefix("onnx:").rpartition("@")
        if variant not in VARIANTS:
            bundle, variant = spec.removeprefix("onnx:"), ""
        return OnnxEncoder(bundle, variant=variant or None, provider="cpu" if device == "cpu" else device)
    return SentenceTransformerEncoder(spec, device=device, normalize=normalize, max_seq_length=max_seq_length, dtype=dtype)


def encode_passages_cached(
    encoder: Encoder, texts: list[str], cache_dir: Path | None, batch_size: int = 64, ray: str | None = None,
    ray_workers: int | None = None,
) -> np.ndarray:
    """Encode passages once per (encoder, texts); later calls load the ``.npy`` from ``cache_dir``. With ``ray`` (a
    Ray address, ``encoder.ray``) the encoding runs on that cluster in parts kept beside the cache file until it is
    whole, so an interrupted run resumes from the parts written."""
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode())
            digest.update(b"\0")
        path = Path(cache_dir) / f"{encoder.fingerprint()}-{digest.hexdigest()[:16]}.npy"
        if path.is_file():
            vectors = np.load(path)
            if vectors.shape == (len(texts), encoder.dim):
                logger.info("loaded %d cached embeddings from %s", len(texts), path)
                return vectors
    parts = path.with_suffix(".parts") if path is not None and ray else None
    if ray:
        from genq_search.distributed import encode_on_ray

        vectors = encode_on_ray(encoder, texts, batch_size, ray, ray_workers, parts)
    else:
        vectors = encoder.encode_passages(texts, batch_size=batch_size)
    if path is not None:
        with atomic_write(path, "wb") as handle:
            np.save(handle, vectors)
    if parts is not None:
        import shutil

        shutil.rmtree(parts, ignore_errors=True)  # the cache file is whole now
    return vectors
