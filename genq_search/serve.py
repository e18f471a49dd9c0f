"""``genq-search serve``: an HTTP embedding endpoint over an ONNX bundle, for the cluster to call.

ML Commons remote models (``neural`` queries, ``text_embedding`` ingest) call ``POST /v1/embeddings`` in the OpenAI
embeddings shape, so ML Commons' built-in OpenAI pre/post-processing functions work unchanged. ``POST /v1/passages``
splits documents exactly as the reindex does (same tokenizer, windows and title rule) and embeds every window, for
the ingest pipeline of documents written after an upgrade. One request at a time: ONNX Runtime already uses every
core for a batch, so concurrent requests queue instead of oversubscribing the CPU (and the tokenizer is not shared
between threads).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from genq_search.config import CorpusConfig
from genq_search.errors import GenqError

logger = logging.getLogger(__name__)


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="text or texts to embed (OpenAI embeddings shape)")
    model: str | None = None


class Document(BaseModel):
    text: str | list[str] = Field("", description="the text field(s); several are joined as the reindex joins them")
    title: str = ""


class PassagesRequest(BaseModel):
    documents: list[Document]


def _require_server() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        raise GenqError("the embedding endpoint needs FastAPI and uvicorn: pip install 'genq-search[serve]'") from None


def create_app(bundle: Path, provider: str = "auto", batch_size: int = 64, passage_tokens: int | None = None,
               passage_stride: int | None = None, max_texts: int = 2048, variant: str | None = None) -> Any:
    """The FastAPI application: ``GET /health``, ``POST /v1/embeddings``, ``POST /v1/passages``. ``variant`` defaults to
    the one the reindex picks (the fastest that passed parity), so both write the same vectors."""
    _require_server()
    from fastapi import FastAPI, HTTPException

    from genq_search.data import joined_text
    from genq_search.engines.base import vector_json
    from genq_search.onnx_encoder import OnnxEncoder
    from genq_search.passages import split_documents

    encoder = OnnxEncoder(bundle, variant=variant, provider=provider)
    max_tokens = passage_tokens if passage_tokens is not None else encoder.max_seq_length
    if passage_stride is None:
        passage_stride = CorpusConfig.model_fields["passage_stride"].default
    if 0 < max_tokens <= passage_stride:
        raise GenqError(f"--passage-stride ({passage_stride}) must be smaller than --passage-tokens ({max_tokens})")
    lock = threading.RLock()  # also serialises the tokenizer: a fast tokenizer's padding/truncation state is shared
    stats = {"requests": 0, "texts": 0, "seconds": 0.0}
    app = FastAPI(title="genq-search embeddings", version="1")

    def embed(texts: list[str]) -> list[list[float]]:
        if len(texts) > max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; at most {max_texts}")
        with lock:
            start = time.perf_counter()
            vectors = encoder.encode_passages(texts, batch_size=batch_size, progress=False) if texts else []
            stats["requests"] += 1
            stats["texts"] += len(texts)
            stats["seconds"] += time.perf_counter() - start
        return [vector_json(v) for v in vectors]  # rounded as the reindex writes them

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": encoder.manifest.get("source_model"), "variant": encoder.variant,
                "dimension": encoder.dim, "max_length": encoder.max_seq_length, "passage_tokens": max_tokens,
                "passage_stride": passage_stride, **stats}

    @app.post("/v1/embeddings")
    def embeddings(request: EmbeddingsRequest) -> dict[str, Any]:
        texts = [request.input] if isinstance(request.input, str) else request.input
        vectors = embed(texts)
        return {"object": "list", "model": request.model or encoder.name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    @app.post("/v1/passages")
    def passages(request: PassagesRequest) -> dict[str, Any]:
        corpus = {}
        for i, d in enumerate(request.documents):  # the reindex's rule: no text -> the title is the text; neither -> none
            title, text = d.title.strip(), joined_text({"text": d.text}, ["text"])
            if title or text:
                corpus[str(i)] = {"title": title, "text": text} if text else {"title": "", "text": title}
        with lock:
            windows = split_documents(corpus, encoder.tokenizer, max_tokens, passage_stride)
            vectors = embed([p.text for p in windows])
        out: list[list[dict[str, Any]]] = [[] for _ in request.documents]
        for window, vector in zip(windows, vectors, strict=True):
            out[int(window.doc_id)].append({"vector": vector})
        return {"documents": [{"passages": p} for p in out]}

    return app


def serve(bundle: Path, host: str = "127.0.0.1", port: int = 8080, **kwargs: Any) -> None:
    """Run the endpoint in the foreground until interrupted."""
    app = create_app(bundle, **kwargs)
    import uvicorn

    logger.info("serving %s on http://%s:%d (health: /health)", bundle, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
