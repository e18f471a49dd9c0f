"""Crash and resource drills: real `genq-search` processes killed with SIGKILL at seeded random points, resumed, and
checked against an uninterrupted run. `bench/reliability.py` runs them at full size; `tests/test_drills.py` runs the
small versions in CI.

- `reindex_drill`: a synthetic source index (2 shards; short, long, title-only and text-less documents) reindexed by
  `genq-search reindex --freeze-writes`, killed `kills` times (half at random points spread over the copy, half at
  random moments of the tail: catch-up, freeze, verification, alias switch; see `await_kill_point`), resumed each
  time; optionally a writer thread adds, updates and deletes source documents while the attempts run. End state
  checked: target ids and sources equal to the source's, vectors on every document with text (and equal to the
  reference run's), one alias move, no second target version, the source unchanged (digest) and not left
  write-blocked, the state file valid JSON after every kill, no temp file left.
- `adapt_drill`: `generate`, `mine`, `label`, `train --method gpl` on a small BEIR folder with tiny models, each stage
  killed at random points and rerun; artifacts compared with an uninterrupted run (byte-identical where the README
  promises it), every JSON/JSONL artifact parses after every kill (but those inside the trainer checkpoint being
  saved at the kill, which has no trainer_state.json yet and is dropped by the next run), no temp file or
  incomplete checkpoint left at the end.
- `rss_drill`: peak RSS (`wait4` of the child) of a reindex of N synthetic documents.

Children are started by a `Launcher`: `exec` runs `python -m genq_search.cli ...` (a fresh interpreter each time);
`fork` keeps one "zygote" process that imported genq_search, torch and sentence-transformers once and forks a child
per command (the same CLI entry point, SIGKILLed the same way) -- 10 s of imports saved per attempt on a 2-core CPU.
This module imports only the standard library at the top, so the zygote and the pytest collector stay light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "pydocs"
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PRELOAD = ["genq_search.cli", "genq_search.index", "genq_search.encoders", "genq_search.generate", "genq_search.mine",
           "genq_search.label", "genq_search.train", "genq_search.pipeline", "sentence_transformers", "transformers",
           "datasets", "opensearchpy", "elasticsearch"]
TEMP_NAME = re.compile(r"(^\..*\.tmp$)|(\.tmp$)|(^tmp-checkpoint)")


# --- launching and killing real CLI processes -------------------------------------------------------------------


class Proc:
    """One CLI process: ``wait(timeout)`` -> exit code or None; ``kill()`` sends SIGKILL and reaps it."""

    pid: int
    returncode: int | None = None
    maxrss_mb: float | None = None

    def __init__(self, log: Path):
        self.log = log

    def wait(self, timeout: float | None = None) -> int | None:
        raise NotImplementedError

    def kill(self) -> int:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        rc = self.wait(60)
        assert rc is not None, f"process {self.pid} did not die"
        return rc

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


class ExecProc(Proc):
    def __init__(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path):
        super().__init__(log)
        with log.open("wb") as out:
            self._popen = subprocess.Popen([sys.executable, "-m", "genq_search.cli", *argv], stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.pid = self._popen.pid

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.returncode = self._popen.returncode = os.waitstatus_to_exitcode(status)
                self.maxrss_mb = usage.ru_maxrss / 1024
                break
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        return self.returncode


class ExecLauncher:
    """A fresh ``python -m genq_search.cli`` per command."""

    name = "exec"

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **CHILD_ENV, **(env or {})}

    def start(self, argv: list[str], log: Path) -> Proc:
        return ExecProc(argv, log, self.env, ROOT)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ForkProc(Proc):
    def __init__(self, launcher: ForkLauncher, pid: int, log: Path):
        super().__init__(log)
        self.launcher, self.pid = launcher, pid

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            line = self.launcher.readline(timeout)
            if line is None:
                return None
            reply = json.loads(line)
            assert reply["pid"] == self.pid, reply
            self.returncode, self.maxrss_mb = reply["rc"], reply["maxrss_kb"] / 1024
        return self.returncode

    def kill(self) -> int:
        # only a live child of the zygote is signalled (never a recycled pid)
        with contextlib.suppress(OSError, IndexError):
            if self.returncode is None and int(Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == self.launcher.zygote.pid:
                os.kill(self.pid, signal.SIGKILL)
        return super().kill()


class ForkLauncher:
    """A zygote that imported the heavy modules once and forks one child per command (one at a time)."""

    name = "fork"

    def __init__(self, env: dict[str, str] | None = None, log: Path | None = None):
        env = {**os.environ, **CHILD_ENV, **(env or {})}
        stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in close()
        self.zygote = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--zygote"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT, bufsize=0)
        self._stderr, self._log = stderr, log
        self._buffer = b""
        self._ready = False  # its imports run while the caller prepares; the first start() waits for them

    def _wait_ready(self) -> None:
        if not self._ready:
            ready = self.readline(300)
            if ready is None or json.loads(ready) != {"ready": True}:
                raise RuntimeError(f"the drill zygote did not start (log: {self._log})")
            self._ready = True

    def readline(self, timeout: float | None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.zygote.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the drill zygote exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def start(self, argv: list[str], log: Path) -> Proc:
        self._wait_ready()
        request = {"argv": argv, "log": str(log), "cwd": str(ROOT)}
        self.zygote.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]
        self.zygote.stdin.flush()  # type: ignore[union-attr]
        line = self.readline(60)
        assert line is not None, "the drill zygote did not fork"
        return ForkProc(self, json.loads(line)["pid"], log)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.zygote.stdin.close()  # type: ignore[union-attr]
        try:
            self.zygote.wait(30)
        except subprocess.TimeoutExpired:
            self.zygote.kill()
            self.zygote.wait()
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zygote() -> None:
    """Import once, then for each JSON request on stdin fork a child running the CLI; reply its pid, then its exit."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # an extra that is not installed is imported (and fails) in the child
            importlib.import_module(name)
    control = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints of the zygote itself go to its log
    control.write(json.dumps({"ready": True}) + "\n")
    control.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, control.fileno())
        control.write(json.dumps({"pid": pid}) + "\n")
        control.flush()
        _, status, usage = os.wait4(pid, 0)
        control.write(json.dumps({"pid": pid, "rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}) + "\n")
        control.flush()


def _child(request: dict[str, Any], control_fd: int) -> None:
    code = 1
    try:
        os.close(control_fd)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.chdir(request["cwd"])
        from genq_search.cli import app

        try:
            app(request["argv"], prog_name="genq-search")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the child's log
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def launcher(kind: str, log: Path | None = None) -> ExecLauncher | ForkLauncher:
    return ForkLauncher(log=log) if kind == "fork" else ExecLauncher()


# --- artifacts on disk -------------------------------------------------------------------------------------------


def temp_files(root: Path) -> list[str]:
    """Temp files/folders left under ``root`` (atomic writes' ``.name.*.tmp``, ``model.tmp``, ``tmp-checkpoint-*``)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if TEMP_NAME.search(p.name))


def incomplete_checkpoints(root: Path) -> list[str]:
    """Trainer checkpoints missing a file resuming needs (weights, optimizer, scheduler, a parseable
    ``trainer_state.json``, which the trainer writes last): half-written, or half-deleted by rotation."""
    bad = []
    for folder in Path(root).rglob("checkpoint-*"):
        try:
            json.loads((folder / "trainer_state.json").read_text())
            complete = (folder / "optimizer.pt").is_file() and (folder / "scheduler.pt").is_file() and any(folder.glob("*.safetensors"))
        except (OSError, json.JSONDecodeError):
            complete = False
        if not complete:
            bad.append(str(folder.relative_to(root)))
    return sorted(bad)


def unparseable(root: Path) -> list[str]:
    """JSON and JSONL artifacts (temp files aside) that do not parse: a half-written file."""
    bad = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or TEMP_NAME.search(path.name) or path.suffix not in (".json", ".jsonl"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                json.loads(text)
            else:
                if text and not text.endswith("\n"):
                    raise ValueError("last line unterminated")
                for line in text.splitlines():
                    json.loads(line)
        except (ValueError, UnicodeDecodeError):
            bad.append(str(path.relative_to(root)))
    return bad


def tree_digest(root: Path, exclude: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not exclude(p.relative_to(root))}


# --- a synthetic source index ------------------------------------------------------------------------------------


def _words(seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qua", "dri", "fen", "gor", "hul", "jex", "caf\u00e9", "na\u00efve", "\u6771\u4eac"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(800)]


def synthetic_document(i: int, seed: int, words: list[str]) -> dict[str, Any]:
    """Document ``i``: 6-24 words; every 97th a long one (several passages), every 53rd without text or title, every
    7th title-less, every 11th title-only; tags and a year for the non-text fields."""
    rng = random.Random(seed * 1_000_003 + i)
    doc: dict[str, Any] = {"year": 1990 + i % 35, "tags": [rng.choice(words) for _ in range(rng.randint(0, 3))]}
    if i % 53 == 0:
        return doc
    if i % 7:
        doc["title"] = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5))).capitalize()
    if i % 11 or "title" not in doc:
        length = 400 if i % 97 == 5 else rng.randint(6, 24)
        doc["text"] = " ".join(rng.choice(words) for _ in range(length)) + f" ({i})."
    return doc


def _helpers(client: Any) -> Any:
    """The bulk/scan helpers of the client's own library (opensearch-py and elasticsearch-py share their signatures)."""
    if type(client).__module__.startswith("elasticsearch"):
        from elasticsearch import helpers
    else:
        from opensearchpy import helpers
    return helpers


def create_source(client: Any, name: str, n_docs: int, seed: int, shards: int = 2) -> None:
    """A plain user index (2 shards, a custom analyser, no vectors) holding ``n_docs`` synthetic documents."""
    helpers = _helpers(client)
    # asciifolding is analysis-common's, a module Elasticsearch's integ-test node lacks (OpenSearch's script installs it)
    filters = ["lowercase"] if type(client).__module__.startswith("elasticsearch") else ["lowercase", "asciifolding"]
    client.indices.create(index=name, body={
        "settings": {"index": {"number_of_shards": shards, "number_of_replicas": 0, "refresh_interval": "-1",
                               "analysis": {"analyzer": {"folded": {"type": "custom", "tokenizer": "standard",
                                                                    "filter": filters}}}}},
        "mappings": {"properties": {"title": {"type": "text", "analyzer": "folded"}, "text": {"type": "text"},
                                    "year": {"type": "integer"}, "tags": {"type": "keyword"}}}})
    words = _words(seed)
    actions = ({"_index": name, "_id": f"doc-{i:06d}", "_source": synthetic_document(i, seed, words)} for i in range(n_docs))
    for ok, item in helpers.streaming_bulk(client, actions, chunk_size=2000, max_retries=8, raise_on_error=True):
        assert ok, item
    client.indices.put_settings(index=name, body={"index": {"refresh_interval": "1s"}})
    client.indices.refresh(index=name)


def _canonical(source: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(source, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _scan(client: Any, index: str, source: bool | list[str] = True) -> Iterator[dict[str, Any]]:
    client.indices.refresh(index=index)
    yield from _helpers(client).scan(client, index=index, query={"query": {"match_all": {}}, "_source": source}, size=2000,
                            scroll="2m", preserve_order=False)


def source_hashes(client: Any, index: str) -> dict[str, str]:
    """Id -> SHA-256 of the canonical JSON ``_source`` (every document)."""
    return {h["_id"]: _canonical(h["_source"]) for h in _scan(client, index)}


def digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}\t{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()


def write_blocked(client: Any, index: str) -> bool:
    settings = client.indices.get_settings(index=index, name="index.blocks.write")
    return any(v.get("settings", {}).get("index", {}).get("blocks", {}).get("write") == "true" for v in settings.values())


def check_target(client: Any, target: str, expected: dict[str, str], dim: int,
                 reference: dict[str, list[list[float]]] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The target against the source's id -> hash map: missing, extra and differing documents, documents with text
    but no vectors (or vectors of another dimension, or vectors on a document without text), and the largest
    difference to the reference run's vectors (documents whose source the reference run copied). Also returns the
    target's id -> hash map (vectors left out)."""
    hashes: dict[str, str] = {}
    no_vectors, stray, bad_dims, compared, max_diff = 0, 0, 0, 0, 0.0
    for hit in _scan(client, target):
        source = dict(hit["_source"])
        vectors = [p.get("vector") or [] for p in source.pop("passages", None) or []]
        hashes[hit["_id"]] = _canonical(source)
        has_text = any(isinstance(source.get(f), str) and source[f].strip() for f in ("title", "text"))
        no_vectors += has_text and not vectors
        stray += bool(vectors) and not has_text
        bad_dims += sum(len(v) != dim for v in vectors)
        ref = (reference or {}).get(hit["_id"])
        if ref is not None and vectors:
            compared += 1
            if len(ref) != len(vectors) or any(len(u) != len(w) for u, w in zip(ref, vectors, strict=True)):
                max_diff = float("inf")
            else:
                max_diff = max(max_diff, *(abs(a - b) for u, w in zip(ref, vectors, strict=True) for a, b in zip(u, w, strict=True)))
    missing = sorted(set(expected) - set(hashes))
    extra = sorted(set(hashes) - set(expected))
    differing = sorted(d for d in set(hashes) & set(expected) if hashes[d] != expected[d])
    return {"documents": len(hashes), "missing": len(missing), "extra": len(extra), "differing": len(differing),
            "examples": (missing + extra + differing)[:5], "with_text_without_vectors": no_vectors,
            "vectors_without_text": stray, "vectors_of_wrong_dimension": bad_dims, "compared_with_reference": compared,
            "max_vector_difference_to_reference": max_diff}, hashes


def target_vectors(client: Any, index: str) -> dict[str, list[list[float]]]:
    return {h["_id"]: [p["vector"] for p in h["_source"].get("passages") or []] for h in _scan(client, index, ["passages"])}


def delete_ours(client: Any, prefix: str) -> None:
    """Delete this drill's indices (all named ``prefix*``, prefix starting with ``genq-drill-``)."""
    assert prefix.startswith("genq-drill-") and len(prefix) > len("genq-drill-") + 4, prefix
    with contextlib.suppress(Exception):
        client.indices.put_settings(index=f"{prefix}*", body={"index": {"blocks.write": None}},
                                    ignore_unavailable=True, allow_no_indices=True)
    for index in list(client.indices.get(index=f"{prefix}*", ignore_unavailable=True, allow_no_indices=True)):
        client.indices.delete(index=index, ignore_unavailable=True)  # by name: Elasticsearch refuses wildcard deletes


class AliasWatcher(threading.Thread):
    """Polls an alias every 20 ms and records each distinct set of indices it points to."""

    def __init__(self, client: Any, alias: str):
        super().__init__(daemon=True)
        self.client, self.alias = client, alias
        self.states: list[list[str]] = [[]]
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                now = sorted(self.client.indices.get_alias(name=self.alias, ignore=[404]).keys() - {"error", "status"})
                if now != self.states[-1]:
                    self.states.append(now)
            time.sleep(0.02)

    def finish(self) -> list[list[str]]:
        self.stop.set()
        self.join(5)
        return self.states


class Writer(threading.Thread):
    """Adds, updates and deletes source documents while ``running`` is set (writes refused by a write block are
    retried until it is released); records what it did."""

    def __init__(self, client: Any, index: str, ids: list[str], writes: int, seed: int, running: threading.Event):
        super().__init__(daemon=True)
        self.client, self.index, self.writes, self.running = client, index, writes, running
        self.rng = random.Random(seed)
        self.pool = [i for i in ids]
        self.rng.shuffle(self.pool)
        self.done = {"added": 0, "updated": 0, "deleted": 0}
        self.touched: set[str] = set()
        self.blocked_retries = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for n in range(self.writes):
                while not self.running.wait(0.1):
                    if self.stop.is_set():
                        return
                kind = ("added", "updated", "deleted")[n % 3]
                doc_id = f"live-{n:05d}" if kind == "added" else self.pool.pop()
                while True:
                    try:
                        if kind == "added":
                            self.client.index(index=self.index, id=doc_id, body={"title": "Live write", "text": f"written during the reindex ({n})", "year": 2025})
                        elif kind == "updated":
                            self.client.update(index=self.index, id=doc_id, body={"doc": {"text": f"updated during the reindex ({n})", "tags": ["live"]}})
                        else:
                            self.client.delete(index=self.index, id=doc_id)
                        break
                    except Exception as exc:  # a frozen source refuses writes until it is released
                        if "cluster_block_exception" not in str(exc) and getattr(exc, "status_code", None) not in (403, 429):
                            raise
                        self.blocked_retries += 1
                        if self.stop.wait(0.05):
                            return
                self.done[kind] += 1
                self.touched.add(doc_id)
                time.sleep(self.rng.uniform(0.005, 0.03))
        except BaseException as exc:  # noqa: BLE001 - reported by the drill
            self.error = exc

    @property
    def finished(self) -> bool:
        return sum(self.done.values()) >= self.writes or self.error is not None


def _wait_until(condition: Callable[[], bool], proc: Proc, timeout: float) -> bool:
    """Poll ``condition`` every 10 ms until true (True) or the process ended / timeout (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.wait(0.01) is not None:
            return False
    return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _touched_since(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


class Progress:
    """Units of work done so far (None until the attempt has started working), and when that last changed."""

    def __init__(self, units: Callable[[], float | None]):
        self.units, self.changed, self.last = units, time.monotonic(), None

    def __call__(self) -> float | None:
        now = self.units()
        if now != self.last:
            self.last, self.changed = now, time.monotonic()
        return now


def await_kill_point(proc: Proc, rng: random.Random, progress: Progress, total: float, per_unit_s: float,
                     tail_s: float, work_kills_left: int) -> tuple[bool, str]:
    """Wait for a random point of the work this attempt has left, then return (True, phase) with the process still
    running; (False, "") when it ended first.

    While ``work_kills_left`` > 0 and units of work remain, the point is uniform over the first
    2/(work_kills_left + 1) of the units left (so the planned kills spread over the whole copy instead of the first
    few ending it); it is reached when the unit in flight at that point has started, plus up to one unit's time.
    Otherwise the point lies in the tail after the last unit (merging; catch-up, freeze, verification, alias switch):
    uniform over the first 75% of the reference run's tail, so that a run a little faster is still killed."""
    if not _wait_until(lambda: progress() is not None, proc, 900):
        return False, ""
    done = progress() or 0.0
    left = max(0.0, total - done)
    if work_kills_left > 0 and left > 0:
        target = done + int(rng.uniform(0, left * min(1.0, 2 / (work_kills_left + 1))))
        if not _wait_until(lambda: (progress() or 0.0) >= target, proc, 900):
            return False, ""
        return proc.wait(rng.uniform(0, per_unit_s)) is None, "work"
    # the tail starts when the last unit is done (or, with live writes, when no unit landed for 3 units' time)
    if not _wait_until(lambda: (progress() or 0.0) >= total or time.monotonic() - progress.changed > 3 * per_unit_s + 0.5,
                       proc, 900):
        return False, ""
    return proc.wait(rng.uniform(0, 0.75 * tail_s)) is None, "tail"


# --- reindex: kills and live writes ------------------------------------------------------------------------------


def _reindex_argv(source: str, alias: str, model: Path, url: str, run_dir: Path, read_batch: int) -> list[str]:
    return ["reindex", source, "--alias", alias, "--model", str(model), "--url", url, "--run-dir", str(run_dir),
            "--read-batch", str(read_batch), "--device", "cpu", "--batch-size", "64", "--freeze-writes"]


def _timed_reference(launch: ExecLauncher | ForkLauncher, argv: list[str], state_file: Path, log: Path) -> dict[str, float]:
    """An uninterrupted run: seconds to its first state save, to the end of the first copy pass, and to its exit."""
    start, start_ns = time.monotonic(), time.time_ns()
    proc = launch.start(argv, log)
    marks: dict[str, float] = {}
    while proc.wait(0.01) is None:
        state = _read_json(state_file) if _touched_since(state_file, start_ns) else None
        if state is not None:
            marks.setdefault("state_s", time.monotonic() - start)
            if state.get("copied", 0) >= state.get("documents", 1):
                marks.setdefault("copied_s", time.monotonic() - start)
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted reference reindex failed: {proc.tail()}")
    end = time.monotonic() - start
    marks.setdefault("state_s", 0.0)
    marks.setdefault("copied_s", marks["state_s"])
    return {"startup_s": marks["state_s"], "copy_s": marks["copied_s"] - marks["state_s"],
            "final_s": end - marks["copied_s"], "total_s": end}


def reindex_drill(url: str, launch: ExecLauncher | ForkLauncher, model: Path, work: Path, *, docs: int, kills: int,
                  seed: int, writes: int = 0, read_batch: int = 100, dim: int | None = None,
                  keep_indices: bool = False) -> dict[str, Any]:
    """Reindex a synthetic source, SIGKILLed ``kills`` times at random points and resumed; ``writes`` > 0 adds a
    writer thread changing the source while the attempts run (the kills go on until its writes are done)."""
    from genq_search.config import BackendConfig
    from genq_search.engines import connect

    started = time.perf_counter()
    client = connect(BackendConfig(engine="auto", url=url)).client
    kind = "live" if writes else "kill"
    prefix = f"genq-drill-{kind}-{uuid.uuid4().hex[:8]}"
    source, alias = f"{prefix}-src", f"{prefix}-alias"
    work.mkdir(parents=True, exist_ok=True)
    run_dir, ref_dir = work / "run", work / "reference"
    rng = random.Random(seed)
    result: dict[str, Any] = {"documents": docs, "kills_planned": kills, "seed": seed, "launcher": launch.name,
                              "read_batch": read_batch}
    watcher: AliasWatcher | None = None
    writer: Writer | None = None
    try:
        create_source(client, source, docs, seed)
        before = source_hashes(client, source)
        result["source_digest_before"] = digest(before)
        # the uninterrupted reference: timings for the kill points, vectors to compare with
        ref_alias = f"{prefix}-ref"
        timing = _timed_reference(launch, _reindex_argv(source, ref_alias, model, url, ref_dir, read_batch),
                                  ref_dir / f"reindex-{ref_alias}.json", work / "reference.log")
        result["reference_s"] = timing
        reference = target_vectors(client, f"{ref_alias}-v1")
        dim = dim or len(next(v for vs in reference.values() for v in vs))
        client.indices.delete(index=f"{ref_alias}-v1")  # only its vectors were needed
        watcher = AliasWatcher(client, alias)
        watcher.start()
        running = threading.Event()
        if writes:
            writer = Writer(client, source, sorted(before), writes, seed + 1, running)
            writer.start()
        argv = _reindex_argv(source, alias, model, url, run_dir, read_batch)
        state_file = run_dir / f"reindex-{alias}.json"
        kill_log: list[dict[str, Any]] = []
        half_written, attempts, completed = 0, 0, False
        while len(kill_log) < kills or (writer is not None and not writer.finished):
            attempts += 1
            start_ns, start = time.time_ns(), time.monotonic()
            proc = launch.start(argv, work / f"attempt-{attempts:03d}.log")
            running.set()
            state_units = Progress(lambda: ((_read_json(state_file) or {}).get("copied", 0) / read_batch
                                            if _touched_since(state_file, start_ns) else None))  # noqa: B023
            copy_kills_left = kills - kills // 2 - sum(k["point"] == "work" for k in kill_log)  # half in the copy
            alive, point = await_kill_point(proc, rng, state_units, docs / read_batch, timing["copy_s"] * read_batch / docs,
                                            timing["final_s"], copy_kills_left)
            rc = None if alive else proc.wait(None)
            if rc is None:
                at = time.monotonic() - start
                proc.kill()
                running.clear()
                saved = None
                try:
                    saved = _read_json(state_file)
                except (ValueError, UnicodeDecodeError):
                    half_written += 1
                phase = ("switched" if not state_file.exists() or client.indices.exists_alias(name=alias)
                         else "frozen" if write_blocked(client, source)
                         else "copy" if saved and saved.get("copied", 0) < saved.get("documents", 0) else "catch-up/verify")
                kill_log.append({"attempt": attempts, "after_s": round(at, 3), "point": point, "phase": phase,
                                 "copied": (saved or {}).get("copied"), "caught_up": (saved or {}).get("caught_up")})
                if not state_file.exists() and client.indices.exists_alias(name=alias):
                    completed = True  # killed after it had finished its work (state file removed)
                    break
            else:
                running.clear()
                if rc != 0:
                    raise RuntimeError(f"reindex attempt {attempts} failed (rc {rc}): {proc.tail()}")
                completed = True
                break
        if writer is not None and completed and not writer.finished:
            writer.stop.set()  # the reindex finished (and switched) while writes were still coming: a failed drill
            result["writer_unfinished_at_switch"] = True
        running.set()  # a writer with writes left finishes them now, before the last run
        if writer is not None:
            writer.join(300)
            if writer.error:
                raise RuntimeError(f"the writer thread failed: {writer.error!r}")
        final_out = ""
        if not completed:
            attempts += 1
            proc = launch.start(argv, work / f"attempt-{attempts:03d}.log")
            if proc.wait(900) != 0:
                raise RuntimeError(f"the final reindex run failed (rc {proc.returncode}): {proc.tail()}")
            final_out = proc.tail(4000)
        alias_states = watcher.finish()
        # end state
        after = source_hashes(client, source)
        target = f"{alias}-v1"
        check, target_hashes = check_target(client, target, after, dim, reference={d: reference[d] for d in reference
                                                                   if after.get(d) == before.get(d)})
        versions = sorted(client.indices.get(index=f"{alias}-v*", ignore_unavailable=True, allow_no_indices=True))
        phases: dict[str, int] = {}
        for kill in kill_log:
            phases[kill["phase"]] = phases.get(kill["phase"], 0) + 1
        done = re.search(r"done: (\d+) documents written .*?: (\d+) caught up, (\d+) deletions caught up", final_out)
        lost = check["missing"] + check["differing"] + check["extra"]
        result.update({
            "attempts": attempts, "kills": len(kill_log), "kills_by_phase": phases, "kill_log": kill_log,
            "documents_lost": lost, "target": check, "target_versions": versions,
            "alias_states": alias_states, "alias_moved_once": alias_states == [[], [target]] and versions == [target],
            "state_file_half_written": half_written, "state_file_left": (run_dir / f"reindex-{alias}.json").exists(),
            "temp_files": temp_files(run_dir), "source_write_blocked_after": write_blocked(client, source),
            "source_documents_after": len(after),
        })
        if writer is None:
            result["source_digest_after"] = digest(after)
            result["source_unchanged"] = result["source_digest_after"] == result["source_digest_before"]
        else:
            # a write is lost when the target does not show it: an added or updated document missing or differing,
            # a deleted one still there
            lost_writes = sum(1 for d in writer.touched if target_hashes.get(d) != after.get(d))
            result.update({"writes": dict(writer.done), "writes_total": sum(writer.done.values()),
                           "writes_lost": lost_writes, "writes_blocked_retries": writer.blocked_retries,
                           "caught_up_last_run": int(done.group(2)) if done else None,
                           "deletions_caught_up_last_run": int(done.group(3)) if done else None})
        result["passed"] = _reindex_passed(result)
        return result
    finally:
        if watcher is not None:
            watcher.stop.set()
        if writer is not None:
            writer.stop.set()
            running.set()
            writer.join(10)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        if not keep_indices:
            delete_ours(client, prefix)


def _reindex_passed(result: dict[str, Any]) -> bool:
    check = result["target"]
    return (result["documents_lost"] == 0 and check["with_text_without_vectors"] == 0 and check["vectors_without_text"] == 0
            and check["vectors_of_wrong_dimension"] == 0 and check["max_vector_difference_to_reference"] < 1e-4
            and result["alias_moved_once"] and not result["state_file_half_written"] and not result["state_file_left"]
            and not result["temp_files"] and not result["source_write_blocked_after"]
            and result.get("source_unchanged", True) and result.get("writes_lost", 0) == 0
            and not result.get("writer_unfinished_at_switch"))


# --- adapt stages: generate / mine / label / train ---------------------------------------------------------------


def _count(folder: Path, pattern: str = "chunk-*.jsonl") -> int:
    return len(list(folder.glob(pattern))) if folder.is_dir() else 0


def _last_checkpoint(folder: Path) -> int:
    steps = [int(m.group(1)) for p in folder.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))] if folder.is_dir() else []
    return max(steps, default=0)


# stage -> (CLI command, progress in units: chunks written or last checkpoint step, artifacts compared byte for byte)
STAGES: dict[str, tuple[list[str], Callable[[Path], int], bool]] = {
    "generate": (["generate"], lambda d: _count(d / "generate" / "chunks") + _count(d / "generate" / "dev" / "chunks"), True),
    "mine": (["mine"], lambda d: _count(d / "mine" / "chunks"), True),
    "label": (["label"], lambda d: _count(d / "label" / "chunks"), True),
    "train": (["train"], lambda d: _last_checkpoint(d / "train-gpl" / "checkpoints"), False),
}
STAGE_DIR = {"generate": "generate", "mine": "mine", "label": "label", "train": "train-gpl"}
# written when a stage starts working (before it loads its models)
START_MARKERS = ["settings.json", "dev/settings.json", "checkpoints/settings.json"]


def _started(stage_dir: Path, since_ns: int) -> bool:
    return any(_touched_since(stage_dir / marker, since_ns) for marker in START_MARKERS)


def beir_folder(out: Path, docs: int) -> Path:
    """The first ``docs`` documents (by id) of the sample collection as a BEIR folder (corpus only)."""
    rows = sorted((json.loads(line) for line in (SAMPLE / "corpus.jsonl").open(encoding="utf-8")), key=lambda r: r["_id"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:docs]), encoding="utf-8")
    return out


def adapt_config(path: Path, corpus: Path, models: dict[str, Path]) -> Path:
    """GPL with tiny models: 2 queries per document in chunks of 2 (no dev set: a random generator writes none that passes its filter), mining in chunks of 4
    queries, 2 labelled tuples per query in chunks of 8, MarginMSE for 2 epochs with a checkpoint every 2 steps."""
    path.write_text(f"""
[corpus]
path = "{corpus}"
[generate]
generator = "{models['t5']}"
queries_per_passage = "2"
batch_size = 2
chunk_size = 2
max_new_tokens = 8
max_input_tokens = 48
min_query_words = 1
dev_queries = 0
device = "cpu"
[mine]
retrievers = ["{models['bi']}"]
negatives = 5
chunk_size = 4
device = "cpu"
[label]
teacher = "{models['cross']}"
tuples_per_query = 2
chunk_size = 8
max_query_tokens = 16
max_length = 48
device = "cpu"
[train]
method = "gpl"
base_model = "{models['bi']}"
epochs = 2
batch_size = 8
max_seq_length = 48
checkpoint_steps = 2
device = "cpu"
""")
    return path


def _stage_argv(stage: str, config: Path, run_dir: Path) -> list[str]:
    return [*STAGES[stage][0], "--config", str(config), "--run-dir", str(run_dir)]


def _weights_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the tensors of two saved models (inf when their files differ in shape)."""
    from safetensors.numpy import load_file

    worst = 0.0
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    if files_a != sorted(p.relative_to(b) for p in b.rglob("*.safetensors")) or not files_a:
        return float("inf")
    for rel in files_a:
        ta, tb = load_file(a / rel), load_file(b / rel)
        if ta.keys() != tb.keys():
            return float("inf")
        for key in ta:
            if ta[key].shape != tb[key].shape:
                return float("inf")
            worst = max(worst, float(abs(ta[key].astype("float64") - tb[key].astype("float64")).max(initial=0.0)))
    return worst


def adapt_drill(launch: ExecLauncher | ForkLauncher, models: dict[str, Path], work: Path, *, kills_per_stage: int,
                seed: int, docs: int = 24) -> dict[str, Any]:
    """Each stage run once uninterrupted (reference), then in a second run directory killed ``kills_per_stage`` times
    at random points of the work it has left and rerun until it finishes; the two runs' artifacts are compared."""
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    config = adapt_config(work / "gpl.toml", beir_folder(work / "corpus", docs), models)
    ref_dir, run_dir = work / "reference", work / "killed"
    rng = random.Random(seed)
    out: dict[str, Any] = {"documents": docs, "kills_per_stage_planned": kills_per_stage, "seed": seed,
                           "launcher": launch.name, "stages": {}}
    for stage, (_, progress, byte_identical) in STAGES.items():
        # the reference: when it started working, when its last unit of work landed, and when it ended
        start, start_ns = time.monotonic(), time.time_ns()
        proc = launch.start(_stage_argv(stage, config, ref_dir), work / f"{stage}-reference.log")
        began = last = None
        units = 0
        while proc.wait(0.01) is None:
            if began is None and _started(ref_dir / STAGE_DIR[stage], start_ns):
                began = time.monotonic() - start
            if progress(ref_dir) > units:
                last, units = time.monotonic() - start, progress(ref_dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{stage}: the uninterrupted run failed: {proc.tail()}")
        total = time.monotonic() - start
        units = progress(ref_dir)
        began, last = began or 0.0, last or total
        per_unit, tail = max(0.01, (last - began) / max(1, units)), total - last
        # the drill: kills at random points of the work each attempt has left, then reruns until one finishes
        kills: list[dict[str, Any]] = []
        half_written: list[str] = []
        attempts = partial_checkpoints = 0
        while True:
            attempts += 1
            done_units, start_ns = progress(run_dir), time.time_ns()
            proc = launch.start(_stage_argv(stage, config, run_dir), work / f"{stage}-attempt-{attempts:02d}.log")
            if len(kills) < kills_per_stage:
                units_now = Progress(lambda: progress(run_dir) if _started(run_dir / STAGE_DIR[stage], start_ns) else None)  # noqa: B023
                alive, phase = await_kill_point(proc, rng, units_now, units, per_unit, tail, kills_per_stage - len(kills))
                if alive:
                    proc.kill()
                    kills.append({"attempt": attempts, "phase": phase, "units_before": done_units, "units_after": progress(run_dir)})
                    # a trainer checkpoint is written in place: the one being saved at the kill is incomplete (no
                    # trainer_state.json yet) and dropped by the next run; any other file must parse
                    partial = incomplete_checkpoints(run_dir)
                    partial_checkpoints += len(partial)
                    half_written += [f for f in unparseable(run_dir) if not any(f.startswith(c + "/") for c in partial)]
                    continue
            rc = proc.wait(1800)
            if rc != 0:
                raise RuntimeError(f"{stage}: attempt {attempts} failed (rc {rc}): {proc.tail()}")
            break
        name = STAGE_DIR[stage]
        manifest_ref, manifest_run = (json.loads((d / name / "manifest.json").read_text()) for d in (ref_dir, run_dir))
        entry: dict[str, Any] = {"units": units, "attempts": attempts, "kills": len(kills), "kill_log": kills,
                                 "half_written_after_kills": sorted(set(half_written)),
                                 "incomplete_checkpoints_after_kills": partial_checkpoints,
                                 "same_settings_hash": manifest_ref["settings_hash"] == manifest_run["settings_hash"],
                                 "reference_s": round(total, 2)}
        if byte_identical:
            a, b = (tree_digest(d / name, lambda p: p.name == "manifest.json") for d in (ref_dir, run_dir))  # timings
            entry["files_compared"] = len(a)
            entry["files_differing"] = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            entry["identical"] = not entry["files_differing"]
        else:
            entry["steps"] = [manifest_ref.get("steps"), manifest_run.get("steps")]
            entry["max_weight_difference"] = _weights_difference(ref_dir / name / "model", run_dir / name / "model")
            entry["resumed_from_checkpoint"] = any(k["units_after"] for k in kills)
        entry["reference_unit_s"], entry["reference_tail_s"] = round(per_unit, 3), round(tail, 3)
        out["stages"][stage] = entry
    out["temp_files"] = temp_files(run_dir)
    out["incomplete_checkpoints"] = incomplete_checkpoints(run_dir)
    out["unparseable_at_end"] = unparseable(run_dir)
    out["kills"] = sum(s["kills"] for s in out["stages"].values())
    out["half_written"] = sum(len(s["half_written_after_kills"]) for s in out["stages"].values())
    out["passed"] = (not out["temp_files"] and not out["incomplete_checkpoints"] and not out["unparseable_at_end"]
                     and out["half_written"] == 0 and all(s["same_settings_hash"] for s in out["stages"].values())
                     and all(s.get("identical", True) for s in out["stages"].values())
                     and out["stages"]["train"]["steps"][0] == out["stages"]["train"]["steps"][1]
                     and out["stages"]["train"]["max_weight_difference"] <= 1e-4 and out["kills"] > 0)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


# --- peak memory of a large reindex -------------------------------------------------------------------------------


def rss_drill(url: str, model: Path, work: Path, *, sizes: list[int], seed: int, read_batch: int = 1000) -> dict[str, Any]:
    """Peak RSS (``wait4`` of a fresh ``genq-search reindex`` process) of reindexing ``n`` synthetic documents, for
    each ``n`` in ``sizes``; the same command with ``--dry-run`` (imports, model, plan) as the baseline."""
    from genq_search.config import BackendConfig
    from genq_search.engines import connect

    client = connect(BackendConfig(engine="auto", url=url)).client
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"read_batch": read_batch, "runs": {}}
    launch = ExecLauncher()
    for n in sizes:
        prefix = f"genq-drill-rss-{uuid.uuid4().hex[:8]}"
        source, alias = f"{prefix}-src", f"{prefix}-alias"
        try:
            t0 = time.perf_counter()
            create_source(client, source, n, seed, shards=1)
            load_s = time.perf_counter() - t0
            argv = _reindex_argv(source, alias, model, url, work / f"run-{n}", read_batch)
            dry = launch.start([*argv, "--dry-run"], work / f"dry-run-{n}.log")
            if dry.wait(600) != 0:
                raise RuntimeError(f"dry run failed: {dry.tail()}")
            t0 = time.perf_counter()
            proc = launch.start(argv, work / f"reindex-{n}.log")
            if proc.wait(3600) != 0:
                raise RuntimeError(f"reindex of {n} documents failed: {proc.tail()}")
            seconds = time.perf_counter() - t0
            client.indices.refresh(index=f"{alias}-v1")
            copied = int(client.count(index=f"{alias}-v1")["count"])
            out["runs"][str(n)] = {"documents": n, "copied": copied, "peak_rss_mb": round(proc.maxrss_mb or 0, 1),
                                   "dry_run_rss_mb": round(dry.maxrss_mb or 0, 1), "reindex_s": round(seconds, 1),
                                   "docs_per_s": round(n / seconds, 1), "source_load_s": round(load_s, 1)}
            print(f"rss: {n} documents -> peak {proc.maxrss_mb:.0f} MB (dry run {dry.maxrss_mb:.0f} MB), {seconds:.0f} s", flush=True)
        finally:
            delete_ours(client, prefix)
            shutil.rmtree(work / f"run-{n}", ignore_errors=True)
    return out


# --- tiny random models (no network) ------------------------------------------------------------------------------


def build_tiny_models(out: Path) -> dict[str, Path]:
    """A WordPiece tokenizer trained on the sample collection, and with it a random 2-layer BERT bi-encoder (32-d,
    mean pooling, normalised), a 1-layer T5 (doc2query shape) and a 2-layer BERT cross-encoder, saved under ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import models as tok_models
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        BertTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    texts = [f"{r['title']} {r['text']}" for r in map(json.loads, (SAMPLE / "corpus.jsonl").open(encoding="utf-8"))]
    texts += " ".join(_words(0)).split()
    tok = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    BertTokenizerFast(tokenizer_object=tok, model_max_length=128).save_pretrained(out / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    bert = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 128}
    built = {
        "bert": lambda: BertModel(BertConfig(**bert)),
        "t5": lambda: T5ForConditionalGeneration(T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id)),
        "cross": lambda: BertForSequenceClassification(BertConfig(**bert, num_labels=1)),
    }
    paths = {}
    for name, build in built.items():
        torch.manual_seed(0)
        paths[name] = out / name
        build().save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    transformer = st_models.Transformer(str(paths.pop("bert")), max_seq_length=64)
    SentenceTransformer(modules=[transformer, st_models.Pooling(32, "mean"), st_models.Normalize()]).save(str(out / "bi"))
    paths["bi"] = out / "bi"
    return paths


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
