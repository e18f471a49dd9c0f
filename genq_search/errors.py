"""The one error type users see: the CLI prints its message on one line and exits 1."""


class GenqError(Exception):
    """A problem the user can fix (bad input, missing model, unreachable cluster, ...)."""


class InputError(GenqError):
    """Malformed or inconsistent input data; the message names the file, line and field."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
