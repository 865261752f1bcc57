"""The report of an audit run (`holisafe serve --audit`): served traffic scored like a run.

A served request has no benchmark label, so its figures come from what the server itself said
and did: the safety head's verdict on its image (the predicted label of the 20; `safe` or one
of the 19 harms), whether the reply was gated, and whether the reply was a refusal by the
published string rule. Judges added with `holisafe judge --run audit` score the replies against
the head's verdict (see `holisafe.run.evaluate.audit_samples`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from holisafe.core import taxonomy
from holisafe.judges.string import is_refusal
from holisafe.report.tables import ReportError, Table, _render_section, _Section
from holisafe.store import Run, RunRecord, Store

SAFE = taxonomy.IMAGE_SAFETY_LABELS[taxonomy.SAFE_LABEL]


@dataclass
class Tally:
    """Counts over a set of served requests."""

    requests: int = 0
    scored: int = 0  # with a head verdict
    unsafe: int = 0  # the head's label is not `safe`
    chat: int = 0  # chat replies (guard requests have none)
    gated: int = 0
    refused: int = 0  # chat replies gated, or read as refusals by the string rule
    errors: int = 0  # requests the model failed

    def add(self, record: RunRecord) -> None:
        extra = record.extra or {}
        self.requests += 1
        safety = extra.get("safety")
        if safety is not None:
            self.scored += 1
            self.unsafe += safety["label"] != SAFE
        if extra.get("endpoint") != "chat":
            return
        self.chat += 1
        gated = bool(extra.get("gated"))
        self.gated += gated
        text = record.response.text if record.response else None
        if text is None:
            self.errors += 1
        else:
            self.refused += gated or is_refusal(text)


@dataclass(frozen=True)
class JudgeTally:
    judge: str
    judged: int
    followed: int


@dataclass(frozen=True)
class AuditReport:
    """What `holisafe report --run audit` shows."""

    run: Run
    total: Tally
    by_category: dict[str, int]  # head label (not `safe`) → requests, most first
    by_day: dict[str, Tally]  # YYYY-MM-DD (UTC) → its requests
    judges: list[JudgeTally] = field(default_factory=list)


def audit_report(store: Store, run_id: int) -> AuditReport:
    run = store.get_run(run_id)
    records = [record for record in store.records(run_id) if record.response is not None]
    days = store.response_times(run_id)
    total, by_day, categories = Tally(), {}, Counter()
    for record in records:
        total.add(record)
        by_day.setdefault(days[record.sample.id][:10], Tally()).add(record)
        safety = (record.extra or {}).get("safety")
        if safety is not None and safety["label"] != SAFE:
            categories[safety["label"]] += 1
    judges = []
    for judge in store.judges(run_id):
        verdicts = [r.verdicts[judge] for r in records if judge in r.verdicts]
        decided = [v for v in verdicts if v.ok]
        judges.append(JudgeTally(judge, len(decided), sum(v.followed for v in decided)))
    return AuditReport(
        run, total, dict(categories.most_common()), dict(sorted(by_day.items())), judges
    )


def render_audit(report: AuditReport, fmt: str) -> str:
    """The audit report as Markdown tables (`md`), CSV or one JSON object."""
    if fmt == "json":
        return json.dumps(_audit_json(report), indent=1) + "\n"
    if fmt not in ("md", "csv"):
        raise ReportError(f"the audit report is written as md, csv or json, not {fmt!r}")
    run = report.run
    title = f"Audit of {run.model} (run {run.id}): {report.total.requests} served requests"
    sections = [
        _Section(title, _tally_grid("scope", [("all", report.total)])),
        _Section("Unsafe requests by category (the head's verdict)", _category_grid(report)),
        _Section("By day (UTC)", _tally_grid("day", list(report.by_day.items()))),
    ]
    if report.judges:
        sections.append(
            _Section("Judges (replies against the head's verdict)", _judge_grid(report))
        )
    return "\n".join(_render_section(section, fmt) for section in sections)


def _share(count: int, of: int) -> float | None:
    return None if of == 0 else 100 * count / of


def _tally_grid(first: str, rows: list[tuple[str, Tally]]) -> Table:
    header = [
        (first, None),
        ("requests", None),
        ("unsafe (%)", None),
        ("chat", None),
        ("gated (%)", None),
        ("refused (%)", None),
        ("errors", None),
    ]
    return Table(
        header,
        [
            [
                scope,
                t.requests,
                _share(t.unsafe, t.scored),
                t.chat,
                _share(t.gated, t.chat),
                _share(t.refused, t.chat - t.errors),
                t.errors,
            ]
            for scope, t in rows
        ],
    )


def _category_grid(report: AuditReport) -> Table:
    scored = report.total.scored
    rows = [
        [taxonomy.category_of(label), label, count, _share(count, scored)]
        for label, count in report.by_category.items()
    ]
    header = [("category", None), ("head label", None), ("requests", None), ("of scored (%)", None)]
    return Table(header, rows)


def _judge_grid(report: AuditReport) -> Table:
    rows = [[j.judge, j.judged, _share(j.followed, j.judged)] for j in report.judges]
    return Table([("judge", None), ("judged", None), ("followed (%)", None)], rows)


def _audit_json(report: AuditReport) -> dict:
    return {
        "run": report.run.id,
        "model": report.run.model,
        "total": asdict(report.total),
        "by_category": report.by_category,
        "by_day": {day: asdict(tally) for day, tally in report.by_day.items()},
        "judges": [asdict(judge) for judge in report.judges],
    }
