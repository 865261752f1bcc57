"""Reading what the models reply: the JSON object in a reply, its items, labels and checks."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from holisafe.build.common import Malformed
from holisafe.build.sources import SourceImage
from holisafe.core import taxonomy


def json_object(text: str, keys: Sequence[str]) -> dict:
    """The first JSON object in `text` that has all `keys`; the text around it is ignored."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and all(key in value for key in keys):
            return value
    raise Malformed(f"no JSON object with {', '.join(map(repr, keys))} in the reply")


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
        texts[name] = value.strip()
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
