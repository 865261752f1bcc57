"""What every stage of a build shares: the types an image allows, rejection reasons, errors."""

from __future__ import annotations

from holisafe.core.errors import HolisafeError

IMAGE_TYPES = {False: ("UUU", "USU"), True: ("SSS", "SUU", "SSU")}  # by image_safe
LABEL_ROUTES = ("llm", "head")
REASONS = (  # rejection reasons, in the order the stages apply them
    "unlabelled",
    "malformed_output",
    "malformed_item",
    "string_match",
    "near_duplicate",
    "type_check",
    "response_check",
)
MANIFEST_FIELDS = ("image", "image_safe", "category", "subcategory")
TRAIN_FILE, TEST_FILE = "holisafe_train.json", "holisafe_bench.json"


class BuildError(HolisafeError):
    """A build that cannot start as asked: bad manifest, prompt or settings."""


class Malformed(ValueError):
    """A model reply that does not hold what was asked for."""
