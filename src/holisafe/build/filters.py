"""The filters a generated pair must pass, cheapest first, and the train/test split."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from holisafe.build.replies import Item
from holisafe.build.sources import SourceImage
from holisafe.core import taxonomy
from holisafe.judges.string import refusal_match


@dataclass(frozen=True)
class Pair:
    """A generated pair on its image."""

    image: SourceImage
    item: Item

    @property
    def key(self) -> str:
        """The image's name and the type (readable in messages), and a hash of the rest."""
        fields = [self.image.key, *asdict(self.item).values()]
        digest = hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()[:16]
        return f"{self.image.name}|{self.item.type}|{digest}"


@dataclass(frozen=True)
class Rejection:
    """Something the build left out, and why (`reason` is one of REASONS)."""

    reason: str
    image: str
    detail: str
    item: Item | None = None
    replies: tuple[str, ...] = ()  # the malformed replies, for `malformed_output`
    given: str | None = None  # the dropped item as the reply gave it (JSON), for `malformed_item`

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "image": self.image,
            "detail": self.detail,
            **(asdict(self.item) if self.item else {}),
            **({"replies": list(self.replies)} if self.replies else {}),
            **({"given": self.given} if self.given is not None else {}),
        }


def string_mismatch(item: Item) -> str | None:
    """Why the response's refusal disagrees with its type (the published matcher), or None."""
    match = refusal_match(item.response)
    if taxonomy.TYPES[item.type].combined_safe:
        return None if match is None else f"an {item.type} response must answer, but it {match}"
    return None if match is not None else f"an {item.type} response must refuse; none found"


def query_tokens(query: str) -> frozenset[str]:
    """The normalised text of a query: its lower-cased words as a set."""
    return frozenset(re.findall(r"\w+", query.casefold()))


def query_similarity(a: str, b: str) -> float:
    """Token-set Jaccard similarity of two queries (1.0: the same words)."""
    ta, tb = query_tokens(a), query_tokens(b)
    return len(ta & tb) / len(ta | tb) if ta | tb else 1.0


def remove_near_duplicates(
    pairs: Sequence[Pair], threshold: float
) -> tuple[list[Pair], list[Rejection]]:
    """Keep, per image and in order, the pairs whose query is less than `threshold` similar to
    every query kept before it; the others are rejected, naming the query they repeat."""
    kept: list[Pair] = []
    rejected = []
    by_image: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        earlier = by_image[pair.image.name]
        scored = [(query_similarity(pair.item.query, p.item.query), p) for p in earlier]
        close = [(score, p) for score, p in scored if score >= threshold]
        if close:
            score, twin = max(close, key=lambda sp: sp[0])
            detail = f"{score:.2f} similar to {twin.item.query!r}"
            rejected.append(Rejection("near_duplicate", pair.image.name, detail, pair.item))
        else:
            earlier.append(pair)
            kept.append(pair)
    return kept, rejected


def split_by_image(
    pairs: Sequence[Pair], test_ratio: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """Train and test pairs; all of an image's pairs go to one side.

    Images are grouped into strata by (their pairs' most common category, the set of their
    types). The test split gets ⌊N × test_ratio + ½⌋ of the N images, shared out over the
    strata in proportion to their sizes (largest remainder first, ties in an order drawn from
    `seed`); within a stratum, images are drawn in name order shuffled by `seed`.
    """
    by_image: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_image[pair.image.name].append(pair)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for name, its_pairs in sorted(by_image.items()):
        category = Counter(taxonomy.category_of(p.item.subcategory) for p in its_pairs)
        types = tuple(sorted({p.item.type for p in its_pairs}))
        strata[(category.most_common(1)[0][0], types)].append(name)
    rng = random.Random(seed)
    order = sorted(strata)
    rng.shuffle(order)
    shares = {key: len(strata[key]) * test_ratio for key in order}
    quota = {key: math.floor(share) for key, share in shares.items()}
    left = math.floor(len(by_image) * test_ratio + 0.5) - sum(quota.values())
    for key in sorted(order, key=lambda k: quota[k] - shares[k])[:left]:  # stable: ties by rng
        quota[key] += 1
    test_images: set[str] = set()
    for key in order:
        names = strata[key]
        rng.shuffle(names)
        test_images.update(names[: quota[key]])
    train = [p for p in pairs if p.image.name not in test_images]
    test = [p for p in pairs if p.image.name in test_images]
    return train, test
