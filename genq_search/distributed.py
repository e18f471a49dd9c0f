"""Work on a Ray cluster (``reindex.ray``, ``generate.ray``, ``encoder.ray``; ``--ray ADDRESS``): only imported when asked for, and
only then is Ray imported.

The reindex copy (``index.run_reindex``) is split into work units: one shard of one source index and a ``_seq_no``
range ``(lo, hi]`` of it, ``reindex.ray_unit_docs`` numbers long, between the state's cursors and the shards' global
checkpoints (the *plan*, saved in the reindex state before the first unit runs). A pool of actors, spread over the
cluster's nodes, runs them: each actor has its own cluster connection and its own loaded encoder (the driver's
model: the same ONNX variant on CPU nodes, the bundle's GPU choice on GPU nodes) and copies a unit with the
single-process ``index.Copier`` (read, split into passages, encode, bulk-write with 429 retries, the next batch
encoded while one is written). The driver records each finished unit in the state (``units_done``, saved after
every unit), so a driver killed and rerun resumes the same plan without redoing finished units. When every unit is
done the cursors move to the plan's checkpoints and the driver carries on exactly as a single-process run: catch-up
of writes made since, deletions, ``--freeze-writes``, verification and the alias switch.

Query generation (``generate.run_generate``) sends its missing chunks to a pool of generator actors, each with its
own model; a chunk's rows depend on its documents and seed only, and the driver writes each chunk file as it comes
back, so the output is a single process's and a rerun skips what was written.

Corpus encoding (the embedding cache of ``compare``, ``index`` and ``mine``: ``encoder.ray``) sends parts of the
passages to a pool of encoder actors and keeps each part beside the cache file until the whole is there.

The pools survive their workers: a worker whose process is killed or whose node leaves hands the calls it held back
to the driver, which runs them on the others (idempotent: documents are written by ``_id``, chunks regenerated from
their seed) and starts a replacement where the cluster has room (``Pool``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genq_search.config import (
    BackendConfig,
    CorpusConfig,
    GenerateConfig,
    ReindexConfig,
)
from genq_search.engines.base import Cursors
from genq_search.errors import GenqError

if TYPE_CHECKING:
    from genq_search.encoders import Encoder
    from genq_search.index import Copier, ReindexState

logger = logging.getLogger(__name__)

UNIT_RETRIES = 4  # runs of a unit (chunk) whose worker died under it, after the first, before the run stops with one line
START_TIMEOUT_S = 600  # for a worker to start (placed, its model loaded) before it is left out
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


class Worker:
    """What every actor of a ``Pool`` has: its node, and what went wrong while it loaded (kept, and raised by
    ``info()``, so that it comes back as one line naming the node instead of a dead actor)."""

    def __init__(self, what: str, load: Any):
        import ray

        self.node = ray.util.get_node_ip_address()
        self.error: str | None = None
        try:
            load()
        except Exception as exc:  # noqa: BLE001 - reported by info() as one line naming the node
            self.error = f"Ray worker on node {self.node} cannot {what}: {exc or type(exc).__name__}"

    def info(self) -> dict[str, Any]:
        if self.error:
            raise GenqError(self.error)
        return {"pid": os.getpid(), "node": self.node}


class UnitWorker(Worker):
    """A reindex actor: its own cluster connection and encoder; copies units with ``index.Copier``."""

    def __init__(self, backend: BackendConfig, corpus: CorpusConfig, recipe: EncoderRecipe, state: dict[str, Any],
                 encode_batch: int, gpu: bool, threads: int):
        self.corpus, self.state_fields, self.encode_batch = corpus, state, encode_batch

        def load() -> None:
            from genq_search.engines import connect

            self.encoder = recipe.load(gpu, threads)
            if self.encoder.dim != state["dim"]:
                raise GenqError(f"its model gives {self.encoder.dim}-d vectors, the driver's {state['dim']}-d")
            self.cluster = connect(backend)

        super().__init__("start", load)

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


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[tuple[Any, list[Any]]]:
    """``ray`` joined to ``address`` and a list for the actors started on it: killed on the way out (a driver stopped
    by an error or an interrupt leaves no actor behind), and Ray disconnected when this call connected it."""
    ray, connected = init_ray(address)
    actors: list[Any] = []
    try:
        yield ray, actors
    finally:
        for actor in actors:
            ray.kill(actor)
        if connected:
            ray.shutdown()


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
    with ray_session(reindex.ray) as (ray, actors):
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


def _run_units(ray: Any, copier: Copier, backend: BackendConfig, reindex: ReindexConfig, recipe: EncoderRecipe,
               units: list[Unit], todo: list[Unit], progress: Any, actors: list[Any]) -> int:
    state = copier.state
    fields = {k: getattr(state, k) for k in ("source", "source_indices", "alias", "target", "model", "dim", "settings_hash")}
    pool = Pool(ray, UnitWorker, reindex.ray or "", reindex.ray_workers, len(todo), actors,
                lambda gpu, threads: (backend, copier.corpus, recipe, fields, copier.encode_batch, gpu, threads))
    logger.info("Ray: %d units to copy (%d done earlier)", len(todo), len(units) - len(todo))
    written, finished, started = 0, len(units) - len(todo), time.perf_counter()
    progress.set_postfix_str(f"units {finished}/{len(units)}", refresh=False)
    for unit, result in pool.map("copy", todo, lambda unit: f"copying {unit}"):
        record(state, unit, result)
        written += result["written"]
        finished += 1
        progress.set_postfix_str(f"units {finished}/{len(units)}", refresh=False)
        progress.update(result["read"])
    seconds = time.perf_counter() - started
    logger.info("Ray copy: %d units, %d documents written in %.1fs once the workers had started (%.1f docs/s; %d "
                "workers, %d died)", len(todo), written, seconds, written / seconds if seconds else 0.0, pool.size, pool.died)
    return written


class Pool:
    """Actors of one class spread over the Ray cluster (``SPREAD``): one GPU each where the cluster has GPUs (their
    threads share the node's CPUs), else ``cpus_per_worker`` CPUs each (their threads). The driver, not Ray, handles a worker that dies (its process
    killed, its node gone): the calls it held go back in the queue for the others (up to ``UNIT_RETRIES`` more runs
    each) and a replacement starts where the cluster has room, so a cluster that shrinks finishes on what is left. A
    worker that cannot start on its node (e.g. the runtime is not installed there) is left out with a warning naming
    the node; the run stops with one line only when none starts. ``actors`` is the caller's list: it kills them."""

    def __init__(self, ray: Any, worker: type, address: str, workers: int | None, items: int, actors: list[Any],
                 arguments: Any, use_gpus: bool = True, cpus_per_worker: int = 1, kind: str = "workers"):
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        cpus = sum(int(node.get("CPU", 0)) for node in nodes)
        gpus = sum(int(node.get("GPU", 0)) for node in nodes) if use_gpus else 0
        self.resource = "GPU" if gpus else "CPU"
        per = 1 if gpus else cpus_per_worker  # a worker's CPUs are on one node
        capacity = sum(int(node.get(self.resource, 0)) // per for node in nodes)
        if capacity < 1:
            raise GenqError(f"the Ray cluster at {address} has no node with {per} {self.resource}{'s' * (per > 1)} "
                            "for a worker")
        if (workers or 0) > capacity:
            raise GenqError(f"--ray-workers {workers}: the Ray cluster at {address} has room for {capacity} "
                            f"({per} {self.resource}{'s' * (per > 1)} per worker, on {len(nodes)} node(s))")
        self.size = max(1, min(workers or capacity, items))
        threads = max(1, cpus // self.size) if gpus else cpus_per_worker
        remote = ray.remote(num_cpus=0 if gpus else cpus_per_worker, num_gpus=1 if gpus else 0, max_restarts=0,
                            max_task_retries=0, scheduling_strategy="SPREAD")(worker)
        self.ray, self.actors, self.live, self.died = ray, actors, [], 0
        self._new = lambda: remote.remote(*arguments(bool(gpus), threads))
        started = [self._start() for _ in range(self.size)]
        infos = [actor.info.remote() for actor in started]
        ready, _ = ray.wait(infos, num_returns=len(infos), timeout=START_TIMEOUT_S)
        errors = []
        for actor, info in zip(started, infos, strict=True):
            if info not in ready:  # its resources are held elsewhere, or its model loads for ever
                errors.append(f"a Ray worker did not start within {START_TIMEOUT_S} s")
                ray.kill(actor)
                continue
            try:
                self.live.append((actor, ray.get(info)))
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                errors.append(_one_line(ray, exc))
        if not self.live:
            raise GenqError(f"{errors[0]} (no Ray worker could start)")
        for error in errors:
            logger.warning("%s: going on with the %d workers that started", error, len(self.live))
        nodes = sorted({info["node"] for _, info in self.live})
        logger.info("Ray: %d %s on %d node(s) (%s)", len(self.live), kind, len(nodes), ", ".join(nodes))

    def _start(self) -> Any:
        actor = self._new()
        self.actors.append(actor)
        return actor

    def _replace(self, starting: dict[Any, Any]) -> None:
        """Start a worker in place of a dead one where the cluster has a free CPU (GPU) for it."""
        if len(self.live) + len(starting) < self.size and self.ray.available_resources().get(self.resource, 0) >= 1:
            actor = self._start()
            starting[actor.info.remote()] = actor

    def map(self, method: str, items: list[Any], action: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(item, result)`` as the workers finish them, ``IN_FLIGHT`` queued per worker; ``action(item)`` names the
        call in an error line."""
        ray = self.ray
        queue, runs = list(range(len(items) - 1, -1, -1)), [0] * len(items)
        pending: dict[Any, tuple[Any, int]] = {}
        starting: dict[Any, Any] = {}
        load = {id(actor): 0 for actor, _ in self.live}

        def fill() -> None:
            for actor, _ in self.live:
                while queue and load[id(actor)] < IN_FLIGHT:
                    number = queue.pop()
                    runs[number] += 1
                    pending[getattr(actor, method).remote(items[number])] = (actor, number)
                    load[id(actor)] += 1

        fill()
        while pending or (queue and starting):
            [ref], _ = ray.wait([*pending, *starting], num_returns=1)
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    self.live.append((actor, ray.get(ref)))
                    load[id(actor)] = 0
                    logger.info("Ray: a replacement worker started on node %s", self.live[-1][1]["node"])
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    logger.warning("Ray: a replacement worker could not start: %s", _one_line(ray, exc))
                fill()
                continue
            actor, number = pending.pop(ref)
            load[id(actor)] -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # its process or its node is gone: the call goes back
                node = next((info["node"] for a, info in self.live if a is actor), None)
                if node is not None:
                    self.live, self.died = [(a, info) for a, info in self.live if a is not actor], self.died + 1
                    logger.warning("Ray worker on node %s died (%s); what it held goes back in the queue, %d workers "
                                   "left", node, _one_line(ray, exc)[:200], len(self.live))
                if runs[number] > UNIT_RETRIES:
                    raise GenqError(f"a Ray worker died while {action(items[number])}, {runs[number]} times: "
                                    f"{_one_line(ray, exc)[:300]} (finished units are kept: rerun to go on)") from None
                queue.append(number)
                self._replace(starting)
                fill()
                if not self.live and not starting:
                    raise GenqError(f"every Ray worker is gone and the cluster has no free {self.resource} for another "
                                    f"({len(queue)} units left; finished units are kept: rerun to go on)")
                continue
            except ray.exceptions.RayTaskError as exc:
                raise GenqError(f"{_one_line(ray, exc)} (while {action(items[number])}; finished units are kept: "
                                "rerun to go on)") from None
            self._replace(starting)
            fill()
            yield items[number], result


# -- generation on Ray --------------------------------------------------------------------------------------------


class ChunkWorker(Worker):
    """A generator actor: its own model (``generate.runtime`` as the driver resolved it, never another: two runtimes
    sample different queries), the chunks' rows as a single process computes them."""

    def __init__(self, cfg: GenerateConfig, gpu: bool, threads: int):
        def load() -> None:
            from genq_search.generate import _LazyGenerator, load_generator

            nonlocal cfg
            if gpu:
                cfg = cfg.model_copy(update={"device": "cuda"})
            else:
                import torch

                torch.set_num_threads(threads)
            self.generator = _LazyGenerator(cfg, load_generator(cfg, threads))

        super().__init__("load the query generator", load)

    def chunk(self, job: tuple[int, list[Any], int, int, int, bool]) -> dict[str, Any]:
        """``job``: chunk number, its units, queries per unit, the chunk's seed, batch size, with likelihoods."""
        from genq_search.generate import chunk_rows

        _, units, per_document, seed, batch_size, likelihood = job
        start = time.perf_counter()
        rows = chunk_rows(self.generator, units, per_document, seed, batch_size, likelihood)
        return {"rows": rows, "pid": os.getpid(), "node": self.node, "seconds": time.perf_counter() - start}


def generate_on_ray(cfg: GenerateConfig, chunk_dir: Path, chunks: list[list[Any]], missing: list[int], per_document: int,
                    seed: int, batch_size: int, progress: Any, likelihood: bool) -> Iterator[tuple[int, bool]]:
    """``generate.run_generate``'s chunks on the Ray cluster ``cfg.ray``: the ``missing`` ones run on a pool of
    generator actors and are written by this process as they come back (atomically, as a single process writes them:
    a rerun skips them); ``(n, generated now)`` for every chunk in order."""
    from genq_search.data import chunk_file, write_jsonl
    from genq_search.generate import chunk_seed, generation_runtime

    assert cfg.ray is not None
    local = Path(cfg.generator).expanduser()  # a local model by its absolute path: workers run elsewhere
    worker_cfg = cfg.model_copy(update={"runtime": generation_runtime(cfg),
                                        **({"generator": str(local.resolve())} if local.exists() else {})})
    todo = set(missing)
    with ray_session(cfg.ray) as (ray, actors):
        pool = Pool(ray, ChunkWorker, cfg.ray, cfg.ray_workers, len(missing), actors,
                    lambda gpu, threads: (worker_cfg, gpu, threads), use_gpus=cfg.device != "cpu",
                    cpus_per_worker=cfg.threads or 1, kind="generator workers")
        logger.info("Ray: %d of %d chunks to generate", len(missing), len(chunks))
        jobs = [(n, chunks[n], per_document, chunk_seed(seed, n), batch_size, likelihood) for n in missing]
        done, following = set(), 0
        started, units = time.perf_counter(), 0

        def in_order() -> Iterator[tuple[int, bool]]:
            nonlocal following
            while following < len(chunks) and (following in done or following not in todo):
                if following not in todo:
                    progress.update(len(chunks[following]))
                yield following, following in todo
                following += 1

        yield from in_order()
        for job, result in pool.map("chunk", jobs, lambda job: f"generating chunk {job[0]}"):
            write_jsonl(chunk_file(chunk_dir, job[0]), result["rows"])
            done.add(job[0])
            units += len(job[1])
            progress.update(len(job[1]))
            yield from in_order()
        seconds = time.perf_counter() - started
        logger.info("Ray generation: %d chunks (%d units) in %.1fs once the workers had started (%.2f units/s; %d "
                    "workers, %d died)", len(missing), units, seconds, units / seconds if seconds else 0.0, pool.size,
                    pool.died)


# -- corpus encoding on Ray -------------------------------------------------------------------------------------

PART_TEXTS = 8192  # passages a Ray encoding part holds: the unit of work, of resumption and of one return


class EncodeWorker(Worker):
    """An encoder actor: the driver's model (``EncoderRecipe``), passages to vectors."""

    def __init__(self, recipe: EncoderRecipe, gpu: bool, threads: int):
        def load() -> None:
            self.encoder = recipe.load(gpu, threads)

        super().__init__("load the encoder", load)

    def encode(self, job: tuple[int, list[str], int]) -> dict[str, Any]:
        """``job``: part number, its passages, batch size."""
        _, texts, batch_size = job
        return {"vectors": self.encoder.encode_passages(texts, batch_size=batch_size, progress=False),
                "pid": os.getpid(), "node": self.node}


def encode_on_ray(encoder: Encoder, texts: list[str], batch_size: int, address: str, workers: int | None,
                  parts_dir: Path | None) -> Any:
    """``encoder.encode_passages(texts)`` on the Ray cluster at ``address``: parts of ``PART_TEXTS`` passages over a
    pool of encoder actors (the driver's model, as the reindex loads it), each part saved atomically in ``parts_dir``
    as it comes back, so a rerun encodes only the parts missing."""
    import numpy as np
    from tqdm.auto import tqdm

    from genq_search.data import atomic_write

    recipe = EncoderRecipe.of(encoder)
    parts = [texts[i : i + PART_TEXTS] for i in range(0, len(texts), PART_TEXTS)]
    files = [parts_dir / f"part-{n:05d}.npy" if parts_dir else None for n in range(len(parts))]
    vectors: dict[int, Any] = {n: np.load(f) for n, f in enumerate(files) if f is not None and f.is_file()}
    todo = [n for n in range(len(parts)) if n not in vectors]
    with tqdm(total=len(texts), desc="encode passages on Ray", unit="passage") as progress:
        progress.update(sum(len(parts[n]) for n in vectors))
        if todo:
            with ray_session(address) as (ray, actors):
                pool = Pool(ray, EncodeWorker, address, workers, len(todo), actors,
                            lambda gpu, threads: (recipe, gpu, threads), kind="encoder workers")
                logger.info("Ray: %d of %d parts to encode", len(todo), len(parts))
                jobs = [(n, parts[n], batch_size) for n in todo]
                for (n, _, _), result in pool.map("encode", jobs, lambda job: f"encoding part {job[0]}"):
                    if result["vectors"].shape != (len(parts[n]), encoder.dim):
                        raise GenqError(f"Ray worker on node {result['node']} returned vectors of shape "
                                        f"{result['vectors'].shape} for {len(parts[n])} passages of a {encoder.dim}-d model")
                    vectors[n] = result["vectors"]
                    if files[n] is not None:
                        with atomic_write(files[n], "wb") as handle:
                            np.save(handle, vectors[n])
                    progress.update(len(parts[n]))
    return np.concatenate([vectors[n] for n in range(len(parts))]) if parts else np.zeros((0, encoder.dim), np.float32)


def _one_line(ray: Any, exc: Exception) -> str:
    """A worker's error as one line: a GenqError it raised as is, another exception by its type and last line."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, GenqError):
            return str(cause)
        return f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1]}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "Error" in line), lines[0] if lines else type(exc).__name__)
