"""BEIR-shaped data I/O: corpus, queries and qrels readers with validation, atomic writes, stage manifests.

Shapes (as in BEIR): corpus ``dict[doc_id, {"title", "text"}]``, queries ``dict[qid, text]``,
qrels ``dict[qid, dict[doc_id, int]]``, results ``dict[qid, dict[doc_id, float]]``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import tempfile
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from genq_search.errors import GenqError, InputError

logger = logging.getLogger(__name__)

Corpus = dict[str, dict[str, str]]
Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]
Results = dict[str, dict[str, float]]

QRELS_HEADER = ["query-id", "corpus-id", "score"]


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str


class SourceCorpus(dict):
    """A corpus read from a document source that carries a cheap fingerprint of it (e.g. a live index's UUID,
    document count and max ``_seq_no``), so stages need not hash every document to know whether it changed."""

    def __init__(self, docs: Corpus, fingerprint: str):
        super().__init__(docs)
        self.fingerprint = fingerprint


def corpus_fingerprint(corpus: Corpus) -> str:
    """Identity of a corpus for stage settings hashes: the source's own fingerprint when it has one, else a hash
    of every document."""
    return getattr(corpus, "fingerprint", None) or fingerprint(sorted(corpus.items()))


@dataclass
class Collection:
    """A corpus with (optionally) labelled queries."""

    corpus: Corpus
    queries: Queries
    qrels: Qrels


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file; a byte-order mark is skipped (Windows tools write one),
    line ends are kept, and a byte that is not UTF-8 names the file, line and byte offset."""
    path = Path(path)
    if path.is_dir():
        raise GenqError(f"{path}: is a directory, expected a file")
    if not path.is_file():
        raise GenqError(f"{path}: file not found")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise GenqError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        offset = 0
        for line_no, raw in enumerate(handle, start=1):
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(path, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {offset + exc.start} "
                                       "of the file (save it as UTF-8)", line_no) from None
            offset += len(raw)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed JSON names the file and line (CRLF line
    ends are whitespace to JSON)."""
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            at = "column" if exc.msg.endswith(" at") else "at column"  # "Unterminated string starting at"
            cut = "" if line.endswith("\n") else "; the file ends in the middle of this line (truncated?)"
            raise InputError(path, f"malformed JSON ({exc.msg} {at} {exc.colno}){cut}", line_no) from None
        if not isinstance(obj, dict):
            raise InputError(path, "expected a JSON object", line_no)
        yield line_no, obj


def _required_str(path: Path, line_no: int, obj: dict[str, Any], field: str, allow_empty: bool = False,
                  is_id: bool = False) -> str:
    if field not in obj or obj[field] is None:
        raise InputError(path, "missing", line_no, field)
    value = obj[field]
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(path, f"expected a string, got the number {value} (JSON's {json.dumps(value)})", line_no, field)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(path, f"expected a string, got {type(value).__name__}", line_no, field)
    if not allow_empty and not value.strip():
        raise InputError(path, "is empty", line_no, field)
    if is_id and any(c.isspace() for c in value):
        raise InputError(path, f"id {value!r} holds whitespace, which breaks TREC run and qrels files (one "
                               "whitespace-separated column per field): remove or replace it", line_no, field)
    return value


def field_value(obj: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``"meta.title"``) of a JSON object, or None."""
    value: Any = obj
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def joined_text(obj: dict[str, Any], fields: list[str]) -> str:
    """The non-empty string values of ``fields`` (dotted paths; lists of strings joined too), joined by a space."""
    parts: list[str] = []
    for name in fields:
        value = field_value(obj, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = str(item) if math.isfinite(item) else None  # NaN / Infinity: no text
            if isinstance(item, str) and item.strip():
                parts.append(item.strip())
    return " ".join(parts)


def iter_documents(
    path: Path, id_field: str = "_id", title_field: str | None = "title", text_fields: list[str] | None = None
) -> Iterator[Document]:
    """Stream documents from a JSONL file (ids unique and non-empty). The text field must be present; it may be
    empty when the title is not (BEIR corpora have title-only documents, which are retrieved by their title)."""
    text_fields = text_fields or ["text"]
    seen: set[str] = set()
    for line_no, obj in iter_jsonl(path):
        doc_id = _required_str(path, line_no, obj, id_field, is_id=True)
        if doc_id in seen:
            raise InputError(path, f"duplicate id '{doc_id}'", line_no, id_field)
        seen.add(doc_id)
        title = (field_value(obj, title_field) if title_field else None) or ""
        if not isinstance(title, str):
            raise InputError(path, f"expected a string, got {type(title).__name__}", line_no, title_field)
        if len(text_fields) == 1 and "." not in text_fields[0]:
            text = _required_str(path, line_no, obj, text_fields[0], allow_empty=True)
        else:
            text = joined_text(obj, text_fields)
        if not text.strip() and not title.strip():
            raise InputError(path, "is empty and so is the title: a document needs a text or a title", line_no,
                             ",".join(text_fields))
        yield Document(doc_id, title, text)


def read_corpus(path: Path, id_field: str = "_id", title_field: str | None = "title", text_fields: list[str] | None = None) -> Corpus:
    corpus = {d.id: {"title": d.title, "text": d.text} for d in iter_documents(path, id_field, title_field, text_fields)}
    if not corpus:
        raise InputError(path, "no documents")
    return corpus


def read_queries(path: Path, id_field: str = "_id", text_field: str = "text") -> Queries:
    queries: Queries = {}
    for line_no, obj in iter_jsonl(path):
        qid = _required_str(path, line_no, obj, id_field, is_id=True)
        if qid in queries:
            raise InputError(path, f"duplicate id '{qid}'", line_no, id_field)
        queries[qid] = _required_str(path, line_no, obj, text_field)
    return queries


def read_qrels(path: Path, corpus_ids: Container[str] | None = None, queries: Container[str] | None = None) -> Qrels:
    """Read qrels in the forms users have: BEIR's TSV ``query-id corpus-id score`` (with any header line, or none)
    or TREC's ``qid 0 doc_id rel`` (spaces or tabs). Relevance must be an integer. Given the corpus' ids and the
    queries, a judgement of an unknown document or query fails on its line."""
    path = Path(path)
    qrels: Qrels = {}
    lines = iter_lines(path)
    _, first = next(lines, (1, ""))
    if not first.strip():
        raise InputError(path, "no judgements (the first line is empty)")
    columns = first.rstrip("\r\n").split("\t")
    trec = len(columns) != 3 and len(first.split()) == 4  # a BEIR doc id may hold spaces
    if not trec and len(columns) != 3:
        raise InputError(path, "expected BEIR's tab-separated 'query-id corpus-id score' (header optional) or TREC's "
                               f"'qid 0 doc_id rel' lines, got {first.strip()[:80]!r}", 1)
    header = not trec and not _is_number(columns[2])
    if not header:  # the first line is a judgement
        lines = itertools.chain([(1, first)], lines)
    judged_on: dict[tuple[str, str], int] = {}
    for line_no, line in lines:
        if not line.strip():
            continue
        parts = line.split() if trec else line.rstrip("\r\n").split("\t")
        if len(parts) != (4 if trec else 3):
            raise InputError(path, f"expected {4 if trec else 3} {'whitespace' if trec else 'tab'}-separated columns, "
                                   f"got {len(parts)}", line_no)
        qid, doc_id, score = (parts[0], parts[2], parts[3]) if trec else parts
        if corpus_ids is not None and doc_id not in corpus_ids:
            raise InputError(path, f"document '{doc_id}' is not in the corpus", line_no, "corpus-id")
        if queries is not None and qid not in queries:
            raise InputError(path, f"query '{qid}' is not in the queries file", line_no, "query-id")
        try:
            grade = int(score)
        except ValueError:
            raise InputError(path, f"relevance {score!r} is not an integer", line_no, "score") from None
        before = qrels.setdefault(qid, {}).get(doc_id)
        if before is not None and before != grade:
            raise InputError(path, f"query '{qid}' and document '{doc_id}' are judged {before} on line "
                                   f"{judged_on[qid, doc_id]} and {grade} here: keep one judgement", line_no, "score")
        judged_on.setdefault((qid, doc_id), line_no)
        qrels[qid][doc_id] = grade
    if not qrels:
        raise InputError(path, "no judgements" + (" (only a header line)" if header and first.strip() else " (empty file)"))
    if not any(grade > 0 for judged in qrels.values() for grade in judged.values()):
        raise InputError(path, f"no query has a relevant document: all {len(judged_on)} judgements have grade 0 or less "
                               "(relevant documents need a grade of 1 or more), so every metric would be 0")
    return qrels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_collection(
    path: Path,
    split: str = "test",
    id_field: str = "_id",
    title_field: str | None = "title",
    text_fields: list[str] | None = None,
    with_qrels: bool = True,
    queries_path: Path | None = None,
    qrels_path: Path | None = None,
) -> Collection:
    """Load a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    Only queries that have judgements in the split are kept, as BEIR does.
    """
    path = Path(path)
    if not path.is_dir():
        raise GenqError(f"{path}: not a directory (expected a BEIR folder with corpus.jsonl)")
    if not (path / "corpus.jsonl").exists():  # a directory or an unreadable file: named by the reader
        raise GenqError(f"{path}: no corpus.jsonl (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
    corpus = read_corpus(path / "corpus.jsonl", id_field, title_field, text_fields)
    if not with_qrels:
        return Collection(corpus, {}, {})
    return Collection(corpus, *read_labels(corpus, queries_path or path / "queries.jsonl", qrels_path or path / "qrels" / f"{split}.tsv"))


def read_labels(corpus: Corpus, queries_path: Path, qrels_path: Path, live: bool = False) -> tuple[Queries, Qrels]:
    """Labelled queries and their judgements, checked against the corpus' ids; only judged queries are kept. A
    ``live`` index changes after its judgements were made: judgements of documents deleted since are dropped (and
    counted in a warning) instead of failing the run."""
    queries = read_queries(queries_path)
    qrels = read_qrels(qrels_path, None if live else corpus, queries)
    if live:
        gone = sum(d not in corpus for judged in qrels.values() for d in judged)
        qrels = {q: kept for q, judged in qrels.items() if (kept := {d: r for d, r in judged.items() if d in corpus})}
        if gone:
            logger.warning("%s: %d judgements name documents no longer in the index; they are left out (%d judged queries remain)",
                           qrels_path, gone, len(qrels))
    return {q: queries[q] for q in qrels}, qrels


# --- atomic artifacts and stage manifests -------------------------------------------------------------


def _remove_stale_temps(path: Path) -> None:
    """Delete the temp files of ``path`` left by writers that were killed (SIGKILL, power loss) before they could
    clean up: those named after a process that no longer exists (or after none)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if owner.isdigit():
            try:
                os.kill(int(owner), 0)
                continue  # its writer is alive (this process, or another one writing the same file)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_qrels(path: Path, qrels: Qrels) -> None:
    with atomic_write(path) as handle:
        handle.write("\t".join(QRELS_HEADER) + "\n")
        for qid, judged in qrels.items():
            for doc_id, score in judged.items():
                handle.write(f"{qid}\t{doc_id}\t{score}\n")


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (stage settings, inputs)."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MANIFEST = "manifest.json"


def stage_is_complete(stage_dir: Path, settings_hash: str) -> bool:
    """True when ``stage_dir`` holds a manifest written for exactly these settings."""
    manifest = Path(stage_dir) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text())["settings_hash"] == settings_hash
    except (json.JSONDecodeError, KeyError):
        return False


def mark_stage_complete(stage_dir: Path, settings_hash: str, summary: dict[str, Any]) -> None:
    """Write the manifest last, so its presence means every artifact of the stage is in place."""
    write_json(Path(stage_dir) / MANIFEST, {"settings_hash": settings_hash, **summary})


def read_manifest(stage_dir: Path) -> dict[str, Any]:
    return json.loads((Path(stage_dir) / MANIFEST).read_text())


def chunk_file(chunk_dir: Path, n: int) -> Path:
    return Path(chunk_dir) / f"chunk-{n:05d}.jsonl"


def merge_chunks(chunk_dir: Path, count: int, out: Path) -> list[dict[str, Any]]:
    """Concatenate chunks ``0..count-1`` (bytes unchanged) into ``out``, written atomically; return their rows."""
    rows = []
    with atomic_write(out) as handle:
        for n in range(count):
            for line in chunk_file(chunk_dir, n).open(encoding="utf-8"):
                rows.append(json.loads(line))
                handle.write(line)
    return rows


def prepare_chunks(stage_dir: Path, chunk_settings: str, config: dict[str, Any], overwrite: bool = False) -> Path:
    """The stage's ``chunks/`` folder, emptied when the settings that shape the chunks changed (or on overwrite)."""
    chunk_dir = Path(stage_dir) / "chunks"
    settings_file = Path(stage_dir) / "settings.json"
    changed = settings_file.is_file() and json.loads(settings_file.read_text()).get("chunk_settings_hash") != chunk_settings
    if overwrite or changed:
        for old in chunk_dir.glob("chunk-*.jsonl"):
            old.unlink()
    write_json(settings_file, {"chunk_settings_hash": chunk_settings, "config": config})
    return chunk_dir
