"""Judges: decide whether each response followed the behaviour its sample's type expects."""

from __future__ import annotations

from pathlib import Path

from holisafe.core.records import Verdict
from holisafe.judges.base import Judge, JudgeError
from holisafe.judges.llm import (
    OFFICIAL,
    PROTOCOLS,
    TOOLKIT,
    JudgeProtocol,
    LLMJudge,
    load_template,
    parse_judge_output,
)
from holisafe.judges.official import (
    fetch_official_template,
    official_template,
    parse_official_output,
)
from holisafe.judges.string import StringJudge, is_refusal, refusal_match, refusal_phrases
from holisafe.models import ModelOptions, load_model

JUDGE_IDS = ("string", "<provider>/<model>")


def load_judge(
    judge_id: str,
    options: ModelOptions | None = None,
    template_path: str | Path | None = None,
    protocol: str = TOOLKIT.name,
) -> Judge:
    """The judge a user names on the command line: `string`, or a model spec such as
    `openai/gpt-4o`, which becomes an LLM judge reached with `options`.

    LLM judges follow `protocol`: `toolkit` (this project's rubric; `template_path` replaces
    it) or `official` (the authors' prompt, read from `template_path` or from the copy that
    `holisafe fetch-judge-template` cached). The string judge has neither.
    """
    if protocol not in PROTOCOLS:
        raise JudgeError(
            f"unknown judge protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}"
        )
    if judge_id == StringJudge.id:
        return StringJudge()
    if "/" not in judge_id:
        raise JudgeError(
            f"unknown judge {judge_id!r}; expected one of: {', '.join(JUDGE_IDS)} "
            "(e.g. openai/gpt-4o)"
        )
    if protocol == OFFICIAL.name:
        template = official_template(template_path)
    else:
        template = load_template(template_path) if template_path is not None else None
    model = load_model(judge_id, options or ModelOptions())
    return LLMJudge(model, template=template, protocol=PROTOCOLS[protocol])


__all__ = [
    "JUDGE_IDS",
    "OFFICIAL",
    "PROTOCOLS",
    "TOOLKIT",
    "Judge",
    "JudgeError",
    "JudgeProtocol",
    "LLMJudge",
    "StringJudge",
    "Verdict",
    "fetch_official_template",
    "is_refusal",
    "load_judge",
    "load_template",
    "official_template",
    "parse_judge_output",
    "parse_official_output",
    "refusal_match",
    "refusal_phrases",
]
