"""Generated bad-value cases: they come from the code, so they cannot fall behind it.

* Every setting of every ``RunConfig`` section (but ``[backend]``, the connection's), read from a config file.
* Every option of every command of the CLI (``typer.main.get_command``), mapped to the setting it feeds (``FLAGS``,
  else ``--`` + the field name) or to the command's own options model (export / serve / register).

Each value is tried only when the model itself rejects it (``0``, ``-1``, a huge number, a wrong type, NaN, a blank
string, an unknown name): the model is the oracle, the test checks the wiring. Every path flag gets a file where a
directory is expected (and the reverse), a missing parent and an unwritable location. Every case must end in exit 1,
exactly one line on stderr naming the flag (or the file and dotted setting; the path for a path), no traceback, and
an unchanged directory tree; nothing may reach a stage (each stage's entry point is replaced by one that fails the
test). ``CASES`` is counted by ``bench/reliability.py --validation-only``.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from annotated_types import Ge, Gt
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from genq_search import cli
from genq_search.config import (
    ExportOptions,
    RegisterOptions,
    RunConfig,
    ServeOptions,
    flag_name,
)

# the connection's environment variables would fill --url / --username / --password over the config file's values
# (CLI > file): cleared, so a bad backend.url in the file is what the command sees
CONNECTION_ENV = {f"{prefix}_{key}": None for prefix in ("GENQ_SEARCH", "OPENSEARCH") for key in ("URL", "USERNAME", "PASSWORD")}
runner = CliRunner(env=CONNECTION_ENV)
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
SKIPPED_SECTIONS: set[str] = set()  # every section, the connection ([backend]) included
OPTION_MODELS: dict[str, type[BaseModel]] = {"export": ExportOptions, "serve": ServeOptions, "register": RegisterOptions}
CANDIDATES: list[Any] = [0, -1, 10**12, 1.5, "abc", "nan", " ", "no-such-value", "a b/c"]
SECTIONS = {name: f.annotation for name, f in RunConfig.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) and name not in SKIPPED_SECTIONS}
TOP_LEVEL = [name for name, f in RunConfig.model_fields.items() if name not in SECTIONS and name not in SKIPPED_SECTIONS]
COMMANDS: dict[str, Any] = typer.main.get_command(cli.app).commands  # type: ignore[attr-defined]


def rejects(model: type[BaseModel], field: str, value: Any, base: dict[str, Any] | None = None) -> bool:
    try:
        model.model_validate({**(base or {}), field: value})
    except ValidationError:
        return True
    return False


def validator_names(annotation: Any) -> set[str]:
    """The names of the functions validating a field (through Annotated, Optional and list)."""
    names: set[str] = set()
    for meta in getattr(annotation, "__metadata__", ()):
        names.add(getattr(getattr(meta, "func", None), "__name__", ""))
    for arg in typing.get_args(annotation):
        names |= validator_names(arg)
    return names


def path_role(model: type[BaseModel], field: str) -> str | None:
    names = validator_names(model.model_fields[field].rebuild_annotation())
    return next((role for role in ("_check_output_dir", "_check_input_dir", "_check_input_path") if role in names), None)


# --- what the cases need on disk ------------------------------------------------------------------------------


def workspace(tmp: Path) -> dict[str, Path]:
    beir = tmp / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "Cats", "text": "cats purr"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "cats"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (tmp / "bundle").mkdir()
    (tmp / "a-file").write_text("not a directory\n")
    (tmp / "a-dir").mkdir()
    (tmp / "run.cfg").write_text("[compare]\nk = 10\n")
    return {"tmp": tmp, "beir": beir, "run": tmp / "run", "out": tmp / "out", "bundle": tmp / "bundle"}


def base_args(command: str, paths: dict[str, Path]) -> dict[str, str]:
    """Flags that make each command valid (it then reaches its stage), to which one bad value is added."""
    if command in {"serve", "register"}:
        return {"--bundle": str(paths["bundle"])}
    if command == "export":
        return {"--model": "m", "--out": str(paths["out"])}
    args = {"--run-dir": str(paths["run"])}
    if command == "reindex":
        return {**args, "--model": "m"}
    return {**args, "--corpus": str(paths["beir"])}


PATH_VALUES: dict[str, list[tuple[str, Callable[[dict[str, Path]], str]]]] = {
    "_check_output_dir": [("file-for-directory", lambda p: str(p["tmp"] / "a-file")),
                          ("under-a-file", lambda p: str(p["tmp"] / "a-file" / "run")),
                          ("empty", lambda p: ""),
                          ("unwritable", lambda p: str(p["tmp"] / "locked" / "run"))],
    "_check_input_dir": [("file-for-directory", lambda p: str(p["tmp"] / "a-file")),
                         ("missing-parent", lambda p: str(p["tmp"] / "nowhere" / "bundle")),
                         ("empty", lambda p: ""),
                         ("unreadable", lambda p: str(p["tmp"] / "locked"))],
    "_check_input_path": [("missing-parent", lambda p: str(p["tmp"] / "nowhere" / "corpus.jsonl")),
                          ("under-a-file", lambda p: str(p["tmp"] / "a-file" / "corpus.jsonl")),
                          ("unreadable", lambda p: str(p["tmp"] / "locked"))],
    "config": [("directory-for-file", lambda p: str(p["tmp"] / "a-dir")),
               ("missing-parent", lambda p: str(p["tmp"] / "nowhere" / "run.toml")),
               ("unknown-format", lambda p: str(p["tmp"] / "run.cfg")),
               ("unreadable", lambda p: str(p["tmp"] / "locked" / "run.toml"))],
}


@dataclass(frozen=True)
class Case:
    """One bad value: the command line (``{name}`` placeholders filled from the workspace) and what the error line
    must name."""

    argv: Callable[[dict[str, Path]], list[str]]
    names: Callable[[dict[str, Path]], str]
    locked: bool = False  # needs a location the user cannot write or read (meaningless for root)


CASES: dict[str, Case] = {}


def fmt(value: Any) -> str:
    return str(value)


# --- settings read from a config file -------------------------------------------------------------------------


def config_case(key: str, section: str | None, field: str, value: Any) -> None:
    def argv(paths: dict[str, Path], value: Any = value) -> list[str]:
        settings: dict[str, Any] = {"run_dir": str(paths["run"])}
        if section is None:
            settings[field] = value(paths) if callable(value) else value
        else:
            settings[section] = {field: value}
        config = paths["tmp"] / "settings.yaml"
        config.write_text(yaml.safe_dump(settings))
        return ["compare", "--config", str(config)]

    dotted = field if section is None else f"{section}.{field}"
    CASES[key] = Case(argv, lambda paths: f"{paths['tmp'] / 'settings.yaml'}: field '{dotted}",
                      locked=key.endswith("unwritable"))


for section, model in SECTIONS.items():
    for field, info in model.model_fields.items():
        listed = "list[" in repr(info.rebuild_annotation())
        for value in [*CANDIDATES, *([[v] for v in CANDIDATES] if listed else [])]:
            if rejects(model, field, value):
                config_case(f"config:{section}.{field}={value!r}", section, field, value)
for field in TOP_LEVEL:
    role = path_role(RunConfig, field)
    if role:
        for label, make in PATH_VALUES[role]:
            config_case(f"config:{field}:{label}", None, field, make)
    else:
        for value in CANDIDATES:
            if rejects(RunConfig, field, value):
                config_case(f"config:{field}={value!r}", None, field, value)


# --- every option of every command -----------------------------------------------------------------------------


def convert(param: Any, text: str) -> Any:
    """The value the command receives for ``text``, as the parser converts it (raises on what it rejects itself)."""
    if hasattr(param, "get_runtime_param"):  # typer >= 0.2x converts with its own runtime parameters
        return param.get_runtime_param().coerce([text] if param.multiple else text, param=param, ctx=None)
    return param.type_cast_value(None, [text] if param.multiple else text)


def annotation(param: Any) -> Any:
    descriptor = getattr(param, "type_descriptor", None)
    return descriptor.annotation if descriptor is not None else getattr(param.type, "name", "")


def is_option(param: Any) -> bool:
    return type(param).__name__.endswith("Option") and not getattr(param, "is_flag", False) and annotation(param) is not bool


def targets(command: str, param: Any) -> list[tuple[type[BaseModel], str, dict[str, Any]]]:
    """The settings a flag feeds: (model, field, other required values)."""
    if command in OPTION_MODELS and param.name in OPTION_MODELS[command].model_fields:
        model = OPTION_MODELS[command]
        required = {"bundle": "/", "model": "m", "out": "/tmp/genq-out"}
        return [(model, param.name or "", {k: v for k, v in required.items() if k in model.model_fields and k != param.name})]
    flag = long_flag(param)
    found: list[tuple[type[BaseModel], str, dict[str, Any]]] = []
    for section, model in SECTIONS.items():
        found += [(model, f, {}) for f in model.model_fields if flag_name((section, f)) == flag]
    found += [(RunConfig, f, {}) for f in TOP_LEVEL if flag_name((f,)) == flag]
    return found


def long_flag(param: Any) -> str:
    return next((o for o in param.opts if o.startswith("--")), param.opts[0])


def backend_flag(param: Any) -> bool:
    from genq_search.config import BackendConfig

    return any(flag_name(("backend", f)) == long_flag(param) for f in BackendConfig.model_fields)


def cli_case(key: str, command: str, flag: str, value: Callable[[dict[str, Path]], str] | str, names: Callable[..., str],
             locked: bool = False) -> None:
    def argv(paths: dict[str, Path]) -> list[str]:
        args = base_args(command, paths)
        args[flag] = value(paths) if callable(value) else value
        positional = ["idx"] if command == "reindex" else []
        return [command, *positional, *(f"{k}={v}" for k, v in args.items())]

    CASES[key] = Case(argv, names, locked)


UNMAPPED: list[str] = []  # non-boolean options that feed no validated setting (the test below wants none)
for command, click_command in COMMANDS.items():
    for param in click_command.params:
        if not is_option(param) or getattr(param, "hidden", False):  # hidden: an earlier name, logged, then the new flag's checks
            continue
        flag = long_flag(param)
        if flag == "--config":
            for label, make in PATH_VALUES["config"]:
                cli_case(f"{command} {flag}:{label}", command, flag, make, lambda p, make=make, flag=flag: make(p) or flag,
                         locked=label == "unreadable")
            continue
        found = targets(command, param)
        if not found:
            if not backend_flag(param):
                UNMAPPED.append(f"{command} {flag}")
            continue
        role = path_role(*found[0][:2])
        if role:
            for label, make in PATH_VALUES[role]:
                cli_case(f"{command} {flag}:{label}", command, flag, make, lambda p, flag=flag: flag,
                         locked=label in {"unwritable", "unreadable"})
            continue
        for value in CANDIDATES:
            try:  # what the command receives: the value as the parser converts it (or the parser's own rejection)
                converted = convert(param, fmt(value))
            except typer.BadParameter.__mro__[1]:  # a UsageError
                converted = None
            if converted is None or all(rejects(model, field, converted, base) for model, field, base in found):
                cli_case(f"{command} {flag}={value!r}", command, flag, fmt(value), lambda p, flag=flag: flag)


# --- the tests ---------------------------------------------------------------------------------------------------


class Reached(Exception):
    """A stage started: validation let the bad value through."""


STAGES = {"genq_search.pipeline": ["run_compare", "run_adapt", "load_run_collection", "eval_collection", "generation_windows"],
          "genq_search.encoders": ["load_encoder"], "genq_search.upgrade": ["run_upgrade"], "genq_search.serve": ["serve"],
          "genq_search.mlcommons": ["register_bundle"], "genq_search.engines.opensearch.mlcommons": ["register_bundle"],
          "genq_search.export": ["export_bundle"]}


@pytest.fixture
def no_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    for module, names in STAGES.items():
        try:
            loaded = importlib.import_module(module)
        except ImportError:  # moved: the other name in STAGES is the one the CLI imports
            continue
        for name in names:
            def reached(*_: Any, _name: str = name, **__: Any) -> None:
                raise Reached(_name)

            monkeypatch.setattr(loaded, name, reached)


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    return workspace(tmp_path)


@pytest.mark.parametrize("key", list(CASES))
def test_bad_value(key: str, paths: dict[str, Path], no_stages: None) -> None:
    case = CASES[key]
    if case.locked:
        if ROOT_USER:
            pytest.skip("root reads and writes everywhere: a location locked by permissions does not stop it")
        (paths["tmp"] / "locked").mkdir(mode=0o000)
    argv = case.argv(paths)
    before = tree(paths["tmp"])
    result = runner.invoke(cli.app, argv)
    assert not isinstance(result.exception, Reached), f"{argv}: validation let it through to {result.exception}"
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (argv, result.exception, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, result.stderr)
    assert "Traceback" not in result.output
    assert case.names(paths) in lines[0], (argv, lines[0])
    assert tree(paths["tmp"]) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_base_arguments_reach_the_stage(command: str, paths: dict[str, Path], no_stages: None) -> None:
    """The flags every case starts from are valid: without the bad value the command reaches its stage."""
    positional = ["idx"] if command == "reindex" else []
    args = [f"{k}={v}" for k, v in base_args(command, paths).items()]
    result = runner.invoke(cli.app, [command, *positional, *args])
    assert isinstance(result.exception, Reached), (command, result.exception, result.output)


def test_every_flag_feeds_a_validated_setting() -> None:
    assert UNMAPPED == [], "options that bypass the config models (map them in config.FLAGS or an options model)"


def test_every_number_has_a_lower_bound() -> None:
    """So that 0 and -1 are generated for every numeric setting that forbids them (a new one must say what it allows)."""
    unbounded = []
    for owner, model in [*SECTIONS.items(), *((m.__name__, m) for m in OPTION_MODELS.values())]:
        for field, info in model.model_fields.items():
            numeric = _numeric(info.rebuild_annotation())
            bounded = any(isinstance(m, (Gt, Ge)) for m in _constraints(info.rebuild_annotation())) or any(
                isinstance(m, (Gt, Ge)) for m in info.metadata)
            if numeric and not bounded:
                unbounded.append(f"{owner}.{field}")
    assert unbounded == []


def _numeric(annotation: Any) -> bool:
    return annotation in (int, float) or any(_numeric(arg) for arg in typing.get_args(annotation))


def _constraints(annotation: Any) -> list[Any]:
    found = list(getattr(annotation, "__metadata__", ()))
    for meta in list(found):
        found += list(getattr(meta, "metadata", ()))
    for arg in typing.get_args(annotation):
        found += _constraints(arg)
    return found


def test_cases_cover_every_numeric_flag() -> None:
    numeric = {f"{c} {long_flag(p)}" for c, cmd in COMMANDS.items() for p in cmd.params
               if is_option(p) and not getattr(p, "hidden", False) and annotation(p) in (int, float, "integer", "float")}
    covered = {key.split("=")[0] for key in CASES}
    assert numeric - covered == set()
