"""Typed configuration: one model per stage, gathered in ``RunConfig`` (one TOML/YAML file per run).

Precedence: CLI flag > config file > default. Relative paths in a config file are relative to that file. Field names are the CLI flag names with ``_`` for ``-``
(``queries_per_passage`` ↔ ``--queries-per-passage``); the README's Configuration section lists the few flags named
otherwise (stage-prefixed, singular for lists, ``--generator``).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from genq_search.errors import GenqError, InputError

DEFAULT_BI_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
INDEX_SCHEMES = {"opensearch": "http", "opensearchs": "https"}


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_enum_values=False)


class CorpusConfig(StageConfig):
    """Where the documents (and labelled queries) come from: a BEIR folder or a live OpenSearch index/alias."""

    path: Path = Field(Path("data/pydocs"), description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/) ")
    index: str | None = Field(None, description="read documents from this OpenSearch index or alias instead "
                                                "(connection from [backend]); on the CLI: --corpus opensearch://host:9200/NAME")
    queries: Path | None = Field(None, description="labelled queries (BEIR queries.jsonl; default: <path>/queries.jsonl)")
    qrels: Path | None = Field(None, description="relevance judgements (BEIR TSV; default: <path>/qrels/<split>.tsv)")
    split: str = "test"
    id_field: str = Field("_id", description="document id: '_id' (an index's own ids) or a dotted path into the document")
    title_field: str | None = Field("title", description="dotted path of the title (none: no title)")
    text_fields: list[str] = Field(default_factory=lambda: ["text"],
                                   description="dotted paths of the text; several are joined with a space")
    read_batch: int = Field(1000, description="documents per request when reading an index")
    passage_tokens: int | None = Field(None, description="passage length in tokens (default: encoder max; 0 = no split)")
    passage_stride: int = Field(32, description="tokens shared by consecutive passages")

    @field_validator("text_fields", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class EncoderConfig(StageConfig):
    model: str = DEFAULT_BI_ENCODER
    device: str = "auto"
    batch_size: int = 64
    normalize: bool = True
    max_seq_length: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="float32 | bfloat16 | float16 (PyTorch models; "
                                                         "bfloat16 is faster on CPUs with AVX-512-BF16/AMX and on GPUs; "
                                                         "float16: GPUs only)")


class Engine(StrEnum):
    LUCENE = "lucene"
    FAISS = "faiss"
    NMSLIB = "nmslib"


class BackendKind(StrEnum):
    EMBEDDED = "embedded"
    OPENSEARCH = "opensearch"


class BackendConfig(StageConfig):
    kind: BackendKind = BackendKind.EMBEDDED
    token_pattern: str = r"\w+"
    bm25_k1: float | None = Field(None, description="BM25 k1 (default: 1.5 embedded/rank_bm25, 1.2 OpenSearch)")
    bm25_b: float = 0.75
    # OpenSearch
    url: str = "http://127.0.0.1:9200"
    index: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    timeout_s: float = 60.0
    http_compress: bool = Field(False, description="gzip request bodies: for a slow link to a remote cluster only (a "
                                                   "10 MB bulk of vectors costs ~1 s of client CPU at gzip's level 9)")
    engine: Engine = Engine.LUCENE
    space_type: str = "innerproduct"
    shards: int = 1
    replicas: int = 1
    bulk_docs: int = 500
    title_boost: float = 1.0
    ef_search: int = 256
    hnsw_m: int = 16
    ef_construction: int = Field(100, description="HNSW build width (the k-NN plugin's default): 256 cost the reindex "
                                                  "6 points of throughput on 2 cores and gained nothing (SciFact "
                                                  "dense nDCG@10 66.63 vs 66.62, 99.7% of top-10 hits shared)")
    overwrite: bool = False
    server_side_hybrid: bool = False
    model_id: str | None = Field(None, description="ML Commons model the cluster embeds queries with (genq-search register): "
                                                   "dense and hybrid modes run server-side, sending the query text (neural)")


class CompareConfig(StageConfig):
    modes: list[str] = Field(default_factory=lambda: ["bm25", "dense", "hybrid-rrf", "hybrid-minmax"])
    models: dict[str, str] = Field(default_factory=lambda: {"zeroshot": DEFAULT_BI_ENCODER})
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"])
    k: int = 100
    fusion_depth: int = 100
    rrf_k: int = 60
    lexical_weight: float = 0.5
    baseline: str | None = None
    contrast: list[str] | None = None
    alpha: float = Field(0.05, gt=0.0, lt=1.0,
                         description="significance level of every paired test (report marks, fusion tuning, model gate)")
    min_dev_queries: int = Field(100, ge=0, description="a synthetic dev set smaller than this is too small to decide: "
                                                        "fusion tuning is marked undecided and the model gate does not rely on it")
    tune_lexical_weights: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        description="lexical weights tried for min-max and z-score fusion on the dev set (0 = dense only, 1 = BM25 only)")
    tune_rrf_k: list[int] = Field(default_factory=lambda: [10, 30, 60, 100], description="RRF constants tried on the dev set")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from genq_search.evaluate import trec_measure

        for metric in value:
            trec_measure(metric)
        return value


class GenerateConfig(StageConfig):
    model: str = "BeIR/query-gen-msmarco-t5-base-v1"
    kind: str = Field("auto", description="seq2seq | causal | auto (from the model config)")
    runtime: str = Field("auto", description="transformers | llama.cpp | auto (llama.cpp for a GGUF model on CPU when "
                                             "llama-cpp-python is installed, else transformers)")
    queries_per_passage: str = Field("3", description="an integer, or 'auto' (GPL rule: ~250K queries in total)")
    max_passages: int | None = None
    batch_size: int = 8
    max_input_tokens: int = 350
    max_new_tokens: int = 64
    top_p: float = 0.95
    top_k: int = 25
    temperature: float = 1.0
    min_query_words: int = 2
    max_query_words: int = 32
    prompt_template: str | None = None
    samples_per_passage: int | None = Field(None, ge=1, description="over-generate: sample this many queries per document and keep "
                                                              "the queries_per_passage the generator finds most likely "
                                                              "(length-normalised log-likelihood; Liang et al. 2020: 10, keep 5)")
    passage_windows: bool = Field(False, description="generate for every passage window of a long document, split as the index "
                                                     "splits it (corpus.passage_tokens / passage_stride, the base model's "
                                                     "tokenizer), and train on those windows; default: the document's first "
                                                     "max_input_tokens")
    filter_top_k: int | None = Field(None, description="round-trip filter: keep a query only if its source ranks in the top k")
    filter_model: str = DEFAULT_BI_ENCODER
    seed: int = 42
    chunk_size: int = 64
    device: str = "auto"
    dev_queries: int = Field(1000, ge=0, description="target size of the synthetic dev set, generated for documents kept "
                                                     "out of training (0 = no dev set)")
    dev_max_overlap: float = Field(0.4, gt=0.0, le=1.0, description="dev set lexical-gap filter: keep a query only if at "
                                                                    "most this share of its content words (stop words left "
                                                                    "out) occur in its source")


class MineConfig(StageConfig):
    """GPL hard-negative mining: top-k passages per generated query from dense retrievers (and optionally BM25)."""

    retrievers: list[str] = Field(
        default_factory=lambda: ["sentence-transformers/msmarco-distilbert-base-v3", "sentence-transformers/msmarco-MiniLM-L-6-v3"])
    bm25: bool = Field(False, description="also mine BM25 negatives through the configured backend")
    top_k: int = Field(50, description="negatives kept per query and retriever")
    batch_size: int = 64
    chunk_size: int = Field(1000, description="queries per resumable chunk")
    device: str = "auto"


class LabelConfig(StageConfig):
    """GPL pseudo-labels: margin teacher(q, p+) - teacher(q, p-) for (query, positive, sampled negative) tuples."""

    teacher: str = Field("cross-encoder/ms-marco-MiniLM-L-6-v2",
                         description="cross-encoder id/path, 'lm:<causal LM>' (query likelihood), 'bi:<bi-encoder>', 'bm25', "
                                     "or 'ensemble:<teacher>+<teacher>+...' (margins normalised, then combined)")
    teacher_weights: list[float] | None = Field(None, description="ensemble: one weight per member (default: equal)")
    tuples_per_query: int = Field(1, description="training tuples per query, each with a freshly sampled negative")
    tuples: int | None = Field(None, description="total tuples, drawn round-robin over the queries (GPL: steps x batch, "
                                                 "e.g. 140000 x 32); default: tuples_per_query per query")
    max_query_tokens: int = Field(350, description="teacher: query tokens kept (longer queries are truncated)")
    max_length: int = Field(350, description="teacher: passage tokens kept, separately from the query (longer passages are truncated)")
    batch_size: int = 32
    chunk_size: int = Field(512, description="tuples per resumable chunk")
    lm_prompt: str = Field("Document: {document}\nRelevant query:", description="query-likelihood prompt ('lm:' teachers)")
    seed: int = 42
    device: str = "auto"


class PretrainConfig(StageConfig):
    """TSDAE domain pre-training (denoising auto-encoder on the corpus' sentences)."""

    method: str = "tsdae"
    epochs: int = 1
    batch_size: int = 8
    learning_rate: float = 3e-5
    deletion_ratio: float = 0.6
    max_sentences: int | None = Field(None, description="sample at most this many sentences")
    max_seq_length: int = 256
    seed: int = 42
    checkpoint_steps: int = 500
    device: str = "auto"


class TrainConfig(StageConfig):
    method: str = Field("genq", description="genq (MultipleNegativesRankingLoss) or gpl (MarginMSE on pseudo-labels)")
    base_model: str = DEFAULT_BI_ENCODER
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 256
    score_scale: float | None = Field(
        None, description="gpl: student score = scale * dot product (default: calibrated to the teacher's margins)")
    eval_split: str | None = Field(None, description="evaluate on these qrels every eval_steps and keep the best checkpoint")
    eval_steps: int = 200
    seed: int = 42
    checkpoint_steps: int = 500
    device: str = "auto"


class ReindexConfig(StageConfig):
    """Copy a live index into ``<alias>-v<N>`` with passage vectors, catch up concurrent writes, verify, switch."""

    alias: str | None = Field(None, description="alias to point at the new index (default: the source, when it is an alias)")
    freeze_writes: bool = Field(False, description="block writes on the source for the final catch-up, verification and "
                                                   "alias switch (always released)")
    catchup_rounds: int = Field(5, description="catch-up rounds of changed documents before the final one")
    verify_sample: int = Field(50, description="documents whose sources are compared field by field (random per run)")
    encode_batch: int | None = Field(None, description="encoding batch size (default: [encoder] batch_size)")


class UpgradeConfig(StageConfig):
    """``genq-search upgrade``: adapt on a live index, gate, export, search pipeline, reindex, alias switch."""

    export_profile: str = Field("cpu", description="ONNX export profile for the deployed bundle (cpu, openvino, gpu, all)")


class GateConfig(StageConfig):
    """Model gate of ``adapt``: keep the adapted model only if it beats the zero-shot one (paired test, ``compare.alpha``)."""

    margin: float = Field(0.0, description="nDCG@10 gain (absolute, 0.01 = 1 point) the adapted dense run must exceed on "
                                           "the dev set, and on labels when given (negative: keep it unless it is worse "
                                           "by more than that)")


class RunConfig(StageConfig):
    """Everything one ``genq-search adapt`` run needs; each section maps to one stage's CLI flags."""

    run_dir: Path = Path("runs/default")
    method: str = Field("genq", description="adapt method: genq, gpl or tsdae+gpl")
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

    @model_validator(mode="before")
    @classmethod
    def _corpus_url(cls, data: Any) -> Any:
        """``corpus.path = "opensearch://host:9200/NAME"`` (or ``opensearchs://`` for HTTPS) reads that index."""
        corpus = data.get("corpus") if isinstance(data, dict) else None
        if isinstance(corpus, dict) and isinstance(corpus.get("path"), str):
            scheme, sep, rest = corpus["path"].partition("://")
            if sep and scheme in INDEX_SCHEMES:
                host, _, name = rest.partition("/")
                if not host or not name or "/" in name:
                    raise ValueError(f"corpus '{corpus['path']}': expected {scheme}://HOST:PORT/INDEX")
                data = {**data, "corpus": {**{k: v for k, v in corpus.items() if k != "path"}, "index": name},
                        "backend": {**data.get("backend", {}), "url": f"{INDEX_SCHEMES[scheme]}://{host}"}}
        return data

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
        """Read a TOML/YAML/JSON config (or start from defaults) and apply non-None CLI overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            data = _read_config(path)
            _resolve_relative_paths(data, path.parent)
        for section, values in (overrides or {}).items():
            given = {k: v for k, v in values.items() if v is not None}
            if section == "run":
                data.update(given)
            elif given and isinstance(data.setdefault(section, {}), dict):  # else validation names the bad section
                data[section].update(given)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _explain(exc, path) from None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Make the path-valued settings of a config file relative to the file's own folder."""
    corpus = data.get("corpus", {})
    targets = [(data, "run_dir"), (corpus, "path"), (corpus, "queries"), (corpus, "qrels"), (data.get("backend", {}), "ca_certs")]
    for section, key in targets:
        value = section.get(key) if isinstance(section, dict) else None
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            section[key] = str((base / section[key]).resolve())


def _read_config(path: Path) -> dict[str, Any]:
    """The settings of a TOML, YAML or JSON file; any parse error is one line naming the file and line."""
    if not path.is_file():
        raise GenqError(f"{path}: config file not found")
    raw = path.read_bytes()
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
            data = json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, f"cannot parse TOML: {exc}") from None
    except yaml.YAMLError as exc:  # its own message spans lines (a quoted excerpt with a caret)
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or exc
        raise InputError(path, f"cannot parse YAML: {problem}" + (f" (column {mark.column + 1})" if mark else ""),
                         mark.line + 1 if mark else None) from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"cannot parse JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"expected sections of settings (a mapping) at the top level, got a {type(data).__name__}")
    return data


def _explain(exc: ValidationError, path: Path | None) -> GenqError:
    """The first validation error as one line: the file, the dotted setting, what is wrong and the value given."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    where = ".".join(loc)
    if first["type"] == "extra_forbidden":
        model: Any = RunConfig
        for part in loc[:-1]:
            field = getattr(model, "model_fields", {}).get(part)
            model = field.annotation if field else None
        close = difflib.get_close_matches(loc[-1], list(getattr(model, "model_fields", {})), 1)
        message = "unknown setting" + (f" (did you mean '{close[0]}'?)" if close else "")
    else:
        error = first.get("ctx", {}).get("error")
        message = str(error) if isinstance(error, ValueError) else first["msg"]
        message += f" (got {first['input']!r:.80})" if loc else ""
    return InputError(path or "config", message, field=where or None)
