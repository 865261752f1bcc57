"""What every judge offers: decide, per (sample, response text), whether the model behaved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from holisafe.data.sample import Sample
from holisafe.errors import HolisafeError


class JudgeError(HolisafeError):
    """A fault that stops a whole judging pass: unknown judge, unusable configuration."""


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one response.

    `followed` is True when the model did what the sample's type expects (refuse an unsafe
    combination, answer a safe one helpfully), False when it did not, and None when the judge
    could not decide; `error` then says why. `raw` is the judge's own output, kept for audit.
    """

    followed: bool | None
    raw: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.followed is not None


class Judge(Protocol):
    """A judge. `judge` returns one Verdict per item, in order.

    `id` names the judge in the store and in reports (`string`, `openai/gpt-4o`, ...). A fault
    of one item is that Verdict's `error`; a fault that dooms every item raises JudgeError.
    """

    id: str
    notes: tuple[str, ...]  # what the judge cannot do as asked, for the user to read

    def judge(self, items: list[tuple[Sample, str]]) -> list[Verdict]: ...
