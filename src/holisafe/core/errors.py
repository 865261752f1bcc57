"""The one exception family: the CLI turns any of these into a single clear line."""


class HolisafeError(Exception):
    """Base class of every error holisafe raises on purpose."""


class DataError(HolisafeError):
    """A data source that cannot be read as a whole (missing file, malformed JSON, ...)."""


class RecordError(DataError):
    """One bad record; `where` names it (its id, or its index when it has no usable id)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def why(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {_first_line(exc)}"
