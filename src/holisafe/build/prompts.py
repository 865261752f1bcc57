"""The prompts a build asks its models with: shipped ones, or a user's file."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from holisafe.build.common import BuildError
from holisafe.core.files import read_regular_text

PROMPTS: dict[str, tuple[str, ...]] = {  # prompt name → its placeholders, all required
    "generate": ("image", "types", "per_type", "subcategories"),
    "check_type": ("query",),
    "label": ("labels",),
}


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    file: str  # the user's file, or `default`

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_prompt(name: str, path: str | Path | None = None) -> Prompt:
    """A build prompt: the user's file, else the one shipped in `resources/build_prompts/`.

    Placeholders use `str.format` syntax (`{{` and `}}` for literal braces); every one of the
    prompt's placeholders (`PROMPTS[name]`) is required and no other is allowed.
    """
    if path is None:
        text = resources.files("holisafe") / "resources" / "build_prompts" / f"{name}.txt"
        return Prompt(name, text.read_text(encoding="utf-8"), "default")
    try:
        text = read_regular_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read the {name} prompt {path}: {exc}") from None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise BuildError(f"the {name} prompt {path} is not a valid template: {exc}") from None
    expected = set(PROMPTS[name])
    if fields != expected:
        raise BuildError(
            f"the {name} prompt {path} has placeholders {sorted(fields)}; it needs exactly "
            f"{sorted(expected)} (write {{{{ and }}}} for literal braces)"
        )
    return Prompt(name, text, str(path))
