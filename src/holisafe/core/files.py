"""Reading a file a user names. Only a regular file is read: a named pipe, a device or a folder
standing where a file is expected is refused at once, instead of blocking the command.

The file is opened without blocking and checked through its open descriptor, so nothing can
swap another kind of file in between the check and the read.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

_KINDS = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a named pipe",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


class NotARegularFile(OSError):
    """A path that names something else than a regular file. An OSError, so that callers
    report it as they report any file they cannot read."""


def read_regular_bytes(path: str | Path) -> bytes:
    """The bytes of the regular file `path`; raises OSError (NotARegularFile for a pipe,
    device or folder) without waiting on anything."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{_kind(mode)}, not a regular file")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(descriptor)


def read_regular_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of the regular file `path`, as `Path.read_text` reads it (universal newlines);
    raises OSError as `read_regular_bytes` does, UnicodeDecodeError for undecodable text."""
    text = read_regular_bytes(path).decode(encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def regular_csv_text(path: str | Path, encoding: str) -> io.StringIO:
    """The regular file `path` as text for the csv module (its newlines kept as they are)."""
    return io.StringIO(read_regular_bytes(path).decode(encoding), newline="")


def require_regular_file(path: str | Path) -> Path:
    """`path`, when it names a regular file (after links), for readers that open it
    themselves; raises OSError as `read_regular_bytes` does."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{_kind(mode)}, not a regular file")
    return Path(path)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS.items() if test(mode)), "no regular file")
