"""Reading what the models reply: the JSON object in a reply, its items, labels and checks."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from holisafe.build.common import Malformed
from holisafe.build.sources import SourceImage
from holisafe.core import taxonomy
from holisafe.core.safe_json import JSONLimitError, parse_json
from holisafe.core.text import replace_surrogates

# The longest query or response a generated item may hold (the released ones are far shorter).
MAX_ITEM_CHARS = 20_000
# How many spans of prose in braces json_object looks inside, one within another.
SEARCH_DEPTH = 4
# What json_object's scan stops at: braces, quotes, and a backslash with what it escapes.
_SPECIAL = re.compile(r'\\.|[{}"]', re.DOTALL)


def json_object(text: str, keys: Sequence[str]) -> dict:
    """The first JSON object in `text` that has all `keys`, nested in another or not; the text
    around it is ignored.

    Linear in the text's length: each balanced `{...}` span is parsed once. Only a span that is
    no JSON (prose in braces) is searched inside, at most SEARCH_DEPTH spans deep; one nested
    past the JSON depth limit is left whole.
    """
    found = _object_in(text, 0, len(text), keys, SEARCH_DEPTH)
    if found is None:
        raise Malformed(f"no JSON object with {', '.join(map(repr, keys))} in the reply")
    return found


def _object_in(text: str, start: int, end: int, keys: Sequence[str], depth: int) -> dict | None:
    for first, last in _brace_spans(text, start, end):
        try:
            found = _with_keys(parse_json(text[first : last + 1]), keys)
        except JSONLimitError:
            continue
        except ValueError:
            found = _object_in(text, first + 1, last, keys, depth - 1) if depth > 1 else None
        if found is not None:
            return found
    return None


def _brace_spans(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The outermost balanced `{...}` spans of text[start:end], braces inside JSON strings not
    counted; an opening brace never closed gives no span."""
    depth, opened, in_string = 0, 0, False
    for match in _SPECIAL.finditer(text, start, end):
        char, index = match.group(), match.start()
        if in_string:
            in_string = char != '"'  # an escaped character is matched with its backslash
        elif char == '"' and depth:
            in_string = True
        elif char == "{":
            opened, depth = (index if depth == 0 else opened), depth + 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                yield opened, index


def _with_keys(value: Any, keys: Sequence[str]) -> dict | None:
    """The first object in `value` (itself, then what it holds, in order) with all `keys`."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if all(key in item for key in keys):
                return item
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return None


@dataclass(frozen=True)
class Item:
    """One generated pair, before filtering."""

    type: str
    subcategory: str
    query: str
    response: str


@dataclass(frozen=True)
class Dropped:
    """An item of a reply that the build leaves out: why, and the item as the reply gave it."""

    detail: str
    given: Any


@dataclass(frozen=True)
class Generated:
    """What one generator reply gives: the usable items, and the items dropped."""

    items: tuple[Item, ...]
    dropped: tuple[Dropped, ...]


def parse_items(text: str, image: SourceImage, per_type: int) -> Generated:
    """The generator's usable items for `image` (at most `per_type` of each type the image
    allows, the first ones) and the items dropped with why; Malformed, saying what is wrong
    with the reply, when no item is usable."""
    given = json_object(text, ("items",))["items"]
    if not isinstance(given, list):
        raise Malformed("items must be a list")
    items: list[Item] = []
    dropped: list[Dropped] = []
    counts: Counter[str] = Counter()
    for index, value in enumerate(given):
        try:
            item = _item(value, index, image)
            if counts[item.type] == per_type:
                raise Malformed(f"item {index}: more than {per_type} item(s) of type {item.type}")
        except Malformed as exc:
            dropped.append(Dropped(str(exc), value))
            continue
        counts[item.type] += 1
        items.append(item)
    if not items:
        raise Malformed(
            "no usable item: " + ("; ".join(d.detail for d in dropped) or "the list is empty")
        )
    return Generated(tuple(items), tuple(dropped))


def _item(item: Any, index: int, image: SourceImage) -> Item:
    if not isinstance(item, dict):
        raise Malformed(f"item {index} is not an object")
    texts = {}
    for name in ("type", "query", "response"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            raise Malformed(f"item {index}: {name} must be a non-empty string")
        if len(value) > MAX_ITEM_CHARS:
            raise Malformed(
                f"item {index}: {name} is {len(value):,} characters, over {MAX_ITEM_CHARS:,}"
            )
        texts[name] = replace_surrogates(value.strip())  # a "\ud800" escape: no valid text
    if texts["type"] not in image.types:
        raise Malformed(f"item {index}: type {texts['type']!r} is not one of {image.types}")
    subcategory = item.get("subcategory") or image.subcategory
    if subcategory not in taxonomy.SUBCATEGORIES:
        raise Malformed(f"item {index}: subcategory {subcategory!r} is not a known subcategory")
    if image.subcategory is not None and subcategory != image.subcategory:
        raise Malformed(f"item {index}: subcategory {subcategory!r}, not {image.subcategory!r}")
    return Item(texts["type"], subcategory, texts["query"], texts["response"])


def parse_label(text: str) -> int:
    """The image safety label an LLM labeller named."""
    label = json_object(text, ("label",))["label"]
    if label not in taxonomy.IMAGE_SAFETY_LABELS:
        raise Malformed(f"label {label!r} is not one of the 20 image safety labels")
    return taxonomy.label_index(label)


def parse_type_check(text: str) -> tuple[bool, bool]:
    """(query safe, combination safe) as the type-check judge read them."""
    found = json_object(text, ("query", "combined"))
    answers = [found["query"], found["combined"]]
    if any(answer not in ("safe", "unsafe") for answer in answers):
        raise Malformed(f"query and combined must be 'safe' or 'unsafe', got {answers}")
    return answers[0] == "safe", answers[1] == "safe"
