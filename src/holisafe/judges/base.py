"""What every judge offers: decide, per (sample, response text), whether the model behaved."""

from __future__ import annotations

import string
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


def template_fields(template: str, where: str) -> set[str]:
    """The placeholders of the str.format template `template`.

    A placeholder takes no conversion or format spec: a width such as `{response:>300000000}`
    would blow every prompt up to that size. Raises JudgeError naming `where`.
    """
    try:
        parsed = [
            (field, conversion, spec)
            for _, field, spec, conversion in string.Formatter().parse(template)
            if field is not None
        ]
    except ValueError as exc:
        raise JudgeError(
            f"{where} is not a valid str.format template ({exc}); write {{{{ and }}}} for "
            "literal braces"
        ) from None
    for field, conversion, spec in parsed:
        # a field that is no name (`{"a": 1}`, meant as literal braces) is left to the caller
        # to refuse as an unknown placeholder
        if field.isidentifier() and (conversion or spec):
            written = f"{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}"
            raise JudgeError(
                f"{where}: the placeholder {{{written[:60]}}} has a conversion or format spec; "
                "a judge template's placeholders take none"
            )
    return {field for field, _, _ in parsed}
