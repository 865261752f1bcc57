import csv
import io
import json

import pytest

from holisafe.core.records import Response
from holisafe.judges import StringJudge
from holisafe.report import (
    BoardEntry,
    ReportError,
    breakdown_table,
    leaderboard_table,
    render_report,
    store_leaderboards,
)
from holisafe.store import Store
from tests import evalfixtures

PAPER_COLUMNS = [
    "S_I S_T→S ↑",
    "S_I S_T→U ↓",
    "U_I S_T ↓",
    "U_I U_T ↓",
    "S_I U_T ↓",
    "mASR (type mean) ↓",
    "mASR (pooled) ↓",
    "RR ↓",
]
# The hand-checked figures of evalfixtures, in the paper's column order, two decimals.
HAND_ROW = ["75.00", "50.00", "66.67", "0.00", "100.00", "54.17", "57.14", "25.00"]


@pytest.fixture
def judged_store(tmp_path):
    """The hand-checked fixture taken through the store: responses, string verdicts."""
    samples = evalfixtures.samples()
    texts = evalfixtures.response_texts()
    with Store(tmp_path / "runs.db") as store:
        run = store.open_run("hf/tiny-model", samples, {"max_new_tokens": 8})
        store.save_responses(
            run.id,
            [
                (s.id, Response(texts[s.id]) if texts[s.id] else Response(None, "out of memory"))
                for s in samples
            ],
        )
        by_id = {str(s.id): s for s in samples}
        pending = store.pending_verdicts(run.id, "string")
        verdicts = StringJudge().judge([(by_id[i], text) for i, text in pending])
        store.save_verdicts(run.id, "string", zip([i for i, _ in pending], verdicts, strict=True))
        yield store


@pytest.fixture
def entries(judged_store):
    return store_leaderboards(judged_store)


def test_json_report_fields_and_hand_checked_numbers(entries):
    (entry,) = json.loads(render_report(entries, "json"))
    expected = evalfixtures.EXPECTED_ALL
    assert entry["model"] == "hf/tiny-model" and entry["judge"] == "string"
    assert entry["n"] == expected["n"] and entry["unjudged"] == expected["unjudged"]
    assert entry["asr"] == pytest.approx(expected["asr"])
    assert entry["asr_n"] == expected["asr_n"]
    assert entry["helpful_rate"] == pytest.approx(expected["helpful_rate"])
    assert entry["helpful_n"] == 4
    assert entry["masr_type_mean"] == pytest.approx(expected["masr_type_mean"])
    assert entry["masr_pooled"] == pytest.approx(expected["masr_pooled"])
    assert entry["benchmark_samples"] == 13
    assert entry["rr"] == pytest.approx(expected["rr"])
    hate = entry["by_category"]["hate"]
    assert hate["masr_type_mean"] is None and hate["masr_pooled"] is None
    assert hate["asr"]["UUU"] is None and hate["asr_n"]["UUU"] == 0
    assert hate["safe_rate"] == pytest.approx(0.0) and hate["n"] == 6
    violence = entry["by_category"]["violence"]
    assert violence["helpful_rate"] == pytest.approx(50.0) and violence["unjudged"] == 2
    assert set(entry["by_subcategory"]) == {"race", "terrorism"}


def test_markdown_leaderboard(entries):
    lines = leaderboard_table(entries, "md").splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Run", "Model", "Judge", *PAPER_COLUMNS, "n", "unjudged"]
    row = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert row == ["1", "hf/tiny-model", "string", *HAND_ROW, "11", "2"]


def test_csv_leaderboard_and_tidy_report(entries):
    (header, row) = list(csv.reader(io.StringIO(leaderboard_table(entries, "csv"))))
    assert header[3:11] == PAPER_COLUMNS and row[3:11] == HAND_ROW
    report = list(csv.DictReader(io.StringIO(render_report(entries, "csv"))))
    assert [(r["Level"], r["Group"]) for r in report] == [
        ("all", ""),
        ("category", "violence"),
        ("category", "hate"),
    ]
    assert report[2]["mASR (type mean) ↓"] == report[2]["mASR (pooled) ↓"] == ""  # no UUU in hate
    assert report[2]["Safe rate ↑"] == "0.00"


def test_breakdown_tables(entries):
    table = breakdown_table(entries[0], "md", "category").splitlines()
    assert table[0].startswith("| Category | S_I S_T→S ↑ |")
    assert "Safe rate ↑" in table[0]
    violence = [cell.strip() for cell in table[2].strip("|").split("|")]
    # helpful, SSU, USU, UUU, SUU (none judged), mASR both readings (incomplete), RR, safe rate,
    # n, unjudged
    figures = ["50.00", "0.00", "0.00", "0.00", "–", "–", "–", "50.00", "100.00", "5", "2"]
    assert violence == ["violence", *figures]
    sub = breakdown_table(entries[0], "md", "subcategory")
    assert "| terrorism |" in sub and "| race |" in sub
    with pytest.raises(ReportError, match="breakdown level"):
        breakdown_table(entries[0], "md", "type")


def test_latex_escapes_and_uses_paper_notation(entries):
    entry = BoardEntry(7, "hf/my_model & co", "llm:x", entries[0].board, 13)
    latex = leaderboard_table([entry], "latex")
    assert r"$S_I S_T \rightarrow S$ $\uparrow$" in latex
    assert r"$U_I U_T$ $\downarrow$" in latex and r"mASR (pooled) $\downarrow$" in latex
    assert r"hf/my\_model \& co" in latex
    assert " & ".join(["7", r"hf/my\_model \& co", "llm:x", *HAND_ROW]) in latex
    assert latex.startswith(r"\begin{tabular}{rllrrrrrrrrrr}") and r"\bottomrule" in latex


def test_markdown_report_has_every_section(entries):
    text = render_report(entries, "md", subcategories=True)
    assert text.count("## ") == 3
    assert "## hf/tiny-model, judge string (run 1), by category" in text
    assert "by subcategory" in text


def test_unknown_format():
    with pytest.raises(ReportError, match="unknown report format 'html'"):
        render_report([], "html")
    with pytest.raises(ReportError, match="unknown table format"):
        leaderboard_table([], "json")


def test_store_leaderboards_filters_and_explains_emptiness(judged_store, tmp_path):
    assert store_leaderboards(judged_store, run_id=1, judge_id="string")[0].judge == "string"
    with pytest.raises(ReportError, match="no verdicts of judge 'llm:x'"):
        store_leaderboards(judged_store, judge_id="llm:x")
    with Store(tmp_path / "empty.db") as empty, pytest.raises(ReportError, match="no verdicts"):
        store_leaderboards(empty)
