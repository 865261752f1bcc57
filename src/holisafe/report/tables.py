"""Leaderboard tables in the paper's columns: markdown, CSV, LaTeX and JSON.

Figures are percentages with two decimals; a figure over no samples (or an mASR missing one of
the four unsafe types) is shown as `–` (empty in CSV, null in JSON). mASR comes in both readings
(`holisafe.scoring.metrics.MASR_READINGS`): the type mean and the pooled ASR over all unsafe
samples.
Sample counts ride along: `n` (judged samples) and `unjudged` (samples left out for want of a
usable verdict), and, when a table holds an imported run with predictions missing, `missing`
(how many).

Boards computed with a bootstrap show their confidence intervals: `54.17 [41.20, 66.03]` in
markdown and LaTeX, separate `lo` / `hi` columns in CSV and `_lo` / `_hi` fields in JSON.
Published reference rows (`holisafe.report.reference`) say `paper` in the Run column.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from holisafe.core import taxonomy
from holisafe.data.benchmarks import BENCHMARKS
from holisafe.report.entries import BoardEntry, ReportError
from holisafe.report.reference import Placement, PublishedRow
from holisafe.scoring.benchmark_metrics import Table4Row
from holisafe.scoring.gate_curve import GateCurve, GatePoint
from holisafe.scoring.metrics import MASR_READINGS, SAFE_TYPE, Interval, Leaderboard

if TYPE_CHECKING:
    from holisafe.scoring.agreement import Agreement, RankAgreement
    from holisafe.scoring.guard_metrics import GuardMetrics

FORMATS = ("md", "csv", "json", "latex")
TABLE4_TITLE = "Other safety benchmarks (Table 4)"
MISSING = "–"

# (paper notation, better when higher) for each figure column, in the paper's order.
_FIGURES: tuple[tuple[str, bool], ...] = (
    *((taxonomy.TYPES[code].paper, code == SAFE_TYPE) for code in taxonomy.TYPE_CODES),
    *((name, False) for name in MASR_READINGS.values()),
    ("RR", False),
)
_SAFE_RATE = ("Safe rate", True)
_COUNTS = (("n", None), ("unjudged", None))
_MISSING = ("missing", None)


@dataclass(frozen=True)
class Report:
    """Everything `render` can print: the store's leaderboards, the agreement of its judges, and
    published tables (alone, or with the user's runs placed among them, each with its notes)
    with the published judges' rank agreement."""

    entries: Sequence[BoardEntry] = ()
    agreement: Agreement | None = None
    placements: Sequence[Placement] = ()
    published_agreement: Sequence[RankAgreement] = ()
    warnings: Sequence[str] = ()  # about the placements; for the reader, not rendered
    guard: Mapping[int, GuardMetrics] = field(default_factory=dict)  # run id → Safe-VLM scores
    table4: Sequence[Table4Row] = ()  # the other safety benchmarks' figures


@dataclass(frozen=True)
class Estimate:
    """A figure with its confidence interval."""

    value: float | None
    interval: Interval | None


@dataclass(frozen=True)
class Table:
    """A table before formatting; the `*_grid` functions build one, each format renders it."""

    header: list[tuple[str, bool | None]]  # (name, better when higher; None: not a figure)
    rows: list[list[Any]]  # str, int, float (a percentage), Estimate or None (missing)

    def numeric_columns(self) -> list[bool]:
        """Which columns hold no text (to be right-aligned)."""
        return [
            all(not isinstance(row[i], str) for row in self.rows) for i in range(len(self.header))
        ]


def _figures(board: Leaderboard) -> list[float | Estimate | None]:
    """The values of the `_FIGURES` columns, with their intervals if the board has them."""
    by_type = [
        board.helpful_rate if code == SAFE_TYPE else board.asr[code].percent
        for code in taxonomy.TYPE_CODES
    ]
    values = [*by_type, board.masr_type_mean, board.masr_pooled, board.rr]
    if board.intervals is None:
        return values
    found = board.intervals
    intervals = [
        found.helpful_rate if code == SAFE_TYPE else found.asr[code] for code in taxonomy.TYPE_CODES
    ]
    intervals += [found.masr_type_mean, found.masr_pooled, found.rr]
    return [Estimate(v, i) for v, i in zip(values, intervals, strict=True)]


def _safe_rate(board: Leaderboard) -> float | Estimate | None:
    if board.intervals is None:
        return board.safe_rate
    return Estimate(board.safe_rate, board.intervals.safe_rate)


def _published_figures(row: PublishedRow) -> list[float]:
    by_type = [row.helpful_rate if c == SAFE_TYPE else row.asr[c] for c in taxonomy.TYPE_CODES]
    return [*by_type, row.masr_type_mean, row.masr_pooled, row.rr]


def _with_missing(boards: Sequence[Leaderboard]) -> bool:
    """Whether a table shows the `missing` count: when any of its boards has one."""
    return any(board.missing for board in boards)


def _counts_header(with_missing: bool) -> list[tuple[str, bool | None]]:
    return [*_COUNTS, *([_MISSING] if with_missing else [])]


def _counts(board: Leaderboard | None, with_missing: bool) -> list[int | None]:
    if board is None:  # a published row
        return [None] * len(_counts_header(with_missing))
    return [board.n, board.unjudged, *([board.missing] if with_missing else [])]


def _leaderboard_row(entry: BoardEntry | PublishedRow, with_missing: bool) -> list[Any]:
    if isinstance(entry, BoardEntry):
        board = entry.board
        who = [entry.run_id, entry.model, entry.judge]
        return [*who, *_figures(board), *_counts(board, with_missing)]
    published = ["paper", entry.model, entry.judge, *_published_figures(entry)]
    return [*published, *_counts(None, with_missing)]


def leaderboard_grid(entries: Sequence[BoardEntry | PublishedRow]) -> Table:
    """The leaderboard as a Table: see `leaderboard_table`."""
    with_missing = _with_missing([e.board for e in entries if isinstance(e, BoardEntry)])
    header = [("Run", None), ("Model", None), ("Judge", None), *_FIGURES]
    header += _counts_header(with_missing)
    return Table(header, [_leaderboard_row(e, with_missing) for e in entries])


def breakdown_grid(entry: BoardEntry, level: str) -> Table:
    """The category (or subcategory) table of one entry: see `breakdown_table`."""
    groups = entry.board.by_category if level == "category" else entry.board.by_subcategory
    with_missing = _with_missing([entry.board])
    header = [(level.capitalize(), None), *_FIGURES, _SAFE_RATE, *_counts_header(with_missing)]
    rows = [
        [name, *_figures(board), _safe_rate(board), *_counts(board, with_missing)]
        for name, board in groups.items()
    ]
    return Table(header, rows)


def _tidy_table(entries: Sequence[BoardEntry], levels: Sequence[str]) -> Table:
    with_missing = _with_missing([e.board for e in entries])
    header = [("Run", None), ("Model", None), ("Judge", None), ("Level", None), ("Group", None)]
    header += [*_FIGURES, _SAFE_RATE, *_counts_header(with_missing)]
    rows = []
    for e in entries:
        groups = [("all", "", e.board)]
        groups += [("category", name, b) for name, b in e.board.by_category.items()]
        if "subcategory" in levels:
            groups += [("subcategory", name, b) for name, b in e.board.by_subcategory.items()]
        rows += [
            [
                e.run_id,
                e.model,
                e.judge,
                level,
                name,
                *_figures(b),
                _safe_rate(b),
                *_counts(b, with_missing),
            ]
            for level, name, b in groups
        ]
    return Table(header, rows)


def leaderboard_table(entries: Sequence[BoardEntry | PublishedRow], fmt: str) -> str:
    """One row per (run, judge): the paper's seven columns with n and unjudged (and missing,
    when a run has missing predictions). Published rows may be mixed in: their Run is `paper`
    and their counts are empty."""
    return _render(leaderboard_grid(entries), fmt)


def breakdown_table(entry: BoardEntry, fmt: str, level: str = "category") -> str:
    """One row per category (or subcategory) of one (run, judge), plus its safe rate."""
    if level not in ("category", "subcategory"):
        raise ReportError(f"unknown breakdown level {level!r}; expected category or subcategory")
    return _render(breakdown_grid(entry, level), fmt)


def _render(table: Table, fmt: str) -> str:
    renderers = {"md": _markdown, "csv": _csv, "latex": _latex}
    if fmt not in renderers:
        raise ReportError(f"unknown table format {fmt!r}; expected one of: {', '.join(renderers)}")
    return renderers[fmt](table)


def _cell(value: Any, missing: str) -> str:
    if isinstance(value, Estimate):
        if value.value is None or value.interval is None:
            return _cell(value.value, missing)
        return f"{value.value:.2f} [{value.interval.low:.2f}, {value.interval.high:.2f}]"
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def column_title(name: str, higher_is_better: bool | None) -> str:
    if higher_is_better is None:
        return name
    return f"{name} {'↑' if higher_is_better else '↓'}"


def _markdown(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---:" if right else "---" for right in table.numeric_columns()]
    lines = [line([column_title(*column) for column in table.header]), "|" + "|".join(align) + "|"]
    lines += [line([_cell(value, MISSING) for value in row]) for row in table.rows]
    return "\n".join(lines) + "\n"


def _split_intervals(table: Table) -> Table:
    """Each column of estimates as three: the figure, its interval's `lo` and `hi`."""
    header: list[tuple[str, bool | None]] = []
    pieces: list[Any] = []  # per column: how to turn a cell into cells
    for i, (name, higher) in enumerate(table.header):
        if any(isinstance(row[i], Estimate) for row in table.rows):
            header += [(name, higher), (f"{name} lo", None), (f"{name} hi", None)]
            pieces.append(_estimate_cells)
        else:
            header.append((name, higher))
            pieces.append(lambda value: [value])
    rows = [
        [cell for piece, value in zip(pieces, row, strict=True) for cell in piece(value)]
        for row in table.rows
    ]
    return Table(header, rows)


def _estimate_cells(value: Any) -> list[float | None]:
    if not isinstance(value, Estimate):  # a published row beside bootstrapped ones
        return [value, None, None]
    if value.interval is None:
        return [value.value, None, None]
    return [value.value, value.interval.low, value.interval.high]


def _csv(table: Table) -> str:
    table = _split_intervals(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([column_title(*column) for column in table.header])
    writer.writerows([_cell(value, "") for value in row] for row in table.rows)
    return out.getvalue()


_LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(c, c) for c in text)


def _latex_name(name: str, higher_is_better: bool | None) -> str:
    if higher_is_better is None:
        return _latex_escape(name)
    arrow = r"$\uparrow$" if higher_is_better else r"$\downarrow$"
    if "_" in name:  # the paper's type notation, e.g. S_I S_T→S
        name = "$" + name.replace("→", r" \rightarrow ") + "$"
    return f"{name} {arrow}"


def _latex(table: Table) -> str:
    spec = "".join("r" if right else "l" for right in table.numeric_columns())
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_name(*column) for column in table.header) + r" \\",
        r"\midrule",
    ]
    lines += [
        " & ".join(_latex_escape(_cell(value, MISSING)) for value in row) + r" \\"
        for row in table.rows
    ]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _board_json(board: Leaderboard) -> dict[str, Any]:
    figures = {
        "n": board.n,
        "unjudged": board.unjudged,
        "missing": board.missing,
        "asr": {code: rate.percent for code, rate in board.asr.items()},
        "asr_n": {code: rate.n for code, rate in board.asr.items()},
        "helpful_rate": board.helpful_rate,
        "helpful_n": board.helpful.n,
        "masr_type_mean": board.masr_type_mean,
        "masr_pooled": board.masr_pooled,
        "rr": board.rr,
        "safe_rate": board.safe_rate,
    }
    found = board.intervals
    if found is None:
        return figures
    for end in ("lo", "hi"):
        figures[f"asr_{end}"] = {code: _end(i, end) for code, i in found.asr.items()}
        for name in ("helpful_rate", "masr_type_mean", "masr_pooled", "rr", "safe_rate"):
            figures[f"{name}_{end}"] = _end(getattr(found, name), end)
    return figures


def _end(interval: Interval | None, end: str) -> float | None:
    if interval is None:
        return None
    return interval.low if end == "lo" else interval.high


def _user_json(entry: BoardEntry) -> dict[str, Any]:
    who = {"run": entry.run_id, "model": entry.model, "judge": entry.judge, "published": False}
    return who | {"benchmark_samples": entry.samples} | _board_json(entry.board)


def _published_json(row: PublishedRow) -> dict[str, Any]:
    return {
        "run": "paper",
        "model": row.model,
        "judge": row.judge,
        "published": True,
        "asr": row.asr,
        "helpful_rate": row.helpful_rate,
        "masr_type_mean": row.masr_type_mean,
        "masr_pooled": row.masr_pooled,
        "masr_printed": row.masr_printed,
        "masr_printed_reading": row.printed_reading,
        "rr": row.rr,
    }


def leaderboard_json(
    entries: Sequence[BoardEntry], guard: Mapping[int, GuardMetrics] | None = None
) -> list[dict[str, Any]]:
    """One object per (run, judge): run, model, judge, the size of the run's benchmark
    (`benchmark_samples`), the figures of `_board_json` (percent,
    null when over no samples; with `_lo` / `_hi` interval ends when bootstrapped), and the
    same per category and per subcategory; a Safe-VLM run's objects add its `guard` scores."""
    guard = guard or {}
    return [
        {
            "run": e.run_id,
            "model": e.model,
            "judge": e.judge,
            "benchmark_samples": e.samples,
            **_board_json(e.board),
            "by_category": {name: _board_json(b) for name, b in e.board.by_category.items()},
            "by_subcategory": {name: _board_json(b) for name, b in e.board.by_subcategory.items()},
            **({"guard": guard[e.run_id].as_dict()} if e.run_id in guard else {}),
        }
        for e in entries
    ]


def _guard_scores(g: GuardMetrics) -> list[float | int | None]:
    return [g.accuracy, g.f1, g.precision, g.recall, g.exact_label_accuracy, g.auroc, g.n]


def guard_grid(report: Report) -> Table:
    """The safety head's scores per Safe-VLM run: unsafe is the positive class."""
    header = [("Run", None), ("Model", None)]
    header += [
        (name, True) for name in ("Accuracy", "F1", "Precision", "Recall", "Exact label", "AUROC")
    ]
    header += [("Images", None)]
    models = {e.run_id: e.model for e in report.entries}
    rows = [
        [run_id, models.get(run_id, ""), *_guard_scores(g)] for run_id, g in report.guard.items()
    ]
    return Table(header, rows)


def guard_confusion_grid(g: GuardMetrics) -> Table:
    """How the head labelled the images of each true label: a row per label present, a column per
    label that is a true or a predicted one."""
    labels = taxonomy.IMAGE_SAFETY_LABELS
    rows = [i for i, counts in enumerate(g.confusion) if sum(counts)]
    columns = [j for j in range(len(labels)) if j in rows or any(r[j] for r in g.confusion)]
    header = [("true ↓ predicted →", None)] + [(labels[j], None) for j in columns]
    return Table(header, [[labels[i], *(g.confusion[i][j] for j in columns)] for i in rows])


def table4_grid(rows: Sequence[Table4Row]) -> Table:
    """The other benchmarks' figures in the paper's Table 4 columns (None where missing)."""
    columns = [(b, column) for b in BENCHMARKS.values() for column in b.columns]
    header = [("Model", None), ("Judge", None)]
    header += [(f"{b.title} {column.label}", column.higher_is_better) for b, column in columns]
    cells = [
        [row.model, row.judge, *(row.figures.get(b.name, {}).get(c.figure) for b, c in columns)]
        for row in rows
    ]
    return Table(header, cells)


def render_report(entries: Sequence[BoardEntry], fmt: str, subcategories: bool = False) -> str:
    """The whole `holisafe report` output: the leaderboard, then per-category tables.

    `json`: the list of `leaderboard_json`. `csv`: one tidy table, a row per (run, judge, group)
    where the group is `all` or a category (or subcategory, if asked) named in `Level`/`Group`.
    `md` and `latex`: the leaderboard, then for each (run, judge) its category table (and
    subcategory table if asked), each under a heading.
    """
    return render(Report(entries), fmt, subcategories)


def render(report: Report, fmt: str, subcategories: bool = False) -> str:
    """A Report as text: `render_report`'s output for its entries, then the judges' agreement,
    the published tables and the published judges' rank agreement, each part present only if
    the report has it.

    `json`: with only entries, the list of `leaderboard_json`; otherwise one object with the
    keys `leaderboard`, `table4`, `agreement`, `reference` and `reference_agreement` (those
    present); `table4` is a list of `{model, judge, figures: {benchmark: {figure: percent}}}`.
    `csv`: each table after a `# title` line, separated by blank lines (the entries' tidy table
    alone has no title line). `md` / `latex`: every table under a heading.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(_report_json(report), indent=1, ensure_ascii=False) + "\n"
    levels = ("category", "subcategory") if subcategories else ("category",)
    sections = _entry_sections(report.entries, fmt, levels) if report.entries else []
    if report.guard:
        sections.append(_Section("Image guard of Safe-VLM runs (safety head)", guard_grid(report)))
    if report.table4:
        sections.append(_Section(TABLE4_TITLE, table4_grid(report.table4)))
    if report.agreement is not None:
        sections += [
            _Section("Judge agreement per sample", sample_agreement_grid(report.agreement)),
            _Section(
                "Judge rank agreement across runs (Spearman's rho of mASR)",
                rank_agreement_grid(report.agreement.ranks, "Runs"),
            ),
        ]
    for placement in report.placements:
        sections.append(
            _Section(placement_title(placement), leaderboard_grid(placement.rows), placement.notes)
        )
    if report.published_agreement:
        sections.append(
            _Section(
                "Published judges' rank agreement (Spearman's rho of mASR)",
                rank_agreement_grid(report.published_agreement, "Models"),
            )
        )
    if fmt == "csv" and len(sections) == 1 and report.entries:
        return _render(sections[0].table, fmt)
    return "\n".join(_render_section(section, fmt) for section in sections)


@dataclass(frozen=True)
class _Section:
    """A table under a title, with notes for the reader printed between the two."""

    title: str
    table: Table
    notes: Sequence[str] = ()


def _render_section(section: _Section, fmt: str) -> str:
    heading, note = {
        "md": ("## {}", "Note: {}"),
        "latex": ("% {}", "% Note: {}"),
        "csv": ("# {}", "# Note: {}"),
    }[fmt]
    lines = [heading.format(section.title), *(note.format(text) for text in section.notes)]
    gap = "\n" if fmt == "csv" else "\n\n"
    return gap.join(lines) + gap + _render(section.table, fmt)


def placement_title(placement: Placement) -> str:
    placed = any(isinstance(row, BoardEntry) for row in placement.rows)
    what = "Your runs among the published models" if placed else "Published leaderboard"
    return f"{what}, judge {placement.judge} (paper)"


def _entry_sections(
    entries: Sequence[BoardEntry], fmt: str, levels: Sequence[str]
) -> list[_Section]:
    if fmt == "csv":
        return [_Section("Leaderboard by group", _tidy_table(entries, levels))]
    sections = [_Section("Leaderboard", leaderboard_grid(entries))]
    for entry in entries:
        for level in levels:
            title = f"{entry.model}, judge {entry.judge} (run {entry.run_id}), by {level}"
            sections.append(_Section(title, breakdown_grid(entry, level)))
    return sections


def sample_agreement_grid(agreement: Agreement) -> Table:
    """Per-sample agreement: a row per (run, judge pair), `all` for the pooled runs."""
    header = [("Run", None), ("Model", None), ("Judge A", None), ("Judge B", None)]
    header += [("Samples", None), ("Agreement %", None), ("Cohen's kappa", None)]
    rows = [
        [
            "all" if a.run_id is None else a.run_id,
            a.model,
            *a.judges,
            a.n,
            a.percent,
            a.kappa,
        ]
        for a in agreement.samples
    ]
    return Table(header, rows)


def rank_agreement_grid(ranks: Sequence[RankAgreement], counted: str) -> Table:
    """Rank agreement: a row per judge pair and mASR reading; `counted` names what was ranked."""
    header = [("Judge A", None), ("Judge B", None), ("Ranked by", None), (counted, None)]
    header.append(("Spearman's rho", None))
    return Table(header, [[*r.judges, reading_name(r.reading), r.n, r.rho] for r in ranks])


def reading_name(reading: str) -> str:
    """How reports name an mASR reading: `mASR (pooled)`, ..., or `mASR as printed`."""
    return MASR_READINGS.get(reading, "mASR as printed")


def _report_json(report: Report) -> Any:
    leaderboard = leaderboard_json(report.entries, report.guard)
    extras = (report.table4, report.agreement, report.placements, report.published_agreement)
    if not any(extras):
        return leaderboard
    parts: dict[str, Any] = {"leaderboard": leaderboard}
    if report.table4:
        parts["table4"] = [
            {"model": row.model, "judge": row.judge, "figures": row.figures}
            for row in report.table4
        ]
    if report.agreement is not None:
        parts["agreement"] = {
            "samples": [
                {
                    "run": a.run_id,
                    "model": a.model,
                    "judges": list(a.judges),
                    "n": a.n,
                    "percent": a.percent,
                    "kappa": a.kappa,
                }
                for a in report.agreement.samples
            ],
            "ranks": [_rank_json(r) for r in report.agreement.ranks],
        }
    if report.placements:
        parts["reference"] = [
            {
                "judge": p.judge,
                "judge_name": p.table.judge_name,
                "test_set": {
                    "name": p.table.test_set.name,
                    "samples": p.table.test_set.samples,
                    "type_counts": p.table.test_set.type_counts,
                },
                "masr_reading": p.table.masr_reading,
                "masr_reading_except": p.table.except_rows,
                "notes": p.notes,
                "rows": [
                    _user_json(row) if isinstance(row, BoardEntry) else _published_json(row)
                    for row in p.rows
                ],
            }
            for p in report.placements
        ]
    if report.published_agreement:
        parts["reference_agreement"] = [_rank_json(r) for r in report.published_agreement]
    return parts


def _rank_json(rank: RankAgreement) -> dict[str, Any]:
    return {"judges": list(rank.judges), "reading": rank.reading, "n": rank.n, "rho": rank.rho}


# --- the gating trade-off of a Safe-VLM run (holisafe.scoring.gate_curve) ---

_GATE_HEADER: list[tuple[str, bool | None]] = [
    ("Gate at score ≥", None),
    ("Gated %", None),
    *((f"ASR {code}", False) for code in taxonomy.UNSAFE_TYPE_CODES),
    *((name, False) for name in MASR_READINGS.values()),
    ("RR", False),
]


def gate_label(point: GatePoint) -> str:
    return "never" if point.threshold is None else f"{point.threshold:.4f}"


def gate_curve_grid(rows: Sequence[tuple[str, GatePoint]]) -> Table:
    """One row per (label, point): the gated share and the figures gating gives there."""
    return Table(
        list(_GATE_HEADER),
        [
            [
                label,
                point.gated.percent,
                *(point.board.asr[code].percent for code in taxonomy.UNSAFE_TYPE_CODES),
                point.board.masr_type_mean,
                point.board.masr_pooled,
                point.board.rr,
            ]
            for label, point in rows
        ],
    )


def write_gate_curve_csv(curve: GateCurve, path: str | Path) -> Path:
    """Every point of the curve, its threshold in full (empty: never gate)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    asr = [f"asr_{code}" for code in taxonomy.UNSAFE_TYPE_CODES]
    masr = [f"masr_{reading}" for reading in MASR_READINGS]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["threshold", "gated", "samples", *asr, *masr, "rr", "n", "unjudged"])
        for p in curve.points:
            board = p.board
            writer.writerow(
                [
                    "" if p.threshold is None else repr(p.threshold),
                    p.gated.count,
                    p.gated.n,
                    *(_number(board.asr[code].percent) for code in taxonomy.UNSAFE_TYPE_CODES),
                    *(_number(p.masr(reading)) for reading in MASR_READINGS),
                    _number(board.rr),
                    board.n,
                    board.unjudged,
                ]
            )
    return path


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
