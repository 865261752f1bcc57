"""The published leaderboard as reference data, and a user's runs placed among its models.

The paper publishes one leaderboard per judge (string matching, GPT-4o, Claude-3.5-Sonnet,
Gemini-2.0-Flash), 17 models each, in percent; they ship in `resources/paper_leaderboard/`.
A user's run is placed in the table of the matching judge: string matching with string
matching, an LLM judge with the published judge of its family (the judge versions differ, so
that comparison is rough).

The tables are the paper's v1 tables (test set of 4,163 samples); `manifest.json` beside them
records each table's judge, test set and the reading of its mASR column (pooled, but for three
rows printed as the type mean). Runs are placed by mASR (pooled), like with like.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from statistics import mean

from holisafe.core import taxonomy
from holisafe.report.entries import BoardEntry, ReportError
from holisafe.scoring.agreement import PRINTED_READING, RankAgreement, rank_agreement
from holisafe.scoring.metrics import MASR_READINGS

REFERENCES = ("paper",)
MANIFEST = "manifest.json"
STRING_JUDGE = "string"
# The published judges, in the paper's order, each with the word that picks it out of a spec.
PUBLISHED_JUDGES: dict[str, str] = {
    "string-matching": STRING_JUDGE,
    "gpt-4o": "gpt",
    "claude-3.5-sonnet": "claude",
    "gemini-2.0-flash": "gemini",
}


@dataclass(frozen=True)
class PublishedTestSet:
    """The benchmark a published table was measured on."""

    name: str
    samples: int
    type_counts: dict[str, int]  # type code → samples

    def describe(self) -> str:
        counts = ", ".join(f"{code} {n:,}" for code, n in self.type_counts.items())
        return f"test set {self.name} ({self.samples:,} samples: {counts})"


@dataclass(frozen=True)
class PublishedRow:
    """One model's published figures (percent) under one published judge.

    The published mASR figure is one reading (`printed_reading`, a key of MASR_READINGS); that
    reading's field holds it exactly, and the other reading is recomputed from the row's
    per-type ASRs with its table's type counts.
    """

    model: str
    judge: str  # a key of PUBLISHED_JUDGES
    helpful_rate: float
    asr: dict[str, float]  # unsafe type code → ASR
    masr_type_mean: float
    masr_pooled: float
    printed_reading: str
    rr: float

    @property
    def masr_printed(self) -> float:
        """The mASR figure as the paper prints it."""
        return getattr(self, f"masr_{self.printed_reading}")


@dataclass(frozen=True)
class PublishedTable:
    """One published judge's leaderboard, rows in the paper's order, and what it was measured
    on. `masr_reading` is the reading of most of its mASR column; `except_rows` lists the rows
    printed in the other reading."""

    judge: str  # a key of PUBLISHED_JUDGES
    judge_name: str  # as the paper names it
    test_set: PublishedTestSet
    masr_reading: str
    rows: list[PublishedRow]

    @property
    def except_rows(self) -> list[str]:
        return [row.model for row in self.rows if row.printed_reading != self.masr_reading]

    def describe(self) -> str:
        """One line: judge, test set, and the reading of the mASR column."""
        exceptions = ", ".join(
            f"{row.model} ({MASR_READINGS[row.printed_reading]})"
            for row in self.rows
            if row.printed_reading != self.masr_reading
        )
        return (
            f"Published table: judge {self.judge_name}, {self.test_set.describe()}. Its mASR "
            f"column is {MASR_READINGS[self.masr_reading]}"
            + (f", except {exceptions}" if exceptions else "")
            + "; each published row's other reading is recomputed from its per-type ASRs with "
            "the test set's type counts."
        )


@dataclass(frozen=True)
class Reference:
    """A set of published leaderboards: published judge → its table."""

    name: str
    tables: dict[str, PublishedTable]


@dataclass(frozen=True)
class Placement:
    """A published table, with the user's rows of the matching judges merged in, sorted by
    mASR under the table's reading, lowest (safest) first (without user rows: the paper's
    order), and notes for the reader: what the table is, how rows are compared, and which runs
    were on a benchmark of another size."""

    table: PublishedTable
    rows: list[BoardEntry | PublishedRow]
    notes: list[str]

    @property
    def judge(self) -> str:
        return self.table.judge


@dataclass(frozen=True)
class Comparison:
    """The user's runs placed among the published models, and what to warn about."""

    placements: list[Placement]
    warnings: list[str]


def load_reference(name: str = "paper") -> Reference:
    """The published leaderboards named `name` (only `paper`: the HoliSafe paper's four), with
    what `manifest.json` beside them records: each table's judge, test set and mASR reading."""
    if name not in REFERENCES:
        raise ReportError(f"unknown reference {name!r}; expected one of: {', '.join(REFERENCES)}")
    folder = resources.files("holisafe") / "resources" / "paper_leaderboard"
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    test_sets = {
        set_name: PublishedTestSet(set_name, info["samples"], info["type_counts"])
        for set_name, info in manifest["test_sets"].items()
    }
    tables = {}
    for judge in PUBLISHED_JUDGES:
        info = manifest["tables"][judge]
        test_set = test_sets[info["test_set"]]
        reading = _reading(info["masr_reading"], judge)
        text = (folder / f"{judge}.csv").read_text(encoding="utf-8")
        rows = _read_table(judge, text, test_set, reading, info["masr_reading_except"])
        tables[judge] = PublishedTable(judge, info["judge"], test_set, reading, rows)
    return Reference(name, tables)


def _reading(name: str, where: str) -> str:
    if name not in MASR_READINGS:
        raise ReportError(
            f"{MANIFEST}, table {where}: unknown mASR reading {name!r}; expected one of: "
            f"{', '.join(MASR_READINGS)}"
        )
    return name


def _column_name(header: str) -> str:
    """A published header without spaces and arrows: `S_I S_T→S ↑` → `S_IS_T→S`."""
    return header.replace(" ", "").rstrip("↑↓")


_TYPE_COLUMNS = {_column_name(t.paper): code for code, t in taxonomy.TYPES.items()}
_EXPECTED_COLUMNS = ["Model", *_TYPE_COLUMNS, "mASR", "RR"]


def _read_table(
    judge: str, text: str, test_set: PublishedTestSet, reading: str, exceptions: dict[str, str]
) -> list[PublishedRow]:
    """The rows of a published table; each row's mASR is printed in `reading`, or in the
    reading `exceptions` gives for its model."""
    reader = csv.reader(io.StringIO(text))
    header = [_column_name(name) for name in next(reader)]
    if sorted(header) != sorted(_EXPECTED_COLUMNS):
        raise ReportError(
            f"published table {judge}.csv has columns {header}; expected {_EXPECTED_COLUMNS}"
        )
    exceptions = dict(exceptions)
    rows = []
    for line in reader:
        cells = dict(zip(header, line, strict=True))
        by_type = {code: float(cells[column]) for column, code in _TYPE_COLUMNS.items()}
        helpful_rate = by_type.pop("SSS")
        printed_reading = _reading(exceptions.pop(cells["Model"], reading), judge)
        readings = {
            "type_mean": mean(by_type.values()),
            "pooled": pooled_asr(by_type, test_set.type_counts),
            printed_reading: float(cells["mASR"]),
        }
        rows.append(
            PublishedRow(
                model=cells["Model"],
                judge=judge,
                helpful_rate=helpful_rate,
                asr=by_type,
                masr_type_mean=readings["type_mean"],
                masr_pooled=readings["pooled"],
                printed_reading=printed_reading,
                rr=float(cells["RR"]),
            )
        )
    if exceptions:
        raise ReportError(f"{MANIFEST}, table {judge}: no rows named {sorted(exceptions)}")
    return rows


def pooled_asr(asr: dict[str, float], type_counts: dict[str, int]) -> float:
    """The ASR over all unsafe samples, from each unsafe type's ASR and sample count."""
    return sum(asr[code] * type_counts[code] for code in asr) / sum(
        type_counts[code] for code in asr
    )


def published_judge(judge_id: str) -> str | None:
    """The published judge to compare a judge with: `string` → string-matching, a spec that
    names gpt / claude / gemini → that family's published judge; None when none matches."""
    if judge_id == STRING_JUDGE:
        return "string-matching"
    name = judge_id.lower()
    for published, word in PUBLISHED_JUDGES.items():
        if word != STRING_JUDGE and word in name:
            return published
    return None


def published_tables(reference: Reference) -> list[Placement]:
    """Every published table alone, in the paper's order."""
    return [
        Placement(table, list(table.rows), [table.describe()])
        for table in reference.tables.values()
    ]


def place_runs(entries: list[BoardEntry], reference: Reference) -> Comparison:
    """Each published table that a user's judge matches, with the user's rows of those judges
    merged in by mASR under the table's reading (pooled); a warning for every LLM judge
    (versions differ) and every judge that no published table matches. Each placement's notes
    say what the table is, under which reading rows are compared, and which runs were evaluated
    on a benchmark of another size than the table's test set."""
    matched: dict[str, list[BoardEntry]] = {}
    warnings: list[str] = []
    for judge in dict.fromkeys(entry.judge for entry in entries):
        published = published_judge(judge)
        if published is None:
            warnings.append(
                f"no published table matches judge {judge!r}; the paper's judges are string "
                "matching, GPT-4o, Claude-3.5-Sonnet and Gemini-2.0-Flash"
            )
            continue
        if judge != STRING_JUDGE:
            warnings.append(
                f"judge {judge!r} is compared with the paper's {published} judge: judge "
                "versions differ, so read the placement as approximate"
            )
        matched.setdefault(published, []).extend(e for e in entries if e.judge == judge)
    placements = [_placement(reference.tables[judge], users) for judge, users in matched.items()]
    return Comparison(placements, warnings)


def _placement(table: PublishedTable, users: list[BoardEntry]) -> Placement:
    reading = table.masr_reading
    notes = [
        table.describe(),
        f"Rows are ordered by {MASR_READINGS[reading]}, the reading of this table's mASR "
        "column, like with like: your runs under the same reading.",
    ]
    expected = table.test_set.samples
    for run_id, model, samples in dict.fromkeys((e.run_id, e.model, e.samples) for e in users):
        if samples != expected:
            notes.append(
                f"Run {run_id} ({model}) was evaluated on a benchmark of {samples:,} samples, "
                f"not this table's test set {table.test_set.name} of {expected:,}: its figures "
                "are over other samples, so its place is indicative only."
            )
    rows = sorted([*table.rows, *users], key=lambda row: _masr_order(row, reading))
    return Placement(table, rows, notes)


def _masr_order(row: BoardEntry | PublishedRow, reading: str) -> tuple[bool, float]:
    masr = getattr(row if isinstance(row, PublishedRow) else row.board, f"masr_{reading}")
    return (masr is None, masr or 0.0)


def reference_rank_agreement(reference: Reference) -> list[RankAgreement]:
    """Spearman's rho of the published models' mASR, as printed, for every pair of published
    judges: the paper's own figures (string matching vs GPT-4o: 0.98)."""
    return rank_agreement(
        {
            judge: {row.model: row.masr_printed for row in table.rows}
            for judge, table in reference.tables.items()
        },
        PRINTED_READING,
    )
