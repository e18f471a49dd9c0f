"""Bad-input catalogue: every kind of bad input the tool reads, fed through the real CLI.

A rejected input ends in one line ``error: ...`` naming the file, line and field (or the setting, model, index),
exit code 1 and no artifact in the run directory. Inputs users commonly have (a UTF-8 BOM, CRLF line ends,
title-only documents, qrels without a header or in TREC's form, a 1 MB document) are accepted and read correctly.
``CASES`` names every case, one test each, so ``bench/reliability.py`` can count them.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import sample_texts
from typer.testing import CliRunner

from genq_search.cli import app

runner = CliRunner()

DOCS = [("d1", "Cats", "cats purr and sleep all day"), ("d2", "Dogs", "dogs bark at the postman"),
        ("d3", "Tea", "green tea leaves steep in hot water")]
QUERIES = [("q1", "cats purr"), ("q2", "dogs bark")]
HEADER = "query-id\tcorpus-id\tscore\n"
QRELS = HEADER + "q1\td1\t1\nq2\td2\t1\n"

# A case writes its input under ``tmp`` and returns the CLI arguments (``--run-dir`` is added) and what must happen:
# the text the one error line must contain (and, optionally, a check that what existed is unchanged), or a check of
# the run directory of an accepted run.
Check = Callable[[Path], None]
Outcome = tuple[list[str], str | Check] | tuple[list[str], str, Callable[[], None]]
CASES: dict[str, Callable[[Path, Callable[[str], Any]], Outcome]] = {}
INTEGRATION: set[str] = set()  # cases that need OPENSEARCH_URL


def case(name: str, integration: bool = False) -> Callable[[Callable[..., Outcome]], Callable[..., Outcome]]:
    def register(build: Callable[..., Outcome]) -> Callable[..., Outcome]:
        CASES[name] = build
        if integration:
            INTEGRATION.add(name)
        return build

    return register


def jsonl(rows: list[dict[str, Any]], end: str = "\n") -> bytes:
    return "".join(json.dumps(row) + end for row in rows).encode()


def doc_rows() -> list[dict[str, Any]]:
    return [{"_id": d, "title": t, "text": x} for d, t, x in DOCS]


def beir(tmp: Path, corpus: bytes | None = None, queries: bytes | None = None, qrels: bytes | None = None) -> Path:
    """A BEIR folder with the given files (bytes, written as is) in place of the good defaults."""
    folder = tmp / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_bytes(jsonl(doc_rows()) if corpus is None else corpus)
    (folder / "queries.jsonl").write_bytes(jsonl([{"_id": q, "text": t} for q, t in QUERIES]) if queries is None else queries)
    (folder / "qrels" / "test.tsv").write_bytes(QRELS.encode() if qrels is None else qrels)
    return folder


def bm25(folder: Path, *extra: str) -> list[str]:
    return ["compare", "--corpus", str(folder), "--mode", "bm25", *extra]


def dense(folder: Path, model: str) -> list[str]:
    return ["compare", "--corpus", str(folder), "--mode", "dense", "--model", f"m={model}"]


def finds_every_document(run_dir: Path) -> None:
    """The run read every document and judged query, and BM25 ranks each query's document first (the content was
    read intact)."""
    summary = json.loads((run_dir / "compare" / "summary.json").read_text())
    assert (summary["documents"], summary["queries"]) == (len(DOCS), len(QUERIES))
    runs = json.loads((run_dir / "compare" / "metrics.json").read_text())["runs"]
    assert {r["name"]: r["metrics"]["ndcg@10"] for r in runs} == {"bm25": 1.0}


# --- corpus.jsonl -------------------------------------------------------------------------------------------


@case("corpus-malformed-json")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl(doc_rows()[:1]) + b'{"_id": "d2", "text": }\n')
    return bm25(folder), f"{folder}/corpus.jsonl:2: malformed JSON (Expecting value at column 23)"


@case("corpus-truncated")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl(doc_rows()[:2]) + b'{"_id": "d3", "title": "Tea", "te')
    return bm25(folder), (f"{folder}/corpus.jsonl:3: malformed JSON (Unterminated string starting at column 31); "
                          "the file ends in the middle of this line (truncated?)")


@case("corpus-bom")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp, corpus=b"\xef\xbb\xbf" + jsonl(doc_rows()))), finds_every_document


@case("corpus-crlf")
def _(tmp: Path, fixture: Any) -> Outcome:
    queries = jsonl([{"_id": q, "text": t} for q, t in QUERIES], end="\r\n")
    folder = beir(tmp, corpus=jsonl(doc_rows(), end="\r\n"), queries=queries, qrels=QRELS.replace("\n", "\r\n").encode())
    return bm25(folder), finds_every_document


@case("corpus-non-utf8")
def _(tmp: Path, fixture: Any) -> Outcome:
    first = jsonl(doc_rows()[:1])
    folder = beir(tmp, corpus=first + b'{"_id": "d2", "text": "caf\xe9"}\n')
    offset = len(first) + len(b'{"_id": "d2", "text": "caf')
    return bm25(folder), f"{folder}/corpus.jsonl:2: not valid UTF-8: byte 0xe9 at byte offset {offset} of the file"


@case("corpus-not-an-object")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl(doc_rows()[:1]) + b'["d2", "Dogs"]\n')
    return bm25(folder), f"{folder}/corpus.jsonl:2: expected a JSON object"


@case("corpus-missing-id")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"title": "Dogs", "text": "dogs bark"}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field '_id': missing"


@case("corpus-empty-id")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"_id": " ", "title": "Dogs", "text": "dogs bark"}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field '_id': is empty"


@case("corpus-duplicate-id")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows(), {"_id": "d1", "title": "", "text": "again"}]))
    return bm25(folder), f"{folder}/corpus.jsonl:4: field '_id': duplicate id 'd1'"


@case("corpus-id-wrong-type")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"_id": ["d2"], "text": "dogs bark"}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field '_id': expected a string, got list"


@case("corpus-text-wrong-type")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"_id": "d2", "text": {"body": "dogs bark"}}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field 'text': expected a string, got dict"


@case("corpus-text-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    # a title alone does not excuse a missing text field: it is most likely named otherwise (see --text-fields)
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"_id": "d2", "title": "Dogs", "body": "dogs bark"}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field 'text': missing"


@case("corpus-title-only")
def _(tmp: Path, fixture: Any) -> Outcome:
    # accepted (BEIR's TREC-COVID has such documents): an empty text with a title; the title is what is retrieved
    rows = doc_rows()
    rows[0] = {"_id": "d1", "title": "cats purr and sleep", "text": ""}
    return bm25(beir(tmp, corpus=jsonl(rows))), finds_every_document


@case("corpus-no-title-no-text")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"_id": "d2", "title": "", "text": "  "}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field 'text': is empty and so is the title"


@case("corpus-empty-file")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=b"\n\n")
    return bm25(folder), f"{folder}/corpus.jsonl: no documents"


@case("corpus-huge-document")
def _(tmp: Path, fixture: Any) -> Outcome:
    text = " ".join(sample_texts(60))
    huge = (text * (2**20 // len(text) + 1))[: 2**20]
    rows = doc_rows()
    rows[2]["text"] = huge
    model = fixture("tiny_bi_encoder")

    def check(run_dir: Path) -> None:  # split into token windows, every one encoded and indexed
        summary = json.loads((run_dir / "compare" / "summary.json").read_text())
        assert summary["documents"] == 3 and summary["passages"]["m"] > 2**20 // (4 * 64)

    return dense(beir(tmp, corpus=jsonl(rows)), str(model)), check


@case("corpus-folder-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(tmp / "nowhere"), f"{tmp / 'nowhere'}: not a directory"


@case("corpus-folder-without-corpus-jsonl")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp)
    (folder / "corpus.jsonl").rename(folder / "docs.jsonl")
    return bm25(folder), f"{folder}: no corpus.jsonl"


@case("corpus-id-with-space")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl([*doc_rows()[:1], {"_id": "d 2", "title": "Dogs", "text": "dogs bark"}]))
    return bm25(folder), f"{folder}/corpus.jsonl:2: field '_id': id 'd 2' holds whitespace, which breaks TREC run"


@case("corpus-text-nan")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, corpus=jsonl(doc_rows()[:2]) + b'{"_id": "d3", "title": "Tea", "text": NaN}\n')
    return bm25(folder), f"{folder}/corpus.jsonl:3: field 'text': expected a string, got the number nan (JSON's NaN)"


@case("corpus-jsonl-is-a-directory")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp)
    (folder / "corpus.jsonl").unlink()
    (folder / "corpus.jsonl").mkdir()
    return bm25(folder), f"{folder}/corpus.jsonl: is a directory, expected a file"


# --- queries.jsonl ------------------------------------------------------------------------------------------


@case("queries-malformed-json")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, queries=b'{"_id": "q1", "text": "cats purr"}\n{"_id": "q2" "text": "dogs bark"}\n')
    return bm25(folder), f"{folder}/queries.jsonl:2: malformed JSON (Expecting ',' delimiter at column 14)"


@case("queries-duplicate-id")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, queries=jsonl([{"_id": "q1", "text": "cats purr"}, {"_id": "q1", "text": "dogs bark"}]))
    return bm25(folder), f"{folder}/queries.jsonl:2: field '_id': duplicate id 'q1'"


@case("queries-empty-text")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, queries=jsonl([{"_id": "q1", "text": ""}, {"_id": "q2", "text": "dogs bark"}]))
    return bm25(folder), f"{folder}/queries.jsonl:1: field 'text': is empty"


@case("queries-file-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp)
    (folder / "queries.jsonl").unlink()
    return bm25(folder), f"{folder}/queries.jsonl: file not found"


# --- qrels/<split>.tsv --------------------------------------------------------------------------------------


@case("qrels-unknown-document")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=(QRELS + "q2\td9\t1\n").encode())
    return bm25(folder), f"{folder}/qrels/test.tsv:4: field 'corpus-id': document 'd9' is not in the corpus"


@case("qrels-unknown-query")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=(QRELS + "q9\td3\t1\n").encode())
    return bm25(folder), f"{folder}/qrels/test.tsv:4: field 'query-id': query 'q9' is not in the queries file"


@case("qrels-no-header")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp, qrels=QRELS.removeprefix(HEADER).encode())), finds_every_document


@case("qrels-other-header")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp, qrels=QRELS.replace(HEADER, "qid\tdocid\trelevance\n").encode())), finds_every_document


@case("qrels-trec-spaces")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp, qrels=b"q1 0 d1 1\nq2 0 d2 1\nq2 0 d3 0\n")), finds_every_document


@case("qrels-trec-tabs")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp, qrels=b"q1\tQ0\td1\t1\r\nq2\tQ0\td2\t2\r\n")), finds_every_document


@case("qrels-bom-crlf")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp, qrels=b"\xef\xbb\xbf" + QRELS.replace("\n", "\r\n").encode())), finds_every_document


@case("qrels-non-integer-relevance")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=(HEADER + "q1\td1\t1\nq2\td2\t0.5\n").encode())
    return bm25(folder), f"{folder}/qrels/test.tsv:3: field 'score': relevance '0.5' is not an integer"


@case("qrels-wrong-columns")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=(HEADER + "q1\td1\t1\nq2\td2\n").encode())
    return bm25(folder), f"{folder}/qrels/test.tsv:3: expected 3 tab-separated columns, got 2"


@case("qrels-csv")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=b"query-id,corpus-id,score\nq1,d1,1\n")
    return bm25(folder), (f"{folder}/qrels/test.tsv:1: expected BEIR's tab-separated 'query-id corpus-id score' "
                          "(header optional) or TREC's 'qid 0 doc_id rel' lines, got 'query-id,corpus-id,score'")


@case("qrels-non-utf8")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=HEADER.encode() + b"q1\td\xff1\t1\n")
    return bm25(folder), f"{folder}/qrels/test.tsv:2: not valid UTF-8: byte 0xff at byte offset {len(HEADER) + 4} of the file"


@case("qrels-split-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp)
    return bm25(folder, "--split", "dev"), f"{folder}/qrels/dev.tsv: file not found"


@case("qrels-conflicting-duplicate")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=(QRELS + "q1\td1\t2\n").encode())
    return bm25(folder), (f"{folder}/qrels/test.tsv:4: field 'score': query 'q1' and document 'd1' are judged 1 on line 2 "
                          "and 2 here")


@case("qrels-all-grades-zero")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=(HEADER + "q1\td1\t0\nq2\td2\t0\n").encode())
    return bm25(folder), f"{folder}/qrels/test.tsv: no query has a relevant document"


@case("qrels-header-only")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp, qrels=HEADER.encode())
    return bm25(folder), f"{folder}/qrels/test.tsv: no judgements (only a header line)"


@case("qrels-is-a-directory")
def _(tmp: Path, fixture: Any) -> Outcome:
    folder = beir(tmp)
    (folder / "qrels" / "test.tsv").unlink()
    (folder / "qrels" / "test.tsv").mkdir()
    return bm25(folder), f"{folder}/qrels/test.tsv: is a directory, expected a file"


# --- run config (TOML / YAML / JSON) and flags --------------------------------------------------------------


def with_config(tmp: Path, name: str, content: str | bytes) -> tuple[list[str], Path]:
    path = tmp / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return bm25(beir(tmp), "--config", str(path)), path


@case("config-bad-toml")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "[compare]\nk = 10\n[backend\nkind = 'embedded'\n")
    return args, f"{path}: cannot parse TOML: Expected ']' at the end of a table declaration (at line 3, column 9)"


@case("config-bad-yaml")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.yaml", "compare:\n  k: [10\n  rrf_k: 60\n")
    return args, f"{path}:3: cannot parse YAML: expected ',' or ']', but got ':' (column 8)"


@case("config-yaml-not-a-mapping")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.yml", "- compare\n- k: 10\n")
    return args, f"{path}: expected sections of settings (a mapping) at the top level, got a list"


@case("config-bad-json")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.json", '{"compare": {"k": 10,}}\n')
    return args, f"{path}:1: cannot parse JSON: Expecting property name enclosed in double quotes (column 22)"


@case("config-non-utf8")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", b"[compare]\nbaseline = 'caf\xe9'\n")
    return args, f"{path}:2: not valid UTF-8: byte 0xe9 at byte offset 25"


@case("config-unknown-key")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "[compare]\nfusion_dept = 50\n")
    return args, f"{path}: field 'compare.fusion_dept': unknown setting (did you mean 'fusion_depth'?)"


@case("config-unknown-section")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "[comapre]\nk = 50\n")
    return args, f"{path}: field 'comapre': unknown setting (did you mean 'compare'?)"


@case("config-wrong-type")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "[compare]\nk = 'many'\n")
    return args, f"{path}: field 'compare.k': Input should be a valid integer, unable to parse string as an integer (got 'many')"


@case("config-section-not-a-table")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "compare = 5\n")
    return args, f"{path}: field 'compare': Input should be a valid dictionary or instance of CompareConfig (got 5)"


@case("config-unknown-metric")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "[compare]\nmetrics = ['ndcg@10', 'ndcg@ten']\n")
    return args, f"{path}: field 'compare.metrics': unknown metric 'ndcg@ten' (use ndcg@k, recall@k, mrr@k, map@k or precision@k)"


@case("config-file-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--config", str(tmp / "run.toml")), f"{tmp / 'run.toml'}: config file not found"


@case("cli-unknown-mode")
def _(tmp: Path, fixture: Any) -> Outcome:
    return ["compare", "--corpus", str(beir(tmp)), "--mode", "sparse"], "unknown retrieval mode 'sparse' (choose from bm25, dense"


@case("config-is-a-directory")
def _(tmp: Path, fixture: Any) -> Outcome:
    (tmp / "conf").mkdir()
    return bm25(beir(tmp), "--config", str(tmp / "conf")), f"{tmp / 'conf'}: is a directory, not a config file"


@case("config-unknown-format")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.cfg", "[compare]\nk = 10\n")
    return args, f"{path}: unknown config format '.cfg', use .toml/.yaml/.json"


@case("config-out-of-range")
def _(tmp: Path, fixture: Any) -> Outcome:
    args, path = with_config(tmp, "run.toml", "[corpus]\npassage_tokens = 64\npassage_stride = 64\n")
    return args, f"{path}: field 'corpus.passage_stride': must be smaller than passage_tokens (64), got 64"


@case("cli-k-zero")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--k", "0"), "error: --k: Input should be greater than 0 (got 0)"


@case("cli-k-not-a-number")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--k", "many"), "Invalid value for '--k':"


@case("cli-lexical-weight-above-one")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--lexical-weight", "1.5"), "--lexical-weight: Input should be less than or equal to 1"


@case("cli-contrast-one-run")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--contrast", "bm25"), "--contrast: Value should have at least 2 items after validation, not 1 (got 'bm25')"


@case("cli-contrast-unknown-run")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--contrast", "bm25,no-such-run"), "--contrast: no run named 'no-such-run' in this comparison"


@case("cli-baseline-unknown-run")
def _(tmp: Path, fixture: Any) -> Outcome:
    return bm25(beir(tmp), "--baseline", "no-such-run"), "--baseline: no run named 'no-such-run' in this comparison; its runs: bm25"


@case("cli-model-label-twice")
def _(tmp: Path, fixture: Any) -> Outcome:
    return [*dense(beir(tmp), "x"), "--model", "m=y"], "--model: label 'm' given twice ('x' and 'y')"


@case("cli-model-empty-label")
def _(tmp: Path, fixture: Any) -> Outcome:
    return ["compare", "--corpus", str(beir(tmp)), "--mode", "dense", "--model", "=some/model"], "--model: label '' cannot name a run"


@case("cli-device-unknown")
def _(tmp: Path, fixture: Any) -> Outcome:
    return [*dense(beir(tmp), "x"), "--device", "tpu"], "--device: unknown device 'tpu' (use auto, cpu, cuda, cuda:N or mps)"


@case("cli-device-cuda-without-gpu")
def _(tmp: Path, fixture: Any) -> Outcome:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    return [*dense(beir(tmp), "x"), "--device", "cuda"], "--device: device 'cuda' needs a CUDA GPU and none is visible here"


@case("run-dir-is-a-file")
def _(tmp: Path, fixture: Any) -> Outcome:
    (tmp / "run").write_text("a file\n")
    return bm25(beir(tmp)), f"--run-dir: {tmp / 'run'}: is a file, not a directory"


# --- models -------------------------------------------------------------------------------------------------


@case("model-path-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    return dense(beir(tmp), str(tmp / "no-model")), f"cannot load bi-encoder '{tmp / 'no-model'}': no such file or directory"


@case("model-folder-not-a-model")
def _(tmp: Path, fixture: Any) -> Outcome:
    (tmp / "empty").mkdir()
    return dense(beir(tmp), str(tmp / "empty")), f"cannot load bi-encoder '{tmp / 'empty'}' from {tmp / 'empty'}: "


@case("model-hub-id-unfetchable")
def _(tmp: Path, fixture: Any) -> Outcome:
    fixture("monkeypatch").setenv("HF_HUB_OFFLINE", "1")
    name = "some-org/not-a-real-model"
    return dense(beir(tmp), name), (f"cannot load bi-encoder '{name}': it is not a local path, not in the Hugging Face "
                                    "cache and could not be fetched (HF_HUB_OFFLINE is set). Download it where the hub is "
                                    f"reachable (`huggingface-cli download {name} --local-dir DIR`) and pass DIR instead.")


@case("model-relative-path-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    return dense(beir(tmp), "./models/no-model"), "cannot load bi-encoder './models/no-model': no such file or directory"


@case("model-safetensors-truncated")
def _(tmp: Path, fixture: Any) -> Outcome:
    model = shutil.copytree(fixture("tiny_bi_encoder"), tmp / "model")
    weights = next(model.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    return dense(beir(tmp), str(model)), f"{weights}: truncated: its tensors need"


@case("model-gguf-not-gguf")
def _(tmp: Path, fixture: Any) -> Outcome:
    (tmp / "model.gguf").write_text("<html>not found</html>\n")
    return dense(beir(tmp), str(tmp / "model.gguf")), f"{tmp / 'model.gguf'}: not a GGUF model file"


@case("onnx-bundle-missing")
def _(tmp: Path, fixture: Any) -> Outcome:
    return dense(beir(tmp), f"onnx:{tmp / 'bundle'}"), f"{tmp / 'bundle'}: ONNX bundle not found (no such directory)"


@case("onnx-manifest-malformed")
def _(tmp: Path, fixture: Any) -> Outcome:
    bundle = shutil.copytree(fixture("tiny_bundle"), tmp / "bundle")
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text()[:-40])
    return dense(beir(tmp), f"onnx:{bundle}"), f"{manifest}:"


@case("onnx-bad-checksum")
def _(tmp: Path, fixture: Any) -> Outcome:
    bundle = shutil.copytree(fixture("tiny_bundle"), tmp / "bundle")
    for model in [*bundle.glob("model.*.onnx"), *bundle.glob("openvino/model.*.xml")]:  # every variant: whichever is picked
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    return dense(beir(tmp), f"onnx:{bundle}"), f"{bundle}: checksum mismatch for model."


@case("vector-dimension-mismatch", integration=True)
def _(tmp: Path, fixture: Any) -> Outcome:
    name = fixture("badinput_index")
    folder = beir(tmp)
    config = tmp / "os.toml"
    config.write_text(f"[backend]\nengine = 'opensearch'\nurl = '{fixture('opensearch_cfg').url}'\nindex = '{name}'\nreplicas = 0\n")
    first = runner.invoke(app, ["index", "--config", str(config), "--corpus", str(folder), "--run-dir", str(tmp / "first"),
                                "--model", str(fixture("tiny_bi_encoder"))])
    assert first.exit_code == 0, first.output
    wide = fixture("tiny_bi_encoder_16d")

    def unchanged() -> None:
        from genq_search.engines import cluster_backend

        index = cluster_backend(fixture("opensearch_cfg"), name)
        assert (index.vector_dimension(), index.count()) == (32, len(DOCS))

    return (["index", "--config", str(config), "--corpus", str(folder), "--model", str(wide)],
            f"vector dimension mismatch: index '{name}' holds 32-d vectors, the model gives 16", unchanged)


# --- fixtures and the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bi_encoder_16d(tiny_bi_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bi-encoder with a 32 -> 16 projection: another vector dimension."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    model = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    model.append(st_models.Dense(32, 16))
    out = tmp_path_factory.mktemp("tiny-16d")
    model.save(str(out))
    return out


@pytest.fixture
def badinput_index(opensearch_cfg: Any) -> Iterator[str]:
    """A fresh index name (genq-badinput-*), deleted afterwards."""
    from conftest import client_of as connect

    name = f"genq-badinput-{uuid.uuid4().hex[:8]}"
    yield name
    connect(opensearch_cfg).indices.delete(index=name, ignore_unavailable=True)


def assert_one_line_error(result: Result, expected: str) -> None:
    """Exit code 1 from a handled error (a traceback exits 1 too), and one line ``error: ...`` holding ``expected``,
    last on stderr."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.output)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert expected in errors[0], errors[0]


def assert_nothing_written(run_dir: Path) -> None:
    """No artifact: no stage output, manifest or temporary file; only the embedding cache (complete vectors of a
    model, written atomically) may have been filled before the error."""
    written = [p for p in run_dir.rglob("*") if p.is_file() and p.parent != run_dir / "embeddings"] if run_dir.exists() else []
    assert written == []
    assert not any(run_dir.rglob("*.tmp"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.integration] if n in INTEGRATION else []) for n in CASES])
def test_bad_input(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_dir = tmp_path / "run"
    args, expected, *unchanged = CASES[name](tmp_path, request.getfixturevalue)
    result = runner.invoke(app, [*args, "--run-dir", str(run_dir)])
    if isinstance(expected, str):
        assert_one_line_error(result, expected)
        assert_nothing_written(run_dir)
        for check in unchanged:
            check()
    else:
        assert result.exit_code == 0, result.output
        expected(run_dir)
