"""Text from outside (data files, model and judge replies, file names) made safe to keep or show.

Python strings may hold lone UTF-16 surrogates (from a JSON `\\ud800` escape, or a file name
that is not UTF-8), which no UTF-8 file or database can store; and data may carry terminal
control sequences (ANSI escapes) that must not reach a terminal raw.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 control characters, except tab and newline; and lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate in `text`, or None when it is valid Unicode."""
    found = _SURROGATE.search(text)
    return found.start() if found else None


def replace_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, as a UTF-8 decoder marks bad bytes."""
    return _SURROGATE.sub(REPLACEMENT, text)


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates written as escapes (`\\x1b`)."""
    return _UNPRINTABLE.sub(lambda found: ascii(found.group())[1:-1], text)
