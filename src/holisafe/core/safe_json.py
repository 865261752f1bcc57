"""JSON from outside (a batch's results, a provider's reply): parsed within a size and a depth
limit, so that a hostile document fails as one ValueError, never as a RecursionError or an
allocation without bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 64  # replies and result lines nest about 10 deep
MAX_CHARS = 64 * 2**20


class JSONLimitError(ValueError):
    """JSON over the size or depth limit."""


def parse_json(
    text: str | bytes,
    *,
    max_chars: int | None = MAX_CHARS,
    max_depth: int = MAX_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], dict] | None = None,
) -> Any:
    """`text` parsed as JSON; ValueError when it is not JSON, is longer than `max_chars` (None:
    a file the user chose, already read, has no limit) or nests deeper than `max_depth`.
    `object_pairs_hook` is json.loads's, returning a dict (so that the depth is measured)."""
    if max_chars is not None and len(text) > max_chars:
        raise JSONLimitError(f"JSON of {len(text):,} characters, over the limit of {max_chars:,}")
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:  # the parser's own stack ran out, far deeper than max_depth
        raise JSONLimitError(f"JSON nested deeper than {max_depth} levels") from None
    if _deeper_than(value, max_depth):
        raise JSONLimitError(f"JSON nested deeper than {max_depth} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests more than `limit` arrays and objects deep (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
