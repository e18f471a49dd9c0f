"""The one error type users see: the CLI prints its message on one line and exits 1."""

import re


class GenqError(Exception):
    """A problem the user can fix (bad input, missing model, unreachable cluster, ...); line breaks in the message
    (e.g. from a library's exception or an id read from the input) become spaces, so it always prints as one line."""

    def __init__(self, message: str):
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


class InputError(GenqError):
    """Malformed or inconsistent input data; the message names the file, line and field."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
