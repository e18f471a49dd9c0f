"""Rebuild corpus.jsonl of the pydocs sample collection from CPython's standard-library docstrings.

The committed corpus was built with CPython 3.11.7; other versions give slightly different text, so the
hand-written queries and qrels are checked against the committed file, not against a rebuild.
Usage: python data/pydocs/build_corpus.py > data/pydocs/corpus.jsonl
"""

import importlib
import inspect
import json
import sys

MODULES = [
    "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "difflib", "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "heapq", "ipaddress",
    "itertools", "json", "logging", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "secrets",
    "shlex", "shutil", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "urllib.parse", "uuid", "zipfile", "concurrent.futures", "hashlib", "operator", "typing", "decimal",
    "html", "http.client", "socket", "sqlite3", "time", "traceback", "unittest", "weakref", "zlib",
]
MIN_CHARS = 80


def members(module):
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", module.__name__) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield name, obj
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and (inspect.isfunction(member) or inspect.ismethoddescriptor(member)):
                    yield f"{name}.{attr}", member
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield name, obj


def main() -> None:
    seen = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        module_doc = inspect.getdoc(module) or ""
        if len(module_doc) >= MIN_CHARS:
            rows = [(module_name, module_doc)]
        else:
            rows = []
        for name, obj in members(module):
            rows.append((f"{module_name}.{name}", inspect.getdoc(obj) or ""))
        for doc_id, doc in rows:
            if len(doc) < MIN_CHARS or doc_id in seen:
                continue
            seen.add(doc_id)
            json.dump({"_id": doc_id, "title": doc_id, "text": " ".join(doc.split())}, sys.stdout)
            sys.stdout.write("\n")


if __name__ == "__main__":
    main()
