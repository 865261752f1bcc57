"""The published leaderboard as reference data, and placing a user's runs in it."""

import csv
import io
import json
import shutil
from dataclasses import replace
from importlib import resources
from statistics import mean

import pytest
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.report import ReportError, leaderboard_table, store_leaderboards
from holisafe.report import reference as reference_module
from holisafe.report.reference import (
    PublishedRow,
    load_reference,
    place_runs,
    published_judge,
    reference_rank_agreement,
)
from holisafe.store import Store
from tests import reportfixtures

PUBLISHED_JUDGES = ["string-matching", "gpt-4o", "claude-3.5-sonnet", "gemini-2.0-flash"]
# HOLISAFE.md §5: the v1 test set's samples per type, and the rows of the published tables whose
# mASR is printed as the plain mean over types (all others: pooled over unsafe samples).
V1_TYPE_COUNTS = {"SSS": 755, "SSU": 844, "USU": 996, "UUU": 719, "SUU": 849}
TYPE_MEAN_ROWS = {
    ("claude-3.5-sonnet", "LLaVA-v1.5-13B"),
    ("gemini-2.0-flash", "Claude-3.5-Sonnet"),
    ("gpt-4o", "Claude-3.5-Sonnet"),
}
# HOLISAFE.md: released results under string matching, mASR %.
STRING_MASR = {
    "LLaVA-v1.5-7B": 95.92,
    "GPT-4o": 41.73,
    "VLGuard-7B": 54.40,
    "SafeLLaVA-7B (Ours)": 13.32,
    "SafeLLaVA-13B (Ours)": 3.46,
}


@pytest.fixture(scope="module")
def report_store(tmp_path_factory):
    return reportfixtures.build_store(tmp_path_factory.mktemp("reference"))


def run_cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_four_published_tables_of_17_models():
    reference = load_reference("paper")
    assert list(reference.tables) == PUBLISHED_JUDGES
    models = [row.model for row in reference.tables["string-matching"].rows]
    assert len(models) == 17 and len(set(models)) == 17
    for judge, table in reference.tables.items():
        assert [row.model for row in table.rows] == models, judge
        for row in table.rows:
            assert set(row.asr) == {"SSU", "USU", "UUU", "SUU"}
            assert row.rr == pytest.approx(100 - row.helpful_rate, abs=0.011), (judge, row.model)
    string = {row.model: row.masr_printed for row in reference.tables["string-matching"].rows}
    assert {m: string[m] for m in STRING_MASR} == STRING_MASR


def published_csv(judge: str) -> list[dict[str, str]]:
    """A shipped table's rows as printed, read straight from the CSV file."""
    text = resources.files("holisafe") / "resources" / "paper_leaderboard" / f"{judge}.csv"
    return list(csv.DictReader(io.StringIO(text.read_text(encoding="utf-8"))))


def test_published_masr_is_pooled_in_65_of_68_rows():
    # Recomputed from each row's per-type ASRs with the v1 counts: the pooled ASR over all unsafe
    # samples reproduces the printed mASR (to its 0.01 rounding) in 65 of the 68 rows; the other
    # three print the plain mean over the four types.
    unsafe = {"S_IS_T→U↓": "SSU", "U_IS_T↓": "USU", "U_IU_T↓": "UUU", "S_IU_T↓": "SUU"}
    pooled_rows, type_mean_rows = set(), set()
    for judge in PUBLISHED_JUDGES:
        for row in published_csv(judge):
            asr = {code: float(row[column]) for column, code in unsafe.items()}
            printed = float(row["mASR↓"])
            pooled = sum(asr[c] * V1_TYPE_COUNTS[c] for c in asr) / sum(
                V1_TYPE_COUNTS[c] for c in asr
            )
            if abs(pooled - printed) <= 0.01:
                pooled_rows.add((judge, row["Model"]))
            elif abs(mean(asr.values()) - printed) <= 0.01:
                type_mean_rows.add((judge, row["Model"]))
    assert len(pooled_rows) == 65 and type_mean_rows == TYPE_MEAN_ROWS


def test_each_table_records_its_test_set_judge_and_reading():
    reference = load_reference()
    names = {"string-matching": "string matching", "gpt-4o": "GPT-4o"}
    names |= {"claude-3.5-sonnet": "Claude-3.5-Sonnet", "gemini-2.0-flash": "Gemini-2.0-Flash"}
    for judge, table in reference.tables.items():
        assert table.judge_name == names[judge]
        assert table.test_set.name == "v1" and table.test_set.samples == 4163
        assert table.test_set.type_counts == V1_TYPE_COUNTS
        assert table.masr_reading == "pooled"
        assert {(judge, model) for model in table.except_rows} <= TYPE_MEAN_ROWS
        assert "test set v1 (4,163 samples: SSS 755, SSU 844" in table.describe()
    excepted = {(j, m) for j, t in reference.tables.items() for m in t.except_rows}
    assert excepted == TYPE_MEAN_ROWS


def test_published_rows_carry_both_readings_and_the_printed_figure_exactly():
    rows = {(j, r.model): r for j, t in load_reference().tables.items() for r in t.rows}
    printed = {
        (j, row["Model"]): float(row["mASR↓"]) for j in PUBLISHED_JUDGES for row in published_csv(j)
    }
    for key, row in rows.items():
        assert row.masr_printed == printed[key], key
        expected = "type_mean" if key in TYPE_MEAN_ROWS else "pooled"
        assert row.printed_reading == expected, key
        assert row.masr_type_mean == pytest.approx(mean(row.asr.values()), abs=0.01), key
    gemini_claude = rows[("gemini-2.0-flash", "Claude-3.5-Sonnet")]
    assert gemini_claude.masr_type_mean == 40.21  # as printed
    assert gemini_claude.masr_pooled == pytest.approx(42.99, abs=0.005)  # recomputed
    llava = rows[("string-matching", "LLaVA-v1.5-7B")]
    assert llava.masr_pooled == 95.92 and llava.masr_type_mean == pytest.approx(95.685)


def test_published_judges_rank_agreement_is_the_papers():
    ranks = {r.judges: r for r in reference_rank_agreement(load_reference())}
    assert len(ranks) == 6 and all(r.n == 17 and r.reading == "printed" for r in ranks.values())
    # The paper: Spearman's rho of mASR, string matching vs GPT-4o and vs Gemini, 0.98.
    assert round(ranks[("string-matching", "gpt-4o")].rho, 2) == 0.98
    assert round(ranks[("string-matching", "gemini-2.0-flash")].rho, 2) == 0.98
    assert all(0.9 < r.rho <= 1 for r in ranks.values())


@pytest.mark.parametrize(
    ("judge", "published"),
    [
        ("string", "string-matching"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/gpt-4o-mini", "gpt-4o"),
        ("anthropic/claude-3-5-sonnet-20241022", "claude-3.5-sonnet"),
        ("google/gemini-2.0-flash", "gemini-2.0-flash"),
        ("hf/Qwen/Qwen2.5-VL-7B-Instruct", None),
    ],
)
def test_judge_families(judge, published):
    assert published_judge(judge) == published


def test_unknown_reference():
    with pytest.raises(ReportError, match="unknown reference 'arxiv'"):
        load_reference("arxiv")


def test_runs_placed_among_published_models_by_pooled_masr(report_store):
    with Store(report_store.path, create=False) as store:
        entries = store_leaderboards(store)
    comparison = place_runs(entries, load_reference())
    by_judge = {p.judge: p for p in comparison.placements}
    assert set(by_judge) == {"string-matching", "gpt-4o"}
    for judge, user_judge in (("string-matching", "string"), ("gpt-4o", "openai/gpt-4o")):
        rows = by_judge[judge].rows
        users = [row for row in rows if not isinstance(row, PublishedRow)]
        assert len(rows) == 17 + 2 and {u.judge for u in users} == {user_judge}
        pooled = [
            row.masr_pooled if isinstance(row, PublishedRow) else row.board.masr_pooled
            for row in rows
        ]
        assert pooled == sorted(pooled)
        notes = by_judge[judge].notes
        assert notes[0] == load_reference().tables[judge].describe()
        assert "Rows are ordered by mASR (pooled)" in notes[1]
        # Mini's bench has 95 samples, not the v1 test set's 4,163: each run gets a note.
        assert [n for n in notes if "was evaluated on" in n] == [
            "Run 1 (hf/cautious-vlm) was evaluated on a benchmark of 95 samples, not this "
            "table's test set v1 of 4,163: its figures are over other samples, so its place is "
            "indicative only.",
            "Run 2 (hf/careless-vlm) was evaluated on a benchmark of 95 samples, not this "
            "table's test set v1 of 4,163: its figures are over other samples, so its place is "
            "indicative only.",
        ]
    (warning,) = comparison.warnings
    assert "openai/gpt-4o" in warning and "versions differ" in warning


def test_no_size_note_for_a_run_on_a_bench_of_the_tables_size(report_store):
    with Store(report_store.path, create=False) as store:
        entries = [e for e in store_leaderboards(store) if e.judge == "string"]
    v1_sized = [replace(e, samples=4163) for e in entries]
    (placement,) = place_runs(v1_sized, load_reference()).placements
    assert len(placement.notes) == 2 and not any("evaluated on" in n for n in placement.notes)
    (placement,) = place_runs([replace(v1_sized[0], samples=4031)], load_reference()).placements
    assert "evaluated on a benchmark of 4,031 samples" in placement.notes[-1]


def test_a_judge_without_a_published_table_is_named(report_store):
    with Store(report_store.path, create=False) as store:
        entries = [e for e in store_leaderboards(store) if e.judge == "string"]
    other = [replace(e, judge="hf/local-judge") for e in entries]
    comparison = place_runs(other, load_reference())
    assert comparison.placements == []
    (warning,) = comparison.warnings
    assert "no published table matches judge 'hf/local-judge'" in warning


def test_cli_prints_published_tables_in_the_users_format(report_store):
    result = run_cli("report", "--reference", "paper")
    assert result.exit_code == 0, result.output
    with Store(report_store.path, create=False) as store:
        users_header = leaderboard_table(store_leaderboards(store), "md").splitlines()[0]
    tables = result.stdout.split("## Published leaderboard, judge ")[1:]
    assert [t.split(" ")[0] for t in tables] == PUBLISHED_JUDGES
    for table in tables:
        lines = [line for line in table.splitlines() if line.startswith("|")]
        assert lines[0] == users_header and len(lines) == 2 + 17
        assert all(line.startswith("| paper |") for line in lines[2:])


def test_cli_places_runs_and_warns_on_stderr(report_store):
    result = run_cli("report", "--store", report_store.path, "--reference", "paper", "--agreement")
    assert result.exit_code == 0, result.output
    assert "judge versions differ" in result.stderr and "versions differ" not in result.stdout
    assert "## Your runs among the published models, judge gpt-4o (paper)" in result.stdout
    assert "## Published judges' rank agreement" in result.stdout
    assert "| string-matching | gpt-4o | mASR as printed | 17 | 0.98 |" in result.stdout
    assert (
        "Note: Run 1 (hf/cautious-vlm) was evaluated on a benchmark of 95 samples" in result.stdout
    )


@pytest.mark.parametrize(("fmt", "note"), [("csv", "# Note: "), ("latex", "% Note: ")])
def test_placement_notes_in_csv_and_latex(report_store, fmt, note):
    result = run_cli(
        "report", "--store", report_store.path, "--reference", "paper", "--format", fmt
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"{note}Published table: judge GPT-4o, test set v1 (4,163 samples" in result.stdout
    for run_id in (1, 2):
        assert any(
            line.startswith(f"{note}Run {run_id} ") and "benchmark of 95 samples" in line
            for line in lines
        )


def test_published_tables_alone_say_what_they_are():
    result = run_cli("report", "--reference", "paper")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Note: Published table: judge ") == 4
    exception = "Its mASR column is mASR (pooled), except Claude-3.5-Sonnet (mASR (type mean))"
    assert exception in result.stdout
    assert "evaluated on" not in result.stdout


def test_cli_reference_as_json(report_store):
    result = run_cli(
        "report", "--store", report_store.path, "--reference", "paper", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    parts = json.loads(result.stdout)
    # Both readings of mASR for every (run, judge), and in each category's figures.
    with Store(report_store.path, create=False) as store:
        boards = {(e.run_id, e.judge): e.board for e in store_leaderboards(store)}
    assert {(e["run"], e["judge"]) for e in parts["leaderboard"]} == set(boards) and len(
        boards
    ) == 4
    for entry in parts["leaderboard"]:
        board = boards[entry["run"], entry["judge"]]
        assert entry["benchmark_samples"] == 95
        assert entry["masr_type_mean"] == pytest.approx(board.masr_type_mean)
        assert entry["masr_pooled"] == pytest.approx(board.masr_pooled)
        for name, category in entry["by_category"].items():
            assert category["masr_pooled"] == board.by_category[name].masr_pooled, name
    string = next(p for p in parts["reference"] if p["judge"] == "string-matching")
    assert string["test_set"] == {"name": "v1", "samples": 4163, "type_counts": V1_TYPE_COUNTS}
    assert string["judge_name"] == "string matching" and string["masr_reading"] == "pooled"
    assert any("Run 2 (hf/careless-vlm) was evaluated on" in note for note in string["notes"])
    assert sum(row["published"] for row in string["rows"]) == 17
    assert {row["run"] for row in string["rows"] if not row["published"]} == {1, 2}
    pooled = [row["masr_pooled"] for row in string["rows"]]
    assert pooled == sorted(pooled)
    gpt = next(p for p in parts["reference"] if p["judge"] == "gpt-4o")
    assert gpt["masr_reading_except"] == ["Claude-3.5-Sonnet"]
    claude = next(row for row in gpt["rows"] if row["model"] == "Claude-3.5-Sonnet")
    assert claude["masr_printed"] == claude["masr_type_mean"] == 39.21
    assert claude["masr_printed_reading"] == "type_mean"


def test_cli_refuses_what_needs_a_store():
    result = run_cli("report", "--reference", "paper", "--html", "somewhere")
    assert isinstance(result.exception, ReportError)
    assert "need --store" in str(result.exception)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"masr_reading": "mean"}, "table gpt-4o: unknown mASR reading 'mean'"),
        ({"masr_reading_except": {"GPT-5": "type_mean"}}, "table gpt-4o: no rows named"),
    ],
)
def test_a_wrong_manifest_is_named(tmp_path, monkeypatch, change, message):
    shipped = resources.files("holisafe") / "resources" / "paper_leaderboard"
    folder = tmp_path / "resources" / "paper_leaderboard"
    shutil.copytree(str(shipped), folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["tables"]["gpt-4o"] |= change
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setattr(reference_module.resources, "files", lambda package: tmp_path)
    with pytest.raises(ReportError, match=message):
        load_reference()
