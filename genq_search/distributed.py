"""The reindex copy on a Ray cluster (``reindex.ray``, ``--ray ADDRESS``): only imported when asked for, and only then
is Ray imported.

The copy phase of ``index.run_reindex`` is split into work units: one shard of one source index and a ``_seq_no``
range ``(lo, hi]`` of it, ``reindex.ray_unit_docs`` numbers long, between the state's cursors and the shards' global
checkpoints (the *plan*, saved in the reindex state before the first unit runs). A pool of actors, spread over the
cluster's nodes, runs them: each actor has its own cluster connection and its own loaded encoder (the driver's
model: the same ONNX variant on CPU nodes, the bundle's GPU choice on GPU nodes) and copies a unit with the
single-process ``index.Copier`` (read, split into passages, encode, bulk-write with 429 retries, the next batch
encoded while one is written). The driver records each finished unit in the state (``units_done``, saved after
every unit), so a driver killed and rerun resumes the same plan without redoing finished units; an actor killed
mid-unit is restarted by Ray (``max_restarts``) and the unit it held is run again (``max_task_retries``, up to
``UNIT_RETRIES`` times):
idempotent, documents are written by ``_id``. When every unit is done the cursors move to the plan's checkpoints and
the driver carries on exactly as a single-process run: catch-up of writes made since, deletions, ``--freeze-writes``,
verification and the alias switch.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genq_search.config import BackendConfig, CorpusConfig, ReindexConfig
from genq_search.engines.base import Cursors
from genq_search.errors import GenqError

if TYPE_CHECKING:
    from genq_search.encoders import Encoder
    from genq_search.index import Copier, ReindexState

logger = logging.getLogger(__name__)

UNIT_RETRIES = 4  # runs of a unit whose worker died under it, after the first, before the run stops with one line
IN_FLIGHT = 2  # units queued per actor: the next one starts as soon as one is returned


@dataclass(frozen=True)
class Unit:
    """Work unit ``number`` of the plan: documents of one shard with ``lo < _seq_no <= hi``."""

    number: int
    index: str
    shard: str
    lo: int
    hi: int

    def __str__(self) -> str:
        return f"{self.index}[{self.shard}] _seq_no ({self.lo}, {self.hi}]"


def plan_units(after: Cursors, upto: Cursors, size: int) -> list[Unit]:
    """The units covering ``after < _seq_no <= upto`` of every shard, ``size`` sequence numbers each (a unit holds
    at most that many documents; updates and deletions leave gaps). Deterministic: a resumed run numbers them alike."""
    units: list[Unit] = []
    for index in sorted(upto):
        for shard, hi in sorted(upto[index].items(), key=lambda item: int(item[0])):
            lo = after.get(index, {}).get(shard, -1)
            for start in range(lo, hi, size):
                units.append(Unit(len(units), index, shard, start, min(start + size, hi)))
    return units


# -- the encoder, as each worker loads it -----------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderRecipe:
    """How a worker loads the driver's encoder (a loaded model is not sent over the network; every worker loads its
    own): a sentence-transformers model by name with the driver's settings, or an ONNX bundle."""

    kind: str  # "onnx" | "sentence-transformers"
    spec: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, encoder: Encoder) -> EncoderRecipe:
        from genq_search.encoders import SentenceTransformerEncoder
        from genq_search.onnx_encoder import OnnxEncoder

        if isinstance(encoder, OnnxEncoder):
            return cls("onnx", str(encoder.bundle.resolve()), {"variant": encoder.variant})
        if isinstance(encoder, SentenceTransformerEncoder):
            local = Path(encoder.name).expanduser()  # a local folder by its absolute path: workers run elsewhere
            return cls("sentence-transformers", str(local.resolve()) if local.exists() else encoder.name, {
                "normalize": encoder.normalize, "max_seq_length": encoder.max_seq_length, "dtype": encoder.dtype,
                "query_prefix": encoder.query_prefix, "passage_prefix": encoder.passage_prefix})
        raise GenqError(f"--ray: every worker loads the model itself, from a Hugging Face id, a local path or an onnx: "
                        f"bundle; a {type(encoder).__name__} cannot be sent to them")

    def load(self, gpu: bool, threads: int) -> Encoder:
        """On a GPU worker the bundle's GPU choice (its device parity checked at load), else the driver's variant."""
        if self.kind == "onnx":
            from genq_search.onnx_encoder import OnnxEncoder

            if gpu:
                return OnnxEncoder(self.spec, provider="cuda")
            return OnnxEncoder(self.spec, variant=self.options["variant"], provider="cpu", threads=threads)
        import torch

        from genq_search.encoders import SentenceTransformerEncoder

        torch.set_num_threads(threads)
        return SentenceTransformerEncoder(self.spec, device="cuda" if gpu else "cpu", **self.options)


# -- the worker (a Ray actor) ----------------------------------------------------------------------------------


def _unit_state_class() -> type:
    from genq_search.index import ReindexState

    class UnitState(ReindexState):
        """A worker's view of the reindex state: counts what its unit did; only the driver saves the state."""

        def save(self) -> None:
            pass

    return UnitState


class _Read:
    """Counts the documents a unit reads (``Copier.run``'s progress)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


class UnitWorker:
    """One actor of the pool: its own cluster connection and encoder; copies units with ``index.Copier``. A failure
    to load is kept and raised by ``info()``, so it comes back as one line naming the node."""

    def __init__(self, backend: BackendConfig, corpus: CorpusConfig, recipe: EncoderRecipe, state: dict[str, Any],
                 encode_batch: int, gpu: bool, threads: int):
        import ray

        self.node = ray.util.get_node_ip_address()
        self.error: str | None = None
        self.corpus, self.state_fields, self.encode_batch = corpus, state, encode_batch
        try:
            from genq_search.engines import connect

            self.encoder = recipe.load(gpu, threads)
            if self.encoder.dim != state["dim"]:
                raise GenqError(f"its model gives {self.encoder.dim}-d vectors, the driver's {state['dim']}-d")
            self.cluster = connect(backend)
        except Exception as exc:  # noqa: BLE001 - reported by info() as one line naming the node
            self.error = f"Ray worker on node {self.node} cannot start: {type(exc).__name__ if not str(exc) else exc}"

    def info(self) -> dict[str, Any]:
        if self.error:
            raise GenqError(self.error)
        return {"pid": os.getpid(), "node": self.node, "variant": getattr(self.encoder, "variant", None)}

    def copy(self, unit: Unit) -> dict[str, Any]:
        """Copy one unit; returns what it did (written, failed ids with reasons, 429s retried, documents read)."""
        from genq_search.index import Copier

        if self.error:
            raise GenqError(self.error)
        start = time.perf_counter()
        state = _unit_state_class()(**self.state_fields)
        copier = Copier(self.cluster, self.corpus, self.encoder, state, self.encode_batch)
        read = _Read()
        written = copier.run(self.cluster.scan([unit.index], {unit.index: {unit.shard: unit.lo}},
                                               {unit.index: {unit.shard: unit.hi}}, self.corpus.read_batch),
                             read, "copied")
        return {"written": written, "read": read.n, "failed": state.failed, "without_text": state.without_text,
                "rejections": copier.target.rejections_retried, "pid": os.getpid(), "node": self.node,
                "seconds": time.perf_counter() - start}


# -- the driver -------------------------------------------------------------------------------------------------


def init_ray(address: str) -> tuple[Any, bool]:
    """``ray`` joined to the cluster at ``address`` (``auto``: the running one, ``local``: a new one in this process);
    True when this call connected (and the caller disconnects). One line when Ray is missing or the cluster is not
    there."""
    try:
        import ray
    except ImportError:
        raise GenqError("--ray needs Ray, which is not installed: pip install 'genq-search[ray]'") from None
    if ray.is_initialized():
        return ray, False
    if address not in ("auto", "local"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            grpc = _speaks_grpc(host, int(port))
        except OSError as exc:
            raise GenqError(f"cannot reach the Ray cluster at {address} ({exc.strerror or type(exc).__name__}): is it "
                            "running? (`ray start --head` prints the address; `--ray auto` joins the one on this node)") from None
        if not grpc:  # Ray would retry for minutes
            raise GenqError(f"{address} is not a Ray cluster (no gRPC server answers there): pass the address "
                            "`ray start --head` printed (HOST:6379, or ray://HOST:10001 for Ray Client)")
    options: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)
    except ConnectionError:
        if address != "auto":
            raise
        raise GenqError("--ray auto: no Ray cluster runs on this node; start one (`ray start --head`), pass its "
                        "address, or use --ray local") from None
    except Exception as exc:  # noqa: BLE001 - RuntimeError, ValueError: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GenqError(f"cannot join the Ray cluster at {address}: {first}") from None
    return ray, True


def _speaks_grpc(host: str, port: int) -> bool:
    """True when an HTTP/2 server (Ray's GCS and Ray Client are gRPC) answers the HTTP/2 preface with its SETTINGS."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        head = b""
        try:
            while len(head) < 9 and (chunk := sock.recv(9 - len(head))):
                head += chunk
        except (TimeoutError, ConnectionError):
            return False
    return len(head) == 9 and head[3] == 4  # a frame header whose type is SETTINGS


def record(state: ReindexState, unit: Unit, result: dict[str, Any]) -> None:
    """A finished unit into the state, saved at once: a rerun never runs it again."""
    state.units_done.append(unit.number)
    state.copied += result["written"]
    state.failed.update(result["failed"])
    state.without_text += result["without_text"]
    state.rejections_retried += result["rejections"]
    state.save()


def copy_on_ray(copier: Copier, backend: BackendConfig, reindex: ReindexConfig, progress: Any) -> int:
    """The copy phase on the Ray cluster ``reindex.ray``; afterwards the state's cursors stand at the checkpoints the
    units covered. Returns the documents written by this run."""
    assert reindex.ray is not None
    state, cluster = copier.state, copier.cluster
    recipe = EncoderRecipe.of(copier.encoder)
    ray, connected = init_ray(reindex.ray)
    actors: list[Any] = []
    try:
        plan = state.ray_plan
        if plan is None or plan.get("after") != state.cursors:
            upto, _ = cluster.checkpoints(state.source_indices)
            plan = {"after": {i: dict(s) for i, s in state.cursors.items()}, "upto": upto, "unit_docs": reindex.ray_unit_docs}
            state.ray_plan, state.units_done = plan, []
            state.save()  # the plan first: a driver killed from here on resumes these units
        units = plan_units(plan["after"], plan["upto"], int(plan["unit_docs"]))
        done = set(state.units_done)
        todo = [u for u in units if u.number not in done]
        if done:
            logger.info("Ray copy resumed: %d of %d units done earlier are not run again", len(units) - len(todo), len(units))
        written = _run_units(ray, copier, backend, reindex, recipe, units, todo, progress, actors) if todo else 0
        for index, shards in plan["upto"].items():  # every unit done: the plan's checkpoints are copied
            cursors = state.cursors.setdefault(index, {})
            for shard, hi in shards.items():
                cursors[shard] = max(hi, cursors.get(shard, -1))
        state.ray_plan, state.units_done = None, []
        state.save()
        copier.target.rejections_retried = state.rejections_retried  # the driver's copier goes on counting from here
        return written
    finally:
        for actor in actors:
            ray.kill(actor)
        if connected:
            ray.shutdown()


def _run_units(ray: Any, copier: Copier, backend: BackendConfig, reindex: ReindexConfig, recipe: EncoderRecipe,
               units: list[Unit], todo: list[Unit], progress: Any, actors: list[Any]) -> int:
    state = copier.state
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    gpu = gpus > 0  # GPU workers wherever the cluster has GPUs, one GPU each; else one CPU each
    capacity = gpus if gpu else cpus
    if capacity < 1:
        raise GenqError(f"the Ray cluster at {reindex.ray} has no {'GPU' if gpu else 'CPU'} to run a worker on")
    if (reindex.ray_workers or 0) > capacity:
        raise GenqError(f"--ray-workers {reindex.ray_workers}: the Ray cluster at {reindex.ray} has {capacity} "
                        f"{'GPUs' if gpu else 'CPUs'}, one per worker")
    workers = min(reindex.ray_workers or capacity, len(todo))
    threads = max(1, cpus // workers) if gpu else 1
    worker_class = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0, max_restarts=-1,
                              max_task_retries=UNIT_RETRIES, scheduling_strategy="SPREAD")(UnitWorker)
    fields = {k: getattr(state, k) for k in ("source", "source_indices", "alias", "target", "model", "dim", "settings_hash")}
    actors += [worker_class.remote(backend, copier.corpus, recipe, fields, copier.encode_batch, gpu, threads)
               for _ in range(workers)]
    infos = _gather(ray, [a.info.remote() for a in actors], "starting the workers")
    nodes = sorted({i["node"] for i in infos})
    logger.info("Ray: %d workers on %d node(s) (%s), %d units to copy (%d done earlier)", workers, len(nodes),
                ", ".join(nodes), len(todo), len(units) - len(todo))
    pids = [i["pid"] for i in infos]
    queue, pending = list(reversed(todo)), {}
    written, finished, started = 0, len(units) - len(todo), time.perf_counter()
    progress.set_postfix_str(f"units {finished}/{len(units)}", refresh=False)

    def submit(worker: int) -> None:
        if queue:
            unit = queue.pop()
            pending[actors[worker].copy.remote(unit)] = (worker, unit)

    for worker in range(workers):
        for _ in range(IN_FLIGHT):
            submit(worker)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        worker, unit = pending.pop(ref)
        [result] = _gather(ray, [ref], f"copying {unit}")
        if result["pid"] != pids[worker]:
            logger.warning("Ray worker %d on node %s was restarted (pid %s -> %s); the unit it held was copied again",
                           worker, result["node"], pids[worker], result["pid"])
            pids[worker] = result["pid"]
        record(state, unit, result)
        written += result["written"]
        finished += 1
        progress.set_postfix_str(f"units {finished}/{len(units)}", refresh=False)
        progress.update(result["read"])
        submit(worker)
    seconds = time.perf_counter() - started
    logger.info("Ray copy: %d units, %d documents written in %.1fs once the workers had started (%.1f docs/s, %d workers)",
                len(todo), written,
                seconds, written / seconds if seconds else 0.0, workers)
    return written


def _gather(ray: Any, refs: list[Any], action: str) -> list[Any]:
    """``ray.get`` with a worker's error as one line (a unit that cannot be copied stops the run; a worker that died
    more often than Ray restarts it too)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, GenqError):
            raise GenqError(f"{cause} (while {action}; finished units are kept: rerun to go on)") from None
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise GenqError(f"a Ray worker failed while {action}: {type(cause).__name__}: {first} (finished units are kept: "
                        "rerun to go on)") from None
    except ray.exceptions.RayActorError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        detail = next((line.strip() for line in reversed(lines) if "Error" in line), lines[0] if lines else "")
        raise GenqError(f"a Ray worker died while {action} ({UNIT_RETRIES + 1} times for this unit, or it cannot "
                        f"start on its node: is genq-search installed there?): {detail[:300]} (finished units are "
                        "kept: rerun to go on)") from None
