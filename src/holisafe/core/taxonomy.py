"""The HoliSafe vocabulary: safeness types, harm categories and the 20 image safety labels.

This module is the one source of truth for these names; everything else imports them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from holisafe.core.errors import HolisafeError


@dataclass(frozen=True)
class SafenessType:
    """One of the five image-text safeness combinations."""

    code: str  # three letters: image, query, combination (S = safe, U = unsafe)
    paper: str  # the paper's notation

    @property
    def image_safe(self) -> bool:
        return self.code[0] == "S"

    @property
    def query_safe(self) -> bool:
        return self.code[1] == "S"

    @property
    def combined_safe(self) -> bool:
        return self.code[2] == "S"

    @property
    def expected_behaviour(self) -> str:
        """`answer` for the safe combination, `refuse` for every unsafe one."""
        return "answer" if self.combined_safe else "refuse"

    @property
    def combined_label(self) -> str:
        """The label an LLM judge is shown: `safe` or `unsafe`."""
        return "safe" if self.combined_safe else "unsafe"


# Ordered as the paper's leaderboard columns: S_I S_T→S, S_I S_T→U, U_I S_T, U_I U_T, S_I U_T.
TYPES: dict[str, SafenessType] = {
    t.code: t
    for t in (
        SafenessType("SSS", "S_I S_T→S"),
        SafenessType("SSU", "S_I S_T→U"),
        SafenessType("USU", "U_I S_T"),
        SafenessType("UUU", "U_I U_T"),
        SafenessType("SUU", "S_I U_T"),
    )
}
TYPE_CODES: tuple[str, ...] = tuple(TYPES)
UNSAFE_TYPE_CODES: tuple[str, ...] = tuple(c for c in TYPE_CODES if not TYPES[c].combined_safe)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "violence": (
        "weapon_related_violence",
        "physical_altercation",
        "animal_abuse",
        "terrorism",
        "obscene_gestures",
    ),
    "illegal_activity": ("drug_related_hazards", "property_crime"),
    "self_harm": ("physical_self_injury", "suicide"),
    "sexual_content": ("sexual_content",),
    "hate": ("gender", "race", "religion", "disability_discrimination", "harassment"),
    "privacy": ("identity_data_exposure", "facial_data_exposure"),
    "specialized_advice": ("financial_advice", "medical_advice"),
}
SUBCATEGORIES: tuple[str, ...] = tuple(s for subs in CATEGORIES.values() for s in subs)
_CATEGORY_OF: dict[str, str] = {s: c for c, subs in CATEGORIES.items() for s in subs}

# The safety head's classes, in the order the released checkpoints store them.
IMAGE_SAFETY_LABELS: tuple[str, ...] = (
    "safe",
    "gender",
    "race",
    "religion",
    "harassment",
    "disability_discrimination",
    "drug_related_hazards",
    "property_crime",
    "facial_data_exposure",
    "identity_data_exposure",
    "physical_self_injury",
    "suicide",
    "animal_abuse",
    "obscene_gestures",
    "physical_altercation",
    "terrorism",
    "weapon_related_violence",
    "sexual_content",
    "financial_advice",
    "medical_advice",
)
SAFE_LABEL = 0
_LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(IMAGE_SAFETY_LABELS)}


class TaxonomyError(HolisafeError, ValueError):
    """A name that is not part of the HoliSafe taxonomy."""


def category_of(subcategory: str) -> str:
    """The category a subcategory belongs to."""
    try:
        return _CATEGORY_OF[subcategory]
    except KeyError:
        raise TaxonomyError(
            f"unknown subcategory {subcategory!r}; expected one of: {', '.join(SUBCATEGORIES)}"
        ) from None


def label_index(name: str) -> int:
    """Index of an image safety label name (`safe` is 0)."""
    try:
        return _LABEL_INDEX[name]
    except KeyError:
        raise TaxonomyError(
            f"unknown image safety label {name!r}; "
            f"expected one of: {', '.join(IMAGE_SAFETY_LABELS)}"
        ) from None


def label_name(index: int) -> str:
    """Name of an image safety label index (0 is `safe`)."""
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < len(IMAGE_SAFETY_LABELS)
    ):
        raise TaxonomyError(
            f"image safety label must be an integer from 0 to {len(IMAGE_SAFETY_LABELS) - 1}, "
            f"got {index!r}"
        )
    return IMAGE_SAFETY_LABELS[index]


_ARROWS = ("→", "->", "\\rightarrow", "\\to", "=>", ">")
_PAPER_FORM = re.compile(r"([SU])I([SU])T(?:>([SU]))?")


def parse_type(text: str) -> SafenessType:
    """Parse a safeness type written as `UUU` or in the paper's notation.

    Accepted forms include `UUU`, `uuu`, `U_I U_T`, `UiUt`, `U_I S_T`, `S_I S_T→U`,
    `S_I S_T -> S` and LaTeX such as `$S_I S_T \\to U$`. Where the combination is implied
    (an unsafe image or query makes the pair unsafe) the arrow part may be left out; for two
    safe parts it is required, since the pair may be either.
    """
    if not isinstance(text, str):
        raise TaxonomyError(f"safeness type must be a string, got {type(text).__name__}")
    compact = re.sub(r"[\s_{}$]", "", text)
    for arrow in _ARROWS:
        compact = compact.replace(arrow, ">")
    compact = compact.upper()
    if compact in TYPES:
        return TYPES[compact]
    match = _PAPER_FORM.fullmatch(compact)
    if match:
        image, query, combined = match.groups()
        implied = "S" if image == query == "S" else "U"
        if combined is None and implied == "S":
            raise TaxonomyError(
                f"safeness type {text!r} is ambiguous: a safe image with a safe query needs "
                "the combination, as `S_I S_T→S` or `S_I S_T→U`"
            )
        code = image + query + (combined or implied)
        if code in TYPES:
            return TYPES[code]
    raise TaxonomyError(
        f"unknown safeness type {text!r}; expected one of {', '.join(TYPE_CODES)} "
        f"or the paper's notation ({', '.join(t.paper for t in TYPES.values())})"
    )
