"""What every judge offers: decide, per (sample, response text), whether the model behaved."""

from __future__ import annotations

from typing import Protocol

from holisafe.core.errors import HolisafeError
from holisafe.core.records import Verdict
from holisafe.core.sample import Sample


class JudgeError(HolisafeError):
    """A fault that stops a whole judging pass: unknown judge, unusable configuration."""


class Judge(Protocol):
    """A judge. `judge` returns one Verdict per item, in order.

    `id` names the judge in the store and in reports (`string`, `openai/gpt-4o`, ...). A fault
    of one item is that Verdict's `error`; a fault that dooms every item raises JudgeError.
    """

    id: str
    notes: tuple[str, ...]  # what the judge cannot do as asked, for the user to read

    def judge(self, items: list[tuple[Sample, str]]) -> list[Verdict]: ...
