"""Typed configuration: one model per stage, gathered in ``RunConfig`` (one TOML/YAML file per run).

Precedence: CLI flag > config file > default. Relative paths in a config file are relative to that file. Field names are the CLI flag names with ``_`` for ``-``
(``queries_per_passage`` ↔ ``--queries-per-passage``); the README's Configuration section lists the few flags named
otherwise (stage-prefixed, singular for lists, ``--generator``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tomllib
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from genq_search.errors import GenqError, InputError

DEFAULT_BI_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
logger = logging.getLogger(__name__)
URL_SCHEMES: dict[str, tuple[str, Any]] = {}  # scheme -> (http or https, Engine); filled below Engine


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_enum_values=False, allow_inf_nan=False)
    HASHED_AS: ClassVar[dict[str, str]] = {}  # setting -> its earlier name, which finished runs' settings hashes hold

    def hashed(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The settings a stage's fingerprint covers, under their earlier names (a rename redoes no finished stage)."""
        return {self.HASHED_AS.get(k, k): v for k, v in self.model_dump(mode="json", exclude=set(exclude)).items()}


# --- value types shared by the sections (and the options of export / serve / register): each says what it accepts ---


class FieldError(ValueError):
    """A cross-field rule broken: ``field`` (in the model that raised it) is the setting the error line names."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _split_commas(value: Any) -> Any:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


def _check_device(value: str) -> str:
    """auto, cpu, mps, cuda or cuda:N; a CUDA device must exist (torch is imported only then)."""
    kind, colon, number = value.partition(":")
    if value not in {"auto", "cpu", "mps", "cuda"} and not (kind == "cuda" and colon and number.isdigit()):
        raise ValueError(f"unknown device '{value}' (use auto, cpu, cuda, cuda:N or mps)")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device '{value}' needs a CUDA GPU and none is visible here (use cpu or auto)")
        if number and int(number) >= torch.cuda.device_count():
            raise ValueError(f"device '{value}': this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if value == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' needs Apple's Metal backend, which is not available here (use cpu or auto)")
    return value


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_output_dir(value: Path) -> Path:
    """A directory this run can create or write into: not a file, not under a file, writable (checked, never created)."""
    if value.exists() and not value.is_dir():
        raise ValueError(f"{value}: is a file, not a directory")
    existing = _nearest_existing(value.absolute())
    if not existing.is_dir():
        raise ValueError(f"{value}: cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{value}: not writable (no write permission on {existing})")
    return value


def _check_input_dir(value: Path) -> Path:
    if not value.exists():
        raise ValueError(f"{value}: no such directory")
    if not value.is_dir():
        raise ValueError(f"{value}: is a file, not a directory")
    if not os.access(value, os.R_OK | os.X_OK):
        raise ValueError(f"{value}: not readable (permission denied)")
    return value


def _check_input_path(value: Path) -> Path:
    """An existing, readable file or directory."""
    if not value.exists():
        raise ValueError(f"{value}: no such file or directory")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{value}: not readable (permission denied)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value


Device = Annotated[str, AfterValidator(_check_device)]
OutputDir = Annotated[Path, BeforeValidator(lambda v: _raise_blank(v)), AfterValidator(_check_output_dir)]
InputDir = Annotated[Path, BeforeValidator(lambda v: _raise_blank(v)), AfterValidator(_check_input_dir)]
InputPath = Annotated[Path, BeforeValidator(lambda v: _raise_blank(v)), AfterValidator(_check_input_path)]
Name = Annotated[str, AfterValidator(_not_blank)]


def _check_ray_address(value: str) -> str:
    """``reindex.ray`` / ``generate.ray``: auto, local, HOST:PORT or ray://HOST:PORT."""
    import re

    if not re.fullmatch(r"auto|local|(ray://)?[A-Za-z0-9][A-Za-z0-9.\-]*:[0-9]{1,5}", value):
        raise ValueError(f"expected auto, local, HOST:PORT or ray://HOST:PORT (got {value!r:.80})")
    return value


RayAddress = Annotated[str, AfterValidator(_check_ray_address)]
Batch = Annotated[int, Field(gt=0, le=2**16)]
Tokens = Annotated[int, Field(gt=0, le=2**20)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
Rate = Annotated[float, Field(gt=0.0, le=1.0)]
Hits = Annotated[int, Field(gt=0, le=10_000)]  # results per query: OpenSearch's max_result_window
Commas = BeforeValidator(_split_commas)


def _renamed(data: Any, section: str, renames: dict[str, str]) -> Any:
    """``data`` with each earlier setting name moved to its current one (the current one wins when both are given),
    logged so that the file gets updated."""
    if not isinstance(data, dict) or not renames.keys() & data.keys():
        return data
    data = dict(data)
    for old, new in renames.items():
        if old in data:
            data.setdefault(new, data.pop(old))
            logger.warning("config: %s%s is now %s%s (the old name still reads; rename it)", section, old, section, new)
    return data


def _raise_blank(value: Any) -> Any:
    """An empty string would become '.' (the current directory): refuse it instead."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty: give a path")
    return value


class CorpusConfig(StageConfig):
    """Where the documents (and labelled queries) come from: a BEIR folder or a live OpenSearch index/alias."""

    path: Path = Field(Path("data/pydocs"), description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/) ")
    source_index: Name | None = Field(None, description="read documents from this index or alias of the cluster instead (only "
                                                        "read; connection from [backend]); on the CLI: --corpus "
                                                        "opensearch://HOST:9200/NAME (or elasticsearch://, http(s)://)")
    queries: Path | None = Field(None, description="labelled queries (BEIR queries.jsonl; default: <path>/queries.jsonl)")
    qrels: Path | None = Field(None, description="relevance judgements (BEIR TSV; default: <path>/qrels/<split>.tsv)")
    split: Annotated[str, Field(pattern=r"^[^/\\\s]+$")] = Field("test", description="qrels split: qrels/<split>.tsv")
    id_field: Name = Field("_id", description="document id: '_id' (an index's own ids) or a dotted path into the document")
    title_field: str | None = Field("title", description="dotted path of the title (none: no title)")
    text_fields: Annotated[list[Name], Commas, Field(min_length=1)] = Field(
        default_factory=lambda: ["text"], description="dotted paths of the text; several are joined with a space")
    read_batch: Hits = Field(1000, description="documents per request when reading an index")
    passage_tokens: Annotated[int, Field(ge=0, le=2**20)] | None = Field(
        None, description="passage length in tokens (default: encoder max; 0 = no split)")
    passage_stride: Annotated[int, Field(ge=0, le=2**20)] = Field(32, description="tokens shared by consecutive passages")

    @model_validator(mode="before")
    @classmethod
    def _earlier_names(cls, data: Any) -> Any:
        return _renamed(data, "corpus.", {"index": "source_index"})

    @model_validator(mode="after")
    def _stride_below_length(self) -> CorpusConfig:
        if self.passage_tokens and self.passage_stride >= self.passage_tokens:
            raise FieldError("passage_stride", f"must be smaller than passage_tokens ({self.passage_tokens}), got "
                                               f"{self.passage_stride}: consecutive passages would not advance")
        return self


class EncoderConfig(StageConfig):
    model: Name = DEFAULT_BI_ENCODER
    device: Device = "auto"
    batch_size: Batch = 64
    normalize: bool = True
    max_seq_length: Tokens | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="float32 | bfloat16 | float16 (PyTorch models; "
                                                         "bfloat16 is faster on CPUs with AVX-512-BF16/AMX and on GPUs; "
                                                         "float16: GPUs only)")
    ray: RayAddress | None = Field(
        None, description="encode the corpus (compare, index, mine's retrievers) on a Ray cluster, in parts written "
                          "to the embedding cache as they come back: auto, local, HOST:PORT or ray://HOST:10001; none: "
                          "one process, Ray not imported")
    ray_workers: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="encoder actors on the Ray cluster, each with its own model (default: one per GPU where it "
                          "has GPUs, else per CPU)")


class KnnLibrary(StrEnum):
    """OpenSearch k-NN library of the vector field."""

    LUCENE = "lucene"
    FAISS = "faiss"
    NMSLIB = "nmslib"


class Engine(StrEnum):
    """Where documents are indexed and searched: in-process, or a cluster (``auto``: detected from the node)."""

    EMBEDDED = "embedded"
    OPENSEARCH = "opensearch"
    ELASTICSEARCH = "elasticsearch"
    AUTO = "auto"


URL_SCHEMES.update({"http": ("http", Engine.AUTO), "https": ("https", Engine.AUTO),
                    "opensearch": ("http", Engine.OPENSEARCH), "opensearchs": ("https", Engine.OPENSEARCH),
                    "elasticsearch": ("http", Engine.ELASTICSEARCH), "elasticsearchs": ("https", Engine.ELASTICSEARCH)})


def parse_cluster_url(url: str) -> tuple[str, Engine]:
    """``(http(s)://HOST:PORT, engine)`` of a cluster URL: http(s) (engine ``auto``: detected from the node),
    opensearch(s)://, elasticsearch(s)://; a ValueError saying what is wrong."""
    from urllib.parse import urlsplit

    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in URL_SCHEMES:
        raise ValueError(f"'{url}' is not a cluster URL: expected http(s)://HOST:PORT (or opensearch://, "
                         "elasticsearch://; with an s for HTTPS)")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError(f"'{url}': the port is not a number") from None
    if not parts.hostname:
        raise ValueError(f"'{url}': no host")
    http, engine = URL_SCHEMES[scheme]
    return f"{http}://{parts.netloc}", engine


class BackendConfig(StageConfig):
    engine: Engine = Field(Engine.EMBEDDED, description="embedded (in-process), opensearch, elasticsearch, or auto "
                                                        "(detected from the node at url)")
    token_pattern: str = r"\w+"
    bm25_k1: float | None = Field(None, ge=0.0, le=10.0,
                                  description="BM25 k1 (default: 1.5 embedded/rank_bm25, 1.2 OpenSearch and Elasticsearch)")
    bm25_b: float = Field(0.75, ge=0.0, le=1.0, description="BM25 length normalisation b")
    # a cluster (OpenSearch or Elasticsearch)
    url: str = Field("http://127.0.0.1:9200", description="cluster URL: http(s)://HOST:PORT (env GENQ_SEARCH_URL, or OPENSEARCH_URL)")
    index: Name | None = Field(None, description="the tool's own index (or alias) on the cluster, which compare, index and "
                                                 "mine create and search (default: genq-<corpus hash>-<model label>); "
                                                 "never the source index (corpus.source_index)")
    username: str | None = None
    password: str | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    timeout_s: float = Field(60.0, gt=0.0, le=86_400.0, description="seconds a request to the cluster may take")
    http_compress: bool = Field(False, description="gzip request bodies: for a slow link to a remote cluster only (a "
                                                   "10 MB bulk of vectors costs ~1 s of client CPU at gzip's level 9)")
    knn_library: KnnLibrary = Field(KnnLibrary.LUCENE, description="OpenSearch k-NN library (faiss in the official images)")
    index_options: Literal["hnsw", "int8_hnsw", "bbq_hnsw"] = Field(
        "hnsw", description="Elasticsearch dense_vector index_options type: hnsw (float, ranks as exact search on "
                            "SciFact), int8_hnsw (4x smaller vectors, -0.06 nDCG@10), bbq_hnsw (32x, 64+ dimensions, -0.17)")
    space_type: Literal["innerproduct", "cosinesimil", "l2"] = "innerproduct"
    shards: int = Field(1, ge=1, le=1024, description="primary shards of an index the tool creates for compare/index")
    replicas: int = Field(1, ge=0, le=32, description="replicas restored after a bulk load")
    bulk_docs: int = Field(500, ge=1, le=100_000, description="documents per bulk request")
    title_boost: float = Field(1.0, ge=0.0, le=1000.0, description="BM25 boost of the title field")
    ef_search: int = Field(256, ge=1, le=100_000, description="HNSW search width (k-NN ef_search; Elasticsearch num_candidates)")
    hnsw_m: int = Field(16, ge=2, le=512, description="HNSW graph degree")
    ef_construction: int = Field(100, ge=2, le=100_000, description="HNSW build width (the k-NN plugin's default): 256 cost the reindex "
                                                  "6 points of throughput on 2 cores and gained nothing (SciFact "
                                                  "dense nDCG@10 66.63 vs 66.62, 99.7% of top-10 hits shared)")
    overwrite: bool = False
    server_side_hybrid: bool = False
    model_id: str | None = Field(None, description="ML Commons model the cluster embeds queries with (genq-search register): "
                                                   "dense and hybrid modes run server-side, sending the query text (neural)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_and_url(cls, data: Any) -> Any:
        """Earlier names (``kind`` for the engine, ``engine`` for the k-NN library) still read; the URL's scheme may
        name the engine (opensearch://, elasticsearch://), which must then agree with ``engine``."""
        if not isinstance(data, dict):
            return data
        if str(data.get("engine")) in {k.value for k in KnnLibrary}:
            data = _renamed(data, "backend.", {"engine": "knn_library"})
        data = dict(_renamed(data, "backend.", {"kind": "engine"}))
        if isinstance(data.get("url"), str):
            try:
                data["url"], named = parse_cluster_url(data["url"])
            except ValueError as exc:
                raise FieldError("url", str(exc)) from None
            given = data.get("engine")
            if named is not Engine.AUTO:
                if given in (None, Engine.AUTO, "auto"):
                    data["engine"] = named
                elif str(given) not in (named.value, Engine.EMBEDDED.value):
                    raise FieldError("engine", f"the URL names {named.value} but engine is {given}")
        return data


class CompareConfig(StageConfig):
    modes: Annotated[list[str], Commas, Field(min_length=1)] = Field(default_factory=lambda: ["bm25", "dense", "hybrid-rrf", "hybrid-minmax"])
    models: dict[str, str] = Field(default_factory=lambda: {"zeroshot": DEFAULT_BI_ENCODER},
                                   description="label -> model; on the CLI each --model is LABEL=ID_OR_PATH or ID_OR_PATH")
    metrics: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"])
    k: Hits = 100
    fusion_depth: Hits = 100
    rrf_k: Annotated[int, Field(ge=0, le=10**6)] = 60
    lexical_weight: Ratio = 0.5
    baseline: Name | None = Field(None, description="run the significance tests compare against (e.g. bm25, dense-zeroshot)")
    contrast: Annotated[list[Name], Commas, Field(min_length=2, max_length=2)] | None = Field(
        None, description="per-query win/loss between two runs: A,B")
    alpha: float = Field(0.05, gt=0.0, lt=1.0,
                         description="significance level of every paired test (report marks, fusion tuning, model gate)")
    min_dev_queries: int = Field(100, ge=0, le=10**9, description="a synthetic dev set smaller than this is too small to decide: "
                                                        "fusion tuning is marked undecided and the model gate does not rely on it")
    tune_lexical_weights: Annotated[list[Ratio], Field(min_length=1)] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        description="lexical weights tried for min-max and z-score fusion on the dev set (0 = dense only, 1 = BM25 only)")
    tune_rrf_k: Annotated[list[Annotated[int, Field(ge=0, le=10**6)]], Field(min_length=1)] = Field(default_factory=lambda: [10, 30, 60, 100], description="RRF constants tried on the dev set")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from genq_search.evaluate import trec_measure

        for metric in value:
            trec_measure(metric)
        return value

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, value: list[str]) -> list[str]:
        from genq_search.search import parse_modes

        try:
            parse_modes(value)
        except GenqError as exc:
            raise ValueError(str(exc)) from None
        return list(dict.fromkeys(value))

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        """``["LABEL=ID_OR_PATH", "ID_OR_PATH", ...]`` (the CLI's repeated --model) or a mapping; labels unique, non-empty
        and usable in run and folder names."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        parsed: dict[str, str] = {}
        for item in value:
            if not isinstance(item, str):
                return value  # the dict type names what is wrong
            label, sep, spec = item.partition("=")
            if not sep:
                label, spec = Path(item.removeprefix("onnx:").rstrip("/")).name or "model", item
            if label in parsed:
                raise ValueError(f"label '{label}' given twice ({parsed[label]!r} and {spec!r}): give each model its own LABEL=")
            parsed[label] = spec
        return parsed

    @field_validator("models")
    @classmethod
    def _usable_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("no model: give at least one")
        for label, spec in value.items():
            if not label.strip() or label in {".", ".."} or any(c in label for c in "/\\ \t") :
                raise ValueError(f"label {label!r} cannot name a run or a folder: use letters, digits, '.', '_' or '-' (LABEL=ID_OR_PATH)")
            if not spec.strip() or spec.strip() == "onnx:":
                raise ValueError(f"model of label '{label}' is empty (LABEL=ID_OR_PATH)")
        return value

    def run_names(self, models: list[str] | None = None, modes: list[str] | None = None) -> list[str]:
        """The runs a comparison of these modes and models writes (``bm25`` once, ``<mode>-<label>`` per model)."""
        modes = modes or self.modes
        return (["bm25"] if "bm25" in modes else []) + [f"{m}-{label}" for label in (models or list(self.models))
                                                          for m in modes if m != "bm25"]


class GenerateConfig(StageConfig):
    """Synthetic queries for the corpus' documents (and the synthetic dev set), written by the query generator."""

    HASHED_AS: ClassVar[dict[str, str]] = {"generator": "model"}

    generator: Name = Field("BeIR/query-gen-msmarco-t5-base-v1",
                            description="query generator: seq2seq (T5/BART) or causal LM id, path or .gguf file")
    kind: Literal["auto", "seq2seq", "causal"] = Field("auto", description="seq2seq | causal | auto (from the model config)")
    runtime: Literal["auto", "transformers", "llama.cpp"] = Field("auto", description="transformers | llama.cpp | auto (llama.cpp for a GGUF model on CPU when "
                                             "llama-cpp-python is installed, else transformers)")
    queries_per_passage: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
                                   Field(pattern=r"^(auto|[1-9][0-9]{0,5})$")] = Field(
        "3", description="an integer (1 or more), or 'auto' (GPL rule: ~250K queries in total)")
    max_passages: Annotated[int, Field(gt=0)] | None = None
    batch_size: Batch = 8
    max_input_tokens: Tokens = 350
    max_new_tokens: Annotated[int, Field(gt=0, le=4096)] = 64
    top_p: Rate = 0.95
    top_k: Annotated[int, Field(ge=0, le=10**6)] = Field(25, description="sampling: the k most likely next tokens (0 = no top-k cut)")
    temperature: Annotated[float, Field(ge=0.0, le=100.0, description="sampling temperature (0 = greedy)")] = 1.0
    min_query_words: Annotated[int, Field(ge=1, le=1000)] = 2
    max_query_words: Annotated[int, Field(ge=1, le=1000)] = 32
    prompt_template: str | None = None
    samples_per_passage: Annotated[int, Field(ge=1, le=1000)] | None = Field(None, description="over-generate: sample this many queries per document and keep "
                                                              "the queries_per_passage the generator finds most likely "
                                                              "(length-normalised log-likelihood; Liang et al. 2020: 10, keep 5)")
    passage_windows: bool = Field(False, description="generate for every passage window of a long document, split as the index "
                                                     "splits it (corpus.passage_tokens / passage_stride, the base model's "
                                                     "tokenizer), and train on those windows; default: the document's first "
                                                     "max_input_tokens")
    filter_top_k: Hits | None = Field(None, description="round-trip filter: keep a query only if its source ranks in the top k")
    filter_model: Name = DEFAULT_BI_ENCODER
    seed: Seed = 42
    chunk_size: Batch = 64
    device: Device = "auto"
    dev_queries: int = Field(500, ge=0, le=10**7, description="target size of the synthetic dev set, generated for documents kept "
                                                    "out of training (0 = no dev set)")
    dev_max_overlap: float = Field(0.5, gt=0.0, le=1.0, description="dev set lexical-gap filter: keep a query only if at "
                                                                    "most this share of its content words (stop words left "
                                                                    "out) occur in its source")
    threads: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="CPU threads of each llama.cpp generator (default: every core of the process; on Ray: one "
                          "per worker, which holds that many CPUs); llama.cpp's sums round differently with another "
                          "count, so queries repeat exactly for the same threads")
    ray: RayAddress | None = Field(
        None, description="generate on a Ray cluster, chunk by chunk (the same seeded chunks a single process writes): "
                          "auto, local, HOST:PORT or ray://HOST:10001; none: one process, Ray not imported")
    ray_workers: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="generator actors on the Ray cluster, each with its own model (default: one per GPU where "
                          "it has GPUs, else per CPU)")

    @model_validator(mode="before")
    @classmethod
    def _earlier_names(cls, data: Any) -> Any:
        return _renamed(data, "generate.", {"model": "generator"})

    @model_validator(mode="after")
    def _consistent(self) -> GenerateConfig:
        if self.min_query_words > self.max_query_words:
            raise FieldError("min_query_words", f"({self.min_query_words}) must not exceed max_query_words ({self.max_query_words})")
        per = self.queries_per_passage
        if self.samples_per_passage is not None and per != "auto" and self.samples_per_passage < int(per):
            raise FieldError("samples_per_passage", f"({self.samples_per_passage}) must be at least queries_per_passage ({per})")
        if self.prompt_template is not None and "{document}" not in self.prompt_template:
            raise FieldError("prompt_template", "must contain '{document}' (where the document goes)")
        return self


class MineConfig(StageConfig):
    """GPL hard-negative mining: the best-ranked other documents of each generated query, from dense retrievers (and
    optionally BM25)."""

    HASHED_AS: ClassVar[dict[str, str]] = {"negatives": "top_k"}

    retrievers: Annotated[list[Name], Field(min_length=1)] = Field(
        default_factory=lambda: ["sentence-transformers/msmarco-distilbert-base-v3", "sentence-transformers/msmarco-MiniLM-L-6-v3"])
    bm25: bool = Field(False, description="also mine BM25 negatives through the configured backend")
    negatives: Hits = Field(50, description="negatives kept per query and retriever")
    batch_size: Batch = 64
    chunk_size: Annotated[int, Field(gt=0, le=10**7)] = Field(1000, description="queries per resumable chunk")
    device: Device = "auto"

    @model_validator(mode="before")
    @classmethod
    def _earlier_names(cls, data: Any) -> Any:
        return _renamed(data, "mine.", {"top_k": "negatives"})


class LabelConfig(StageConfig):
    """GPL pseudo-labels: margin teacher(q, p+) - teacher(q, p-) for (query, positive, sampled negative) tuples."""

    teacher: Name = Field("cross-encoder/ms-marco-MiniLM-L-6-v2",
                         description="cross-encoder id/path, 'lm:<causal LM>' (query likelihood), 'bi:<bi-encoder>', 'bm25', "
                                     "or 'ensemble:<teacher>+<teacher>+...' (margins normalised, then combined)")
    teacher_weights: Annotated[list[Annotated[float, Field(gt=0.0, le=1e6)]], Commas] | None = Field(
        None, description="ensemble: one weight per member (default: equal)")
    tuples_per_query: Annotated[int, Field(gt=0, le=10**4)] = Field(1, description="training tuples per query, each with a freshly sampled negative")
    tuples: Annotated[int, Field(gt=0, le=10**10)] | None = Field(None, description="total tuples, drawn round-robin over the queries (GPL: steps x batch, "
                                                 "e.g. 140000 x 32); default: tuples_per_query per query")
    max_query_tokens: Tokens = Field(350, description="teacher: query tokens kept (longer queries are truncated)")
    max_length: Tokens = Field(350, description="teacher: passage tokens kept, separately from the query (longer passages are truncated)")
    batch_size: Batch = 32
    chunk_size: Annotated[int, Field(gt=0, le=10**7)] = Field(512, description="tuples per resumable chunk")
    lm_prompt: Annotated[str, Field(pattern=r"\{document\}")] = Field(
        "Document: {document}\nRelevant query:", description="query-likelihood prompt ('lm:' teachers; must hold {document})")
    seed: Seed = 42
    device: Device = "auto"

    @model_validator(mode="after")
    def _one_weight_per_member(self) -> LabelConfig:
        members = self.teacher.removeprefix("ensemble:").split("+") if self.teacher.startswith("ensemble:") else [self.teacher]
        if self.teacher_weights is not None and (len(members) < 2 or len(self.teacher_weights) != len(members)):
            raise FieldError("teacher_weights", f"needs one weight per member of an ensemble teacher ({len(members)} in "
                                                f"'{self.teacher}'), got {len(self.teacher_weights)}")
        return self


class PretrainConfig(StageConfig):
    """TSDAE domain pre-training (denoising auto-encoder on the corpus' sentences)."""

    method: Literal["tsdae"] = "tsdae"
    epochs: Annotated[int, Field(gt=0, le=10**4)] = 1
    batch_size: Batch = 8
    learning_rate: Rate = 3e-5
    deletion_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.6
    max_sentences: Annotated[int, Field(gt=0)] | None = Field(None, description="sample at most this many sentences")
    max_seq_length: Tokens = 256
    seed: Seed = 42
    checkpoint_steps: Annotated[int, Field(gt=0)] = 500
    device: Device = "auto"


class TrainConfig(StageConfig):
    """Fine-tuning of the base bi-encoder; the loss follows the top-level method (genq: MultipleNegativesRankingLoss on
    the generated pairs; gpl and tsdae+gpl: MarginMSE on the label stage's pseudo-labels)."""

    base_model: Name = DEFAULT_BI_ENCODER
    epochs: Annotated[int, Field(gt=0, le=10**4)] = 1
    batch_size: Batch = 32
    learning_rate: Rate = 2e-5
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    max_seq_length: Tokens = 256
    score_scale: Annotated[float, Field(gt=0.0, le=1e6)] | None = Field(
        None, description="gpl: student score = scale * dot product (default: calibrated to the teacher's margins)")
    eval_split: Annotated[str, Field(pattern=r"^[^/\\\s]+$")] | None = Field(
        None, description="evaluate on these qrels every eval_steps and keep the best checkpoint")
    eval_steps: Annotated[int, Field(gt=0)] = 200
    seed: Seed = 42
    checkpoint_steps: Annotated[int, Field(gt=0)] = 500
    device: Device = "auto"


class ReindexConfig(StageConfig):
    """Copy a live index into ``<alias>-v<N>`` with passage vectors, catch up concurrent writes, verify, switch."""

    alias: Name | None = Field(None, description="alias to point at the new index (default: the source, when it is an alias)")
    freeze_writes: bool = Field(False, description="block writes on the source for the final catch-up, verification and "
                                                   "alias switch (always released)")
    catchup_rounds: Annotated[int, Field(ge=0, le=1000)] = Field(5, description="catch-up rounds of changed documents before the final one")
    verify_sample: Annotated[int, Field(ge=0, le=10**6)] = Field(50, description="documents whose sources are compared field by field (random per run)")
    encode_batch: Batch | None = Field(None, description="encoding batch size (default: [encoder] batch_size)")
    ray: RayAddress | None = Field(
        None, description="copy on a Ray cluster: auto (join the running cluster), local (start one in this process), "
                          "HOST:PORT (its GCS address) or ray://HOST:10001 (Ray Client); none: one process, Ray not imported")
    ray_workers: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="encoding actors on the Ray cluster (default: one per GPU where it has GPUs, else per CPU)")
    ray_unit_docs: Annotated[int, Field(ge=1, le=10**9)] = Field(
        10_000, description="work unit of the Ray copy: _seq_no numbers of one shard (at most that many documents); "
                            "a finished unit is recorded and never redone")


class UpgradeConfig(StageConfig):
    """``genq-search upgrade``: adapt on a live index, gate, export, search pipeline, reindex, alias switch."""

    export_profile: Annotated[str, AfterValidator(lambda v: _known_profile(v))] = Field("cpu", description="ONNX export profile for the deployed bundle (cpu, openvino, gpu, all)")


class GateConfig(StageConfig):
    """Model gate of ``adapt``: keep the adapted model only if it beats the zero-shot one (paired test, ``compare.alpha``)."""

    margin: float = Field(0.0, ge=-1.0, le=1.0, description="nDCG@10 gain (absolute, 0.01 = 1 point) the adapted dense run must exceed on "
                                           "the dev set, and on labels when given (negative: keep it unless it is worse "
                                           "by more than that)")
    overrating: float = Field(0.04, ge=0.0, le=1.0, description="GenQ without labelled queries: the extra nDCG@10 gain the dev "
                              "set must show, because it is written by the generator GenQ trained on and overrates GenQ "
                              "models (measured up to 4 points: bench/results/labelfree_robust.json); with labelled "
                              "queries they decide with gate.margin alone")


class RunConfig(StageConfig):
    """Everything one ``genq-search adapt`` run needs; each section maps to one stage's CLI flags."""

    run_dir: OutputDir = Field(Path("runs/default"), description="run directory (created; must be writable)")
    method: Literal["genq", "gpl", "tsdae+gpl"] = Field("genq", description="adapt method: genq, gpl or tsdae+gpl (adapt and "
                                                                         "upgrade run its stages; train trains with its loss)")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    reindex: ReindexConfig = Field(default_factory=ReindexConfig)
    upgrade: UpgradeConfig = Field(default_factory=UpgradeConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _runs_exist(self, info: ValidationInfo) -> RunConfig:
        """compare.baseline and compare.contrast name runs the command will write (adapt/upgrade compare the zero-shot
        and the adapted model, with the dense mode added)."""
        c = self.compare
        if (info.context or {}).get("adapt"):
            labels = ["zeroshot", *(["tsdae"] if self.method.startswith("tsdae+") else []), self.method.replace("+", "-")]
            names = c.run_names(labels, [*c.modes, "dense", "hybrid-tuned"])
        else:
            names = c.run_names()
        for field, wanted in (("baseline", [c.baseline] if c.baseline else []), ("contrast", c.contrast or [])):
            for name in wanted:
                if name not in names:
                    close = difflib.get_close_matches(name, names, 1)
                    raise FieldError(f"compare.{field}", f"no run named '{name}' in this comparison"
                                     + (f" (did you mean '{close[0]}'?)" if close else "") + f"; its runs: {', '.join(names)}")
        if c.contrast and c.contrast[0] == c.contrast[1]:
            raise FieldError("compare.contrast", f"names '{c.contrast[0]}' twice: give two different runs A,B")
        return self

    @model_validator(mode="before")
    @classmethod
    def _train_method(cls, data: Any) -> Any:
        """``[train] method`` (earlier name) is the top-level ``method``."""
        train = data.get("train") if isinstance(data, dict) else None
        if isinstance(train, dict) and "method" in train:
            logger.warning("config: train.method is now the top-level method (the old name still reads; move it)")
            data = {"method": train["method"], **data, "train": {k: v for k, v in train.items() if k != "method"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _corpus_url(cls, data: Any) -> Any:
        """``corpus.path = "opensearch://host:9200/NAME"`` (elasticsearch://, http://; with an s for HTTPS) reads that
        index; the connection goes to ``backend.url`` (the engine is detected from the node unless backend.engine names it)."""
        corpus = data.get("corpus") if isinstance(data, dict) else None
        if isinstance(corpus, dict) and isinstance(corpus.get("path"), str):
            scheme, sep, rest = corpus["path"].partition("://")
            if sep and scheme in URL_SCHEMES:
                host, _, name = rest.partition("/")
                if not host or not name or "/" in name.rstrip("/"):
                    raise FieldError("corpus.path", f"'{corpus['path']}': expected {scheme}://HOST:PORT/INDEX")
                try:
                    url, _ = parse_cluster_url(f"{scheme}://{host}")
                except ValueError as exc:
                    raise FieldError("corpus.path", str(exc)) from None
                data = {**data, "corpus": {**{k: v for k, v in corpus.items() if k not in ("path", "index")},
                                           "source_index": name.rstrip("/")},
                        "backend": {**data.get("backend", {}), "url": url}}
        return data

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, dict[str, Any]] | None = None, adapt: bool = False) -> RunConfig:
        """Read a TOML/YAML/JSON config (or start from defaults), apply non-None CLI overrides and validate everything
        (values, paths, cross-field rules) before any work: an error names the flag when the value came from the CLI,
        else the file and dotted setting. ``adapt``: the runs of adapt/upgrade's comparison are the ones that exist."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            data = _read_config(path)
            _resolve_relative_paths(data, path.parent)
        from_cli: set[tuple[str, ...]] = set()
        for section, values in (overrides or {}).items():
            given = {k: v for k, v in values.items() if v is not None}
            from_cli.update((k,) if section == "run" else (section, k) for k in given)
            if section == "run":
                data.update(given)
            elif given and isinstance(data.setdefault(section, {}), dict):  # else validation names the bad section
                data[section].update(given)
        try:
            return cls.model_validate(data, context={"adapt": adapt})
        except ValidationError as exc:
            raise _explain(exc, path, from_cli) from None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Make the path-valued settings of a config file relative to the file's own folder."""
    corpus = data.get("corpus", {})
    targets = [(data, "run_dir"), (corpus, "path"), (corpus, "queries"), (corpus, "qrels"), (data.get("backend", {}), "ca_certs")]
    for section, key in targets:
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(value, str) and value.strip() and "://" not in value and not Path(value).is_absolute():
            section[key] = str((base / section[key]).resolve())


def _read_config(path: Path) -> dict[str, Any]:
    """The settings of a TOML, YAML or JSON file; any parse error is one line naming the file and line."""
    if path.is_dir():
        raise GenqError(f"{path}: is a directory, not a config file (give a .toml, .yaml or .json file)")
    if not path.is_file():
        raise GenqError(f"{path}: config file not found")
    if path.suffix not in {".toml", ".yaml", ".yml", ".json"}:
        raise GenqError(f"{path}: unknown config format '{path.suffix}', use .toml/.yaml/.json")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GenqError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} (save it as UTF-8)",
                         raw[: exc.start].count(b"\n") + 1) from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text, parse_constant=_no_constant)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"cannot parse TOML: {exc}") from None
    except yaml.YAMLError as exc:  # its own message spans lines (a quoted excerpt with a caret)
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or exc
        raise InputError(path, f"cannot parse YAML: {problem}" + (f" (column {mark.column + 1})" if mark else ""),
                         mark.line + 1 if mark else None) from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"cannot parse JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except ValueError as exc:  # NaN / Infinity (parse_constant)
        raise InputError(path, f"cannot parse JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"expected sections of settings (a mapping) at the top level, got a {type(data).__name__}")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (write a number or a string)")


# CLI flags not named after their setting (``--`` + the field name with ``-`` for ``_`` otherwise)
FLAGS = {("compare", "models"): "--model", ("compare", "modes"): "--mode", ("encoder", "model"): "--model",
         ("train", "batch_size"): "--train-batch-size", ("corpus", "path"): "--corpus", ("mine", "retrievers"): "--retriever",
         ("backend", "engine"): "--backend"}


def flag_name(loc: tuple[str, ...]) -> str:
    return FLAGS.get(loc, "--" + loc[-1].replace("_", "-"))


def _explain(exc: ValidationError, path: Path | None, from_cli: set[tuple[str, ...]] | frozenset[tuple[str, ...]] = frozenset(),
             root: Any = None) -> GenqError:
    """The first validation error as one line: the flag when the value came from the CLI (``from_cli``: the settings
    it gave), else the file and the dotted setting; what is wrong and the value given."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    error = first.get("ctx", {}).get("error")
    if isinstance(error, FieldError):  # a cross-field rule: the setting it names
        loc += error.field.split(".")
    where = ".".join(loc)
    if first["type"] == "extra_forbidden":
        model: Any = root or RunConfig
        for part in loc[:-1]:
            field = getattr(model, "model_fields", {}).get(part)
            model = field.annotation if field else None
        close = difflib.get_close_matches(loc[-1], list(getattr(model, "model_fields", {})), 1)
        message = "unknown setting" + (f" (did you mean '{close[0]}'?)" if close else "")
    elif isinstance(error, ValueError):  # our own rules say what they got
        message = str(error)
    else:
        message = first["msg"] + (f" (got {first['input']!r:.80})" if loc else "")
    given = next((key for key in (tuple(loc[:2]), tuple(loc[:1])) if key in from_cli), None)
    if given:
        return GenqError(f"{flag_name(given)}: {message}")
    return InputError(path or "config", message, field=where or None)


def _known_profile(name: str) -> str:
    try:
        text = files("genq_search.export_profiles").joinpath("profiles.json").read_text()
    except ModuleNotFoundError:  # a source checkout that is not installed
        text = (Path(__file__).resolve().parents[1] / "export" / "profiles.json").read_text()
    profiles = [k for k in json.loads(text) if not k.startswith("_")]
    if name not in profiles:
        raise ValueError(f"unknown export profile '{name}' (choose from {', '.join(profiles)})")
    return name


def _known_variant(name: str) -> str:
    from genq_search.onnx_encoder import VARIANTS

    if name not in VARIANTS:
        raise ValueError(f"unknown bundle variant '{name}' (choose from {', '.join(VARIANTS)})")
    return name


class ExportOptions(StageConfig):
    """``genq-search export``'s flags."""

    model: Name
    out: OutputDir
    profile: Annotated[str, AfterValidator(_known_profile)] = "cpu"
    corpus: InputPath | None = None
    sample: Annotated[int, Field(gt=0, le=10**6)] = 256
    formats: Annotated[list[Literal["sentence-transformers", "ml-commons"]], Commas] = ["sentence-transformers", "ml-commons"]
    overwrite: bool | None = None


class ServeOptions(StageConfig):
    """``genq-search serve``'s flags."""

    bundle: InputDir
    host: Name = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    device: Annotated[str, AfterValidator(lambda v: v if v == "tensorrt" else _check_device(v))] | None = None
    batch_size: Batch | None = None
    passage_tokens: Annotated[int, Field(ge=0, le=2**20)] | None = None
    passage_stride: Annotated[int, Field(ge=0, le=2**20)] | None = None
    variant: Annotated[str, AfterValidator(_known_variant)] | None = None

    @model_validator(mode="after")
    def _stride_below_length(self) -> ServeOptions:
        if self.passage_tokens and self.passage_stride is not None and self.passage_stride >= self.passage_tokens:
            raise FieldError("passage_stride", f"must be smaller than --passage-tokens ({self.passage_tokens}), got {self.passage_stride}")
        return self


class RegisterOptions(StageConfig):
    """``genq-search register``'s flags (the connection: [backend])."""

    bundle: InputDir
    endpoint: Name | None = None
    attach_to: Name | None = None
    group: Name = "genq-search"
    deploy: bool = True
    configure_cluster: bool = False

    @model_validator(mode="after")
    def _attach_needs_endpoint(self) -> RegisterOptions:
        if self.attach_to and not self.endpoint:
            raise FieldError("attach_to", "needs --endpoint (the ingest pipeline calls the endpoint)")
        return self


def check_options(options: type[StageConfig], /, **flags: Any) -> Any:
    """A command's own flags (those outside RunConfig) validated like the config: one line naming the flag."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return options.model_validate(given)
    except ValidationError as exc:
        raise _explain(exc, None, {(k,) for k in given}, options) from None
