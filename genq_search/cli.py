"""Command line: parsing and error mapping only; the work happens in the stage modules."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from genq_search.config import (
    Engine,
    ExportOptions,
    RegisterOptions,
    RunConfig,
    ServeOptions,
    check_options,
)
from genq_search.errors import GenqError

USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")  # click's, or typer's own copy


class OneLineErrors(TyperGroup):
    """A flag value the parser cannot convert (``--k abc``), a missing or unknown flag: one line and exit 1, like every
    other input error (click's own form is a usage box and exit 2)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USAGE_ERROR as exc:
            if _verbose:
                raise
            typer.echo(f"error: {GenqError(exc.format_message())}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=OneLineErrors,
    name="genq-search",
    help="Adapt a bi-encoder to your documents (GenQ/GPL), export it to ONNX, index vectors and compare BM25, dense and hybrid retrieval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
logger = logging.getLogger("genq_search")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run config file (TOML or YAML).")]
RunDirOpt = Annotated[str | None, typer.Option(help="Run directory holding every artifact.")]
CorpusOpt = Annotated[str | None, typer.Option(
    "--corpus", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a live index: opensearch://HOST:9200/NAME, elasticsearch://HOST:9200/NAME or http(s)://HOST:9200/NAME.")]
TitleFieldOpt = Annotated[str | None, typer.Option(help="Dotted path of the documents' title field.")]
TextFieldsOpt = Annotated[str | None, typer.Option(help="Comma-separated dotted paths of the text fields (joined).")]
FreezeOpt = Annotated[bool | None, typer.Option("--freeze-writes/--no-freeze-writes",
                                               help="Block writes on the source for the final catch-up, verification and alias switch (always released).")]
AliasOpt = Annotated[str | None, typer.Option(help="Alias to point at the new index (default: the source, when it is an alias).")]
SplitOpt = Annotated[str | None, typer.Option(help="Qrels split to evaluate on.")]
ModelOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Bi-encoder to compare, as LABEL=ID_OR_PATH (or just ID_OR_PATH); repeatable. 'onnx:<dir>' uses an ONNX bundle."),
]
ModeOpt = Annotated[list[str] | None, typer.Option(
    "--mode", help="bm25, dense, hybrid-rrf, hybrid-minmax, hybrid-zscore, hybrid-tuned (fusion tuned on the synthetic dev set); repeatable.")]
DevQueriesOpt = Annotated[int | None, typer.Option(help="Size of the synthetic dev set (queries for documents kept out of training; 0 = none).")]
MarginOpt = Annotated[float | None, typer.Option(help="Model gate: nDCG@10 gain the adapted model must exceed (0.01 = 1 point).")]
BackendOpt = Annotated[Engine | None, typer.Option("--backend", help="Engine to index and search in: embedded (in-process), "
                                                                  "opensearch, elasticsearch, auto (the cluster at --url).")]
UrlOpt = Annotated[str | None, typer.Option("--url", envvar=["GENQ_SEARCH_URL", "OPENSEARCH_URL"],
                                            help="Cluster URL: http(s)://HOST:PORT (OpenSearch or Elasticsearch, detected).")]
IndexOpt = Annotated[str | None, typer.Option("--index", help="The tool's own index (or alias) on the cluster, created and "
                                                                "searched here (never the source index: that is --corpus).")]
UserOpt = Annotated[str | None, typer.Option("--username", envvar=["GENQ_SEARCH_USERNAME", "OPENSEARCH_USERNAME"])]
PasswordOpt = Annotated[str | None, typer.Option("--password", envvar=["GENQ_SEARCH_PASSWORD", "OPENSEARCH_PASSWORD"])]
KnnLibraryOpt = Annotated[str | None, typer.Option(help="OpenSearch k-NN library: lucene | faiss | nmslib.")]
CaOpt = Annotated[Path | None, typer.Option("--ca-certs", help="CA bundle for TLS.")]
VerifyOpt = Annotated[bool | None, typer.Option("--verify-certs/--no-verify-certs")]
RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="ADDRESS", help="Run on a Ray cluster (query generation, corpus encoding, the reindex copy): auto (join the running one), "
                                     "local (start one here), HOST:PORT or ray://HOST:10001; needs genq-search[ray].")]
RayWorkersOpt = Annotated[int | None, typer.Option(help="Actors on the Ray cluster, each with its own model (default: one per GPU, else per CPU).")]
OverwriteOpt = Annotated[bool | None, typer.Option("--overwrite", help="Replace an existing index / artifacts.")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
BatchOpt = Annotated[int | None, typer.Option(help="Encoding batch size.")]
KOpt = Annotated[int | None, typer.Option("--k", help="Documents retrieved per query.")]


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level)
    for noisy in ("sentence_transformers", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for client in ("opensearch", "elastic_transport", "elasticsearch"):  # failed requests: the error line tells
        logging.getLogger(client).setLevel(logging.DEBUG if verbose else logging.ERROR)


_verbose = False


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")] = False) -> None:
    global _verbose
    _verbose = verbose
    _setup_logging(verbose)


def user_errors(func: F) -> F:
    """Turn a GenqError into one line on stderr and exit code 1 (tracebacks only with --verbose)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GenqError as exc:
            if _verbose:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # what the up-front checks cannot see coming (a full disk, permissions changed meanwhile)
            if _verbose:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"error: {GenqError(where + (exc.strerror or str(exc)))}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished artifacts are kept; rerun the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def renamed_flag(value: T | None, earlier: T | None, old: str, new: str) -> T | None:
    """``new``'s value, else that of its earlier name ``old`` (a hidden flag that still works; logged)."""
    if earlier is not None:
        logger.warning("%s is now %s (the old flag still works; rename it)", old, new)
    return earlier if value is None else value


def backend_overrides(backend: Engine | None, url: str | None, index: str | None, username: str | None,
                      password: str | None, ca_certs: Path | None, verify_certs: bool | None,
                      overwrite: bool | None = None) -> dict[str, Any]:
    return {"engine": backend, "url": url, "index": index, "username": username, "password": password,
            "ca_certs": ca_certs, "verify_certs": verify_certs, "overwrite": overwrite}


@app.command()
@user_errors
def compare(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None, split: SplitOpt = None,
    model: ModelOpt = None, mode: ModeOpt = None, backend: BackendOpt = None, url: UrlOpt = None,
    index: IndexOpt = None, username: UserOpt = None, password: PasswordOpt = None, ca_certs: CaOpt = None,
    verify_certs: VerifyOpt = None, device: DeviceOpt = None, batch_size: BatchOpt = None, k: KOpt = None,
    fusion_depth: Annotated[int | None, typer.Option(help="Candidates per list fused in hybrid modes.")] = None,
    rrf_k: Annotated[int | None, typer.Option(help="RRF constant.")] = None,
    lexical_weight: Annotated[float | None, typer.Option(help="Weight of BM25 in linear fusion (dense gets 1-w).")] = None,
    passage_tokens: Annotated[int | None, typer.Option(help="Passage length in tokens (0 = no split).")] = None,
    passage_stride: Annotated[int | None, typer.Option(help="Token overlap between passages.")] = None,
    baseline: Annotated[str | None, typer.Option(help="Run the significance tests compare against.")] = None,
    contrast: Annotated[str | None, typer.Option(help="Per-query win/loss between two runs: A,B.")] = None,
    model_id: Annotated[str | None, typer.Option(help="ML Commons model id (genq-search register): the cluster embeds the "
                                                      "queries; dense and hybrid run server-side (neural). One --model.")] = None,
    ray: RayOpt = None, ray_workers: RayWorkersOpt = None,
) -> None:
    """Compare BM25, dense and hybrid retrieval on labelled queries (table, JSON, TREC runs, plots, win/loss)."""
    from genq_search.pipeline import run_compare

    cfg = RunConfig.load(config, {
        "run": {"run_dir": run_dir},
        "corpus": {"path": corpus, "split": split, "passage_tokens": passage_tokens, "passage_stride": passage_stride},
        "encoder": {"device": device, "batch_size": batch_size, "ray": ray, "ray_workers": ray_workers},
        "backend": {**backend_overrides(backend, url, index, username, password, ca_certs, verify_certs), "model_id": model_id},
        "compare": {"models": model or None, "modes": mode or None, "k": k, "fusion_depth": fusion_depth,
                    "rrf_k": rrf_k, "lexical_weight": lexical_weight, "baseline": baseline, "contrast": contrast},
    })
    comparison, summary = run_compare(cfg)
    typer.echo(comparison.markdown())
    typer.echo(f"report: {cfg.run_dir / 'compare' / 'report.md'} and report.html beside it  ({summary['wall_s']:.1f}s)")


@app.command()
@user_errors
def evaluate(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None, split: SplitOpt = None,
    model: ModelOpt = None,
    mode: Annotated[str, typer.Option("--mode", help="bm25, dense, hybrid-rrf, hybrid-minmax, hybrid-zscore.")] = "dense",
    backend: BackendOpt = None, url: UrlOpt = None, index: IndexOpt = None, username: UserOpt = None,
    password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None,
    device: DeviceOpt = None, batch_size: BatchOpt = None, k: KOpt = None,
) -> None:
    """Evaluate one retrieval mode (and one model) on labelled queries."""
    from genq_search.pipeline import run_compare

    cfg = RunConfig.load(config, {
        "run": {"run_dir": run_dir},
        "corpus": {"path": corpus, "split": split},
        "encoder": {"device": device, "batch_size": batch_size},
        "backend": backend_overrides(backend, url, index, username, password, ca_certs, verify_certs),
        "compare": {"models": model or None, "modes": [mode], "k": k},
    })
    comparison, _ = run_compare(cfg, cfg.run_dir / "evaluate")
    typer.echo(comparison.markdown())


GenOpt = Annotated[str | None, typer.Option("--generator", help="Query generator: seq2seq (T5/BART) or causal LM id, path or .gguf file.")]
QppOpt = Annotated[str | None, typer.Option(help="Queries per passage: an integer or 'auto' (GPL rule).")]
MaxPassagesOpt = Annotated[int | None, typer.Option(help="Generate for a random subset of at most this many documents.")]
BaseOpt = Annotated[str | None, typer.Option("--base-model", help="Bi-encoder to adapt (the zero-shot model training starts from).")]
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs.")]
TrainBatchOpt = Annotated[int | None, typer.Option("--train-batch-size", help="Training batch size (in-batch negatives).")]
LrOpt = Annotated[float | None, typer.Option(help="Learning rate.")]


DEVICE_STAGES = ("generate", "pretrain", "mine", "label", "train", "encoder")  # every stage `--device` of adapt/upgrade moves


def _on_device(overrides: dict[str, dict[str, Any]], device: str | None) -> dict[str, dict[str, Any]]:
    """``overrides`` with ``device`` set for every stage that runs a model (one meaning of ``--device`` for adapt and upgrade)."""
    for stage in DEVICE_STAGES:
        overrides.setdefault(stage, {})["device"] = device
    return overrides


def _adapt_overrides(run_dir: Path | None, corpus: Path | None, generator: str | None, queries_per_passage: str | None,
                     max_passages: int | None, base_model: str | None, epochs: int | None, train_batch_size: int | None,
                     learning_rate: float | None, device: str | None) -> dict[str, dict[str, Any]]:
    return {
        "run": {"run_dir": run_dir}, "corpus": {"path": corpus},
        "generate": {"generator": generator, "queries_per_passage": queries_per_passage, "max_passages": max_passages, "device": device},
        "train": {"base_model": base_model, "epochs": epochs, "batch_size": train_batch_size, "learning_rate": learning_rate, "device": device},
    }


@app.command()
@user_errors
def generate(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None, generator: GenOpt = None,
    queries_per_passage: QppOpt = None, max_passages: MaxPassagesOpt = None, dev_queries: DevQueriesOpt = None,
    device: DeviceOpt = None, overwrite: OverwriteOpt = None, url: UrlOpt = None, username: UserOpt = None,
    password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None, ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
) -> None:
    """Generate synthetic queries for the corpus (resumable; output in <run-dir>/generate)."""
    from genq_search.generate import run_generate
    from genq_search.pipeline import generation_windows, load_run_collection

    overrides = _adapt_overrides(run_dir, corpus, generator, queries_per_passage, max_passages, None, None, None, None, device)
    overrides["generate"].update({"dev_queries": dev_queries, "ray": ray, "ray_workers": ray_workers})
    overrides["backend"] = backend_overrides(None, url, None, username, password, ca_certs, verify_certs)
    cfg = RunConfig.load(config, overrides)
    documents = load_run_collection(cfg, with_qrels=False).corpus
    summary = run_generate(cfg.generate, documents, cfg.run_dir / "generate", overwrite=bool(overwrite),
                           windows=generation_windows(cfg))
    unit = "passages" if cfg.generate.passage_windows else "documents"
    speed = (f"; {summary['passages_per_s']:.2f} {unit}/s, {summary['queries_per_s']:.2f} queries/s ({summary['runtime']})"
             if summary.get("queries_per_s") else "")
    typer.echo(f"{summary['queries']} queries for {summary['documents']} documents (dropped: {summary['dropped']}{speed}) "
               f"-> {cfg.run_dir / 'generate' / 'gen-queries.jsonl'}")


@app.command()
@user_errors
def pretrain(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None, base_model: BaseOpt = None,
    epochs: EpochsOpt = None, device: DeviceOpt = None, overwrite: OverwriteOpt = None, url: UrlOpt = None,
    username: UserOpt = None, password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None,
) -> None:
    """TSDAE domain pre-training of the base bi-encoder on the corpus (output in <run-dir>/pretrain-tsdae)."""
    from genq_search.pipeline import load_run_collection
    from genq_search.pretrain import run_pretrain

    cfg = RunConfig.load(config, {"run": {"run_dir": run_dir}, "corpus": {"path": corpus}, "train": {"base_model": base_model},
                                  "pretrain": {"epochs": epochs, "device": device},
                                  "backend": backend_overrides(None, url, None, username, password, ca_certs, verify_certs)})
    summary = run_pretrain(cfg.pretrain, load_run_collection(cfg, with_qrels=False).corpus, cfg.train.base_model,
                           cfg.run_dir / "pretrain-tsdae", overwrite=bool(overwrite))
    typer.echo(f"TSDAE: {summary['steps']} steps on {summary['sentences']} sentences (loss {summary['train_loss']:.4f}) -> {summary['model']}")


@app.command()
@user_errors
def mine(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None,
    retriever: Annotated[list[str] | None, typer.Option(help="Dense retriever (id or path) to mine with; repeatable.")] = None,
    bm25: Annotated[bool | None, typer.Option("--bm25/--no-bm25", help="Also mine BM25 negatives (configured backend).")] = None,
    negatives: Annotated[int | None, typer.Option(help="Negatives kept per query and retriever.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", hidden=True)] = None,
    backend: BackendOpt = None, url: UrlOpt = None, index: IndexOpt = None, username: UserOpt = None,
    password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None, device: DeviceOpt = None,
    overwrite: OverwriteOpt = None, ray: RayOpt = None, ray_workers: RayWorkersOpt = None,
) -> None:
    """GPL: mine hard negatives for the generated queries (resumable; output in <run-dir>/mine)."""
    from genq_search.mine import run_mine
    from genq_search.pipeline import lexical_backend, load_run_collection

    cfg = RunConfig.load(config, {"run": {"run_dir": run_dir}, "corpus": {"path": corpus},
                                  "backend": backend_overrides(backend, url, index, username, password, ca_certs, verify_certs),
                                  "mine": {"retrievers": retriever, "bm25": bm25, "device": device,
                                           "negatives": renamed_flag(negatives, top_k, "--top-k", "--negatives")},
                                  "encoder": {"ray": ray, "ray_workers": ray_workers}})
    collection = load_run_collection(cfg, with_qrels=False)
    summary = run_mine(cfg.mine, collection.corpus, cfg.run_dir / "generate", cfg.run_dir / "mine",
                       lexical_backend(cfg, collection) if cfg.mine.bm25 else None, overwrite=bool(overwrite),
                       ray=cfg.encoder.ray, ray_workers=cfg.encoder.ray_workers)
    typer.echo(f"{summary['queries']} queries, {summary['mean_distinct_negatives']:.1f} distinct negatives each "
               f"-> {cfg.run_dir / 'mine' / 'hard-negatives.jsonl'}")


@app.command()
@user_errors
def label(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None,
    teacher: Annotated[str | None, typer.Option(
        help="Cross-encoder id/path, lm:<causal LM>, bi:<bi-encoder>, bm25, or ensemble:A+B+... (normalised sum).")] = None,
    tuples_per_query: Annotated[int | None, typer.Option(help="Training tuples per query (fresh negative each).")] = None,
    tuples: Annotated[int | None, typer.Option(help="Total tuples, drawn round-robin over the queries (GPL budget: steps x batch).")] = None,
    max_query_tokens: Annotated[int | None, typer.Option(help="Query tokens the teacher keeps (passages: max_length).")] = None,
    teacher_weights: Annotated[str | None, typer.Option(help="Ensemble weights, comma-separated, one per member.")] = None,
    device: DeviceOpt = None, overwrite: OverwriteOpt = None, url: UrlOpt = None, username: UserOpt = None,
    password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None,
) -> None:
    """GPL: pseudo-label (query, positive, negative) tuples with teacher margins (resumable; output in <run-dir>/label)."""
    from genq_search.label import run_label
    from genq_search.pipeline import load_run_collection

    cfg = RunConfig.load(config, {"run": {"run_dir": run_dir}, "corpus": {"path": corpus},
                                  "label": {"teacher": teacher, "tuples_per_query": tuples_per_query, "tuples": tuples,
                                            "max_query_tokens": max_query_tokens, "device": device,
                                            "teacher_weights": teacher_weights},
                                  "backend": backend_overrides(None, url, None, username, password, ca_certs, verify_certs)})
    summary = run_label(cfg.label, load_run_collection(cfg, with_qrels=False).corpus, cfg.run_dir / "generate",
                        cfg.run_dir / "mine", cfg.run_dir / "label", overwrite=bool(overwrite))
    typer.echo(f"{summary['tuples']} tuples labelled by {summary['teacher']} (mean margin {summary['margin_mean']:.3f}) "
               f"-> {cfg.run_dir / 'label' / 'gpl-training.jsonl'}")


@app.command()
@user_errors
def train(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None, base_model: BaseOpt = None,
    epochs: EpochsOpt = None, train_batch_size: TrainBatchOpt = None, learning_rate: LrOpt = None,
    method: Annotated[str | None, typer.Option(help="genq (MultipleNegativesRankingLoss), gpl (MarginMSE on the label stage's "
                                                     "output) or tsdae+gpl (gpl from the pretrain stage's model).")] = None,
    device: DeviceOpt = None, overwrite: OverwriteOpt = None, url: UrlOpt = None, username: UserOpt = None,
    password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None,
) -> None:
    """Fine-tune the bi-encoder on the generated queries (resumes from the last checkpoint)."""
    from genq_search.pipeline import eval_collection, load_run_collection
    from genq_search.train import run_train, train_stage_dir

    overrides = _adapt_overrides(run_dir, corpus, None, None, None, base_model, epochs, train_batch_size, learning_rate, device)
    overrides["run"]["method"] = method
    overrides["backend"] = backend_overrides(None, url, None, username, password, ca_certs, verify_certs)
    cfg = RunConfig.load(config, overrides)
    gpl = cfg.method != "genq"
    train_cfg = cfg.train
    if cfg.method.startswith("tsdae+"):  # as adapt does: GPL starts from the TSDAE model
        tsdae = cfg.run_dir / "pretrain-tsdae" / "model"
        if not tsdae.is_dir():
            raise GenqError(f"method {cfg.method} trains the pretrain stage's model, and {tsdae} does not exist: "
                            "run `genq-search pretrain` first")
        train_cfg = train_cfg.model_copy(update={"base_model": str(tsdae)})
    summary = run_train(train_cfg, load_run_collection(cfg, with_qrels=False).corpus, cfg.run_dir / "generate",
                        train_stage_dir(cfg.run_dir, "gpl" if gpl else "genq"), label_dir=cfg.run_dir / "label" if gpl else None,
                        eval_collection=eval_collection(cfg), overwrite=bool(overwrite))
    typer.echo(f"trained {summary['steps']} steps on {summary['pairs']} examples (loss {summary['train_loss']:.4f}) -> {summary['model']}")


@app.command()
@user_errors
def adapt(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None,
    method: Annotated[str | None, typer.Option(help="genq, gpl or tsdae+gpl.")] = None,
    generator: GenOpt = None, queries_per_passage: QppOpt = None, max_passages: MaxPassagesOpt = None, base_model: BaseOpt = None,
    teacher: Annotated[str | None, typer.Option(help="GPL teacher: cross-encoder id/path, lm:, bi:, bm25 or ensemble:A+B.")] = None,
    epochs: EpochsOpt = None, train_batch_size: TrainBatchOpt = None, learning_rate: LrOpt = None,
    dev_queries: DevQueriesOpt = None, margin: MarginOpt = None, device: DeviceOpt = None, overwrite: OverwriteOpt = None,
    url: UrlOpt = None, username: UserOpt = None, password: PasswordOpt = None, ca_certs: CaOpt = None,
    verify_certs: VerifyOpt = None, ray: RayOpt = None, ray_workers: RayWorkersOpt = None,
) -> None:
    """The whole run: generate queries, (pre-train,) mine + label (GPL), train, then compare BM25 / zero-shot / adapted / hybrids."""
    from genq_search.pipeline import run_adapt

    overrides = _adapt_overrides(run_dir, corpus, generator, queries_per_passage, max_passages, base_model,
                                 epochs, train_batch_size, learning_rate, device)
    overrides["run"]["method"] = method
    overrides["generate"].update({"dev_queries": dev_queries, "ray": ray, "ray_workers": ray_workers})
    overrides["encoder"] = {"ray": ray, "ray_workers": ray_workers}
    overrides.update({"label": {"teacher": teacher}, "gate": {"margin": margin},
                      "backend": backend_overrides(None, url, None, username, password, ca_certs, verify_certs)})
    cfg = RunConfig.load(config, _on_device(overrides, device), adapt=True)
    comparison, _ = run_adapt(cfg, overwrite=bool(overwrite))
    typer.echo(comparison.markdown())
    typer.echo(f"report: {cfg.run_dir / 'compare' / 'report.md'} and report.html beside it")


@app.command("index")
@user_errors
def index_command(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Bi-encoder that embeds the passages (HF id, path or onnx:<dir>); omit for BM25 only.")] = None,
    backend: BackendOpt = None, url: UrlOpt = None, index: IndexOpt = None, username: UserOpt = None,
    password: PasswordOpt = None, ca_certs: CaOpt = None, verify_certs: VerifyOpt = None, overwrite: OverwriteOpt = None,
    knn_library: KnnLibraryOpt = None,
    device: DeviceOpt = None, batch_size: BatchOpt = None, ray: RayOpt = None, ray_workers: RayWorkersOpt = None,
) -> None:
    """Index a collection (BM25 text + passage vectors) into the embedded backend or an OpenSearch/Elasticsearch index."""
    from genq_search.encoders import load_encoder
    from genq_search.pipeline import load_run_collection
    from genq_search.search import build_index

    cfg = RunConfig.load(config, {
        "run": {"run_dir": run_dir}, "corpus": {"path": corpus},
        "encoder": {"model": model, "device": device, "batch_size": batch_size, "ray": ray, "ray_workers": ray_workers},
        "backend": {**backend_overrides(backend, url, index, username, password, ca_certs, verify_certs, overwrite), "knn_library": knn_library},
    })
    collection = load_run_collection(cfg, with_qrels=False)
    encoder = load_encoder(cfg.encoder.model, cfg.encoder.device, cfg.encoder.normalize, dtype=cfg.encoder.dtype) if model or config else None
    built, timings = build_index(collection, encoder, cfg.corpus, cfg.encoder, cfg.backend, cfg.run_dir, "index")
    where = getattr(built, "index_name", cfg.run_dir / "index" / "index")
    typer.echo(f"indexed {built.count()} documents ({timings.passages} passages) into {where}")


@app.command()
@user_errors
def reindex(
    source: Annotated[str, typer.Argument(help="Source index or alias (only read).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Bi-encoder that embeds the passages: HF id, path or onnx:<dir>.")],
    alias: AliasOpt = None, title_field: TitleFieldOpt = None, text_fields: TextFieldsOpt = None,
    config: ConfigOpt = None, run_dir: RunDirOpt = None,
    url: UrlOpt = None, username: UserOpt = None, password: PasswordOpt = None, ca_certs: CaOpt = None,
    verify_certs: VerifyOpt = None,
    knn_library: KnnLibraryOpt = None,
    read_batch: Annotated[int | None, typer.Option(help="Documents read (and encoded) per batch.")] = None,
    freeze_writes: FreezeOpt = None,
    catchup_rounds: Annotated[int | None, typer.Option(help="Catch-up rounds of documents changed during the copy.")] = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    device: DeviceOpt = None, batch_size: BatchOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
) -> None:
    """Copy an index into <alias>-v<N> with passage vectors, catch up live writes, verify, then switch the alias (resumable)."""
    from genq_search.encoders import load_encoder
    from genq_search.index import ReindexState, run_reindex

    cfg = RunConfig.load(config, {
        "run": {"run_dir": run_dir}, "encoder": {"model": model, "device": device, "batch_size": batch_size},
        "corpus": {"title_field": title_field, "text_fields": text_fields, "read_batch": read_batch},
        "reindex": {"alias": alias, "freeze_writes": freeze_writes, "catchup_rounds": catchup_rounds, "ray": ray,
                    "ray_workers": ray_workers},
        "backend": {**backend_overrides(None, url, None, username, password, ca_certs, verify_certs), "knn_library": knn_library},
    })
    encoder = load_encoder(cfg.encoder.model, cfg.encoder.device, cfg.encoder.normalize, dtype=cfg.encoder.dtype)
    result = run_reindex(cfg.backend, cfg.corpus, cfg.reindex, source, encoder, cfg.run_dir,
                         encode_batch=cfg.reindex.encode_batch or cfg.encoder.batch_size, dry_run=dry_run)
    if isinstance(result, ReindexState):
        typer.echo(result.describe())
        return
    state = result.state
    typer.echo(state.describe())
    typer.echo(f"done: {result.written} documents written in {result.seconds:.1f}s ({result.docs_per_s:.1f} docs/s): "
               f"{state.caught_up} caught up, {state.deleted} deletions caught up, {result.verified_ids} ids verified, "
               f"{state.without_text} without text; alias '{state.alias}' -> '{state.target}'")


@app.command()
@user_errors
def upgrade(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, corpus: CorpusOpt = None, alias: AliasOpt = None,
    method: Annotated[str | None, typer.Option(help="genq, gpl or tsdae+gpl.")] = None,
    title_field: TitleFieldOpt = None, text_fields: TextFieldsOpt = None, freeze_writes: FreezeOpt = None,
    url: UrlOpt = None, username: UserOpt = None, password: PasswordOpt = None, ca_certs: CaOpt = None,
    verify_certs: VerifyOpt = None, dev_queries: DevQueriesOpt = None, margin: MarginOpt = None, device: DeviceOpt = None,
    ray: RayOpt = None, ray_workers: RayWorkersOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    overwrite: OverwriteOpt = None,
) -> None:
    """Live index -> adapted model (gated) -> ONNX bundle -> <alias>-v<N> with vectors -> alias switch, all resumable."""
    from genq_search.upgrade import describe_plan, run_upgrade

    cfg = RunConfig.load(config, _on_device({
        "run": {"run_dir": run_dir, "method": method},
        "corpus": {"path": corpus, "title_field": title_field, "text_fields": text_fields},
        "reindex": {"alias": alias, "freeze_writes": freeze_writes, "ray": ray, "ray_workers": ray_workers},
        "backend": {"url": url, "username": username, "password": password, "ca_certs": ca_certs, "verify_certs": verify_certs},
        "generate": {"dev_queries": dev_queries, "ray": ray, "ray_workers": ray_workers}, "gate": {"margin": margin},
        "encoder": {"ray": ray, "ray_workers": ray_workers},
    }, device), adapt=True)
    report = run_upgrade(cfg, dry_run=dry_run, overwrite=bool(overwrite))
    typer.echo(describe_plan(report["plan"]))
    if dry_run:
        return
    typer.echo(report["comparison"])
    move = report["alias_move"]
    typer.echo(f"alias '{report['alias']}': {', '.join(move['from']) or '(new)'} -> '{move['to']}'; "
               f"search pipeline: {report['search_pipeline'] or '(none)'}; report: {cfg.run_dir / 'upgrade' / 'report.md'} (and .html)")


@app.command()
@user_errors
def export(
    model: Annotated[str, typer.Option("--model", "-m", help="Bi-encoder to export (sentence-transformers): HF id or path.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Bundle directory to create.")],
    profile: Annotated[str, typer.Option(help="Export profile from export/profiles.json: cpu (fp32+int8, and OpenVINO's when installed), "
                                              "openvino (OpenVINO's required), gpu (fp32+fp16), all.")] = "cpu",
    corpus: Annotated[str | None, typer.Option("--corpus", help="BEIR folder whose passages are the parity sample.")] = None,
    sample: Annotated[int, typer.Option(help="Passages used for the parity check (and to calibrate openvino-int8).")] = 256,
    formats: Annotated[str, typer.Option(help="Also write these layouts of the transformer graph (comma-separated; '' = none): "
                                              "sentence-transformers (folder with onnx/model.onnx), ml-commons (model zip).")] = "sentence-transformers,ml-commons",
    overwrite: OverwriteOpt = None,
) -> None:
    """Export a bi-encoder to a verified ONNX bundle (fp32 / fp16 / int8, OpenVINO fp32 / bf16 / int8) usable as --model onnx:<dir>."""
    from genq_search.export import export_bundle

    opts = check_options(ExportOptions, model=model, out=out, profile=profile, corpus=corpus, sample=sample, formats=formats,
                         overwrite=overwrite)
    texts = None
    if corpus is not None:
        from genq_search.data import iter_documents
        from genq_search.passages import document_text

        texts = []
        for doc in iter_documents(opts.corpus / "corpus.jsonl" if opts.corpus.is_dir() else opts.corpus):
            texts.append(document_text({"title": doc.title, "text": doc.text}))
            if len(texts) >= sample:
                break
    out = opts.out
    manifest = export_bundle(model, out, profile, texts, overwrite=bool(overwrite), formats=tuple(opts.formats))
    for variant, entry in manifest["variants"].items():
        parity = entry["parity"]
        typer.echo(f"{variant:>13}: mean cosine {parity['mean_cosine']:.5f} (min {parity['min_cosine']:.5f}) "
                   f"{parity['cpu_docs_per_s']:.1f} docs/s on CPU, {entry['bytes'] / 2**20:.1f} MiB")
    for variant, parity in manifest.get("left_out", {}).items():
        typer.echo(f"{variant:>13}: left out, mean cosine {parity['mean_cosine']:.5f} below its threshold {parity['threshold']}")
    if "ml_commons" in manifest:
        zipped = manifest["ml_commons"]
        typer.echo(f"ML Commons zip: {out / zipped['zip']} ({zipped['bytes'] / 2**20:.1f} MiB, sha256 {zipped['sha256'][:12]}...)")
    typer.echo(f"bundle: {out}  (use --model onnx:{out})")


@app.command()
@user_errors
def serve(
    bundle: Annotated[str, typer.Option("--bundle", help="ONNX bundle directory (genq-search export).")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
    device: DeviceOpt = None, batch_size: BatchOpt = None,
    passage_tokens: Annotated[int | None, typer.Option(help="Passage window in tokens for /v1/passages (default: the model's max length).")] = None,
    passage_stride: Annotated[int | None, typer.Option(help="Tokens shared by consecutive passages (default: corpus.passage_stride's, as in the reindex).")] = None,
    variant: Annotated[str | None, typer.Option(help="Bundle variant (fp32, int8, fp16; default: the reindex's choice, the "
                                                     "fastest that passed parity).")] = None,
) -> None:
    """Serve the bundle as an HTTP embedding endpoint (/v1/embeddings, /v1/passages, /health) for the cluster to call."""
    from genq_search.serve import serve as run_server

    bundle = check_options(ServeOptions, bundle=bundle, host=host, port=port, device=device, batch_size=batch_size,
                  passage_tokens=passage_tokens, passage_stride=passage_stride, variant=variant).bundle
    provider = "cuda" if device and device.startswith("cuda") else device or "auto"
    run_server(bundle, host=host, port=port, provider=provider, batch_size=batch_size or 64,
               passage_tokens=passage_tokens, passage_stride=passage_stride, variant=variant)


@app.command()
@user_errors
def register(
    bundle: Annotated[str, typer.Option("--bundle", help="ONNX bundle directory (genq-search export).")],
    endpoint: Annotated[str | None, typer.Option(help="URL of `genq-search serve` as the cluster reaches it: register "
                                                      "remote models over it instead of uploading the model zip.")] = None,
    attach_to: Annotated[str | None, typer.Option(metavar="INDEX", help="With --endpoint: attach the ingest pipeline (passage "
                                                                         "vectors for new documents) to this index or alias as "
                                                                         "its default pipeline.")] = None,
    index: Annotated[str | None, typer.Option("--index", hidden=True)] = None,
    group: Annotated[str, typer.Option(help="ML Commons model group.")] = "genq-search",
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="Deploy the uploaded model on the cluster's ONNX runtime.")] = True,
    configure_cluster: Annotated[bool, typer.Option("--configure-cluster", help="Set the cluster settings ML Commons needs (persistent).")] = False,
    config: ConfigOpt = None, url: UrlOpt = None, username: UserOpt = None, password: PasswordOpt = None,
    ca_certs: CaOpt = None, verify_certs: VerifyOpt = None,
) -> None:
    """Make the cluster embed with the bundle: upload it to ML Commons, or register remote models over `genq-search serve`."""
    import json

    from genq_search.engines.opensearch.mlcommons import register_bundle

    attach_to = renamed_flag(attach_to, index, "--index", "--attach-to")
    bundle = check_options(RegisterOptions, bundle=bundle, endpoint=endpoint, attach_to=attach_to, group=group, deploy=deploy,
                  configure_cluster=configure_cluster).bundle
    cfg = RunConfig.load(config, {"backend": backend_overrides(None, url, None, username, password, ca_certs, verify_certs)})
    typer.echo(json.dumps(register_bundle(cfg.backend, bundle, endpoint, attach_to, group, deploy, configure_cluster), indent=2))

if __name__ == "__main__":
    app()
