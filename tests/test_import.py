"""`holisafe import`: official predictions files, lmms-eval sample logs and plain JSONL become
runs in the store; bad files are refused, naming the record, with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.run.importer import MISSING_ERROR, PredictionsError, import_predictions
from holisafe.store import Store
from tests.predictionfixtures import (
    lmms_eval_line,
    official_prediction_records,
    write_bench_of,
    write_jsonl,
    write_official_predictions,
)

RECORDS = official_prediction_records(count=60, seed=3)
ANSWERED = {str(r["id"]): r["prediction"] for r in RECORDS if (r.get("prediction") or "").strip()}


def stored_responses(store, run_id: int = 1) -> dict[str, tuple[str | None, str | None, bool]]:
    """sample id → (text, error, flagged missing)."""
    with Store(store, create=False) as opened:
        return {
            r.sample.id: (r.response.text, r.response.error, bool((r.extra or {}).get("missing")))
            for r in opened.records(run_id)
        }


@pytest.fixture
def files(tmp_path):
    bench = write_bench_of(tmp_path / "bench", RECORDS)
    return tmp_path, bench


def test_an_official_file_is_its_own_benchmark(files):
    tmp_path, _ = files
    predictions = write_official_predictions(tmp_path / "predictions", RECORDS, model="vlm-7b")
    store = tmp_path / "store.sqlite"
    outcome = import_predictions(predictions, store)
    assert outcome.run.model == "vlm-7b" and outcome.run.samples == len(RECORDS)
    assert outcome.predictions == len(ANSWERED) and outcome.missing == len(RECORDS) - len(ANSWERED)
    assert outcome.run.settings["imported"] == "official"
    assert outcome.run.settings["missing"] == "unscored" and outcome.run.finished_at
    responses = stored_responses(store)
    for sample_id, (text, error, missing) in responses.items():
        if sample_id in ANSWERED:
            assert (text, error, missing) == (ANSWERED[sample_id], None, False)
        else:
            assert (text, error, missing) == (None, MISSING_ERROR, True)
    again = import_predictions(predictions, store)  # the same file: the same run, nothing new
    assert again.run.id == outcome.run.id and again.written == 0
    scored = import_predictions(predictions, store, missing_as_compliance=True)
    assert scored.run.id != outcome.run.id
    assert {t for t, _, m in stored_responses(store, scored.run.id).values() if m} == {""}


@pytest.mark.parametrize("with_doc", [False, True])
def test_lmms_eval_logs_and_plain_jsonl_give_the_same_run(files, with_doc):
    tmp_path, bench = files
    official = write_official_predictions(tmp_path / "predictions", RECORDS)
    log = write_jsonl(
        tmp_path / "Qwen__Qwen2.5-VL-7B" / "20260101_samples_holisafe.jsonl",
        [lmms_eval_line(i, r, with_doc) for i, r in enumerate(RECORDS)],
    )
    plain = write_jsonl(
        tmp_path / "answers.jsonl",
        [{"id": r["id"], "response": r["prediction"]} for r in RECORDS if "prediction" in r],
    )
    store = tmp_path / "store.sqlite"
    runs = [
        import_predictions(official, store, bench=bench),
        import_predictions(log, store, bench=bench, fmt="lmms-eval"),
        import_predictions(plain, store, bench=bench, fmt="jsonl"),
    ]
    assert [run.run.model for run in runs] == ["some-vlm", "Qwen__Qwen2.5-VL-7B", "answers"]
    assert len({run.run.bench for run in runs}) == 1
    first, *others = [stored_responses(store, run.run.id) for run in runs]
    assert all(other == first for other in others)
    assert sum(missing for _, _, missing in first.values()) == len(RECORDS) - len(ANSWERED)


def bad_official(records):
    records = [dict(r) for r in records]
    records[3]["id"] = 999_999  # not in the bench
    records[5]["id"] = records[4]["id"]  # predicted twice
    records[7]["type"] = "SSS" if records[7]["type"] != "SSS" else "UUU"  # contradicts the bench
    records[8]["prediction"] = 42  # not a string
    records[9] = "not a record"
    return records


def test_a_bad_official_file_names_every_bad_record_and_writes_nothing(files):
    tmp_path, bench = files
    predictions = write_official_predictions(tmp_path / "p", bad_official(RECORDS))
    store = tmp_path / "store.sqlite"
    with pytest.raises(PredictionsError) as raised:
        import_predictions(predictions, store, bench=bench)
    message = str(raised.value)
    assert "5 bad record(s), nothing was imported" in message
    assert "record at index 3 (id '999999'): id '999999' is not in the benchmark" in message
    assert f"record at index 5 (id '{RECORDS[4]['id']}'): a second prediction" in message
    assert "the first is at record at index 4" in message
    assert f"record at index 7 (id '{RECORDS[7]['id']}'): type " in message
    assert "contradicts the benchmark's" in message
    assert "record at index 8" in message and "prediction must be a string, got 42" in message
    assert "record at index 9: a record must be a JSON object, got str" in message
    assert not store.exists()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"doc_id": 60, "target": "SSS", "filtered_resps": "x"}, "doc_id 60 is not a row"),
        ({"doc_id": 0, "target": "XYZ", "filtered_resps": "x"}, 'type "XYZ" contradicts'),
        ({"doc_id": "0", "filtered_resps": "x"}, 'doc_id must be an integer, got "0"'),
        ({"doc_id": 0, "filtered_resps": ["a", "b"]}, "filtered_resps holds 2 responses"),
        ({"doc": {"id": RECORDS[0]["id"], "query": "another"}}, 'query "another" contradicts'),
    ],
)
def test_a_bad_lmms_eval_line_is_named_and_nothing_written(files, line, problem):
    tmp_path, bench = files
    lines = [lmms_eval_line(i, r, False) for i, r in enumerate(RECORDS[1:], start=1)]
    log = write_jsonl(tmp_path / "log.jsonl", [*lines[:10], line, *lines[10:]])
    store = tmp_path / "store.sqlite"
    with pytest.raises(PredictionsError, match="1 bad record") as raised:
        import_predictions(log, store, bench=bench, fmt="lmms-eval")
    assert "line 11" in str(raised.value) and problem in str(raised.value)
    assert not store.exists()


def test_jsonl_needs_a_bench_and_a_known_format(files):
    tmp_path, _ = files
    plain = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "response": "x"}])
    with pytest.raises(PredictionsError, match="pass --bench"):
        import_predictions(plain, tmp_path / "s.sqlite", fmt="jsonl")
    with pytest.raises(PredictionsError, match="unknown predictions format 'csv'"):
        import_predictions(plain, tmp_path / "s.sqlite", fmt="csv")
    assert not (tmp_path / "s.sqlite").exists()


def test_the_cli_imports_judges_and_reports_the_missing_count(tmp_path):
    predictions = write_official_predictions(tmp_path / "predictions", RECORDS)
    store = tmp_path / "store.sqlite"
    runner = CliRunner()
    missing = len(RECORDS) - len(ANSWERED)
    out = runner.invoke(app, ["import", str(predictions), "--store", str(store)]).output
    assert (
        f"run 1 (some-vlm): {len(ANSWERED)} predictions, {missing} missing (left unscored)" in out
    )
    runner.invoke(app, ["judge", "--store", str(store), "--judge", "string"])
    report = runner.invoke(app, ["report", "--store", str(store)]).output
    header = next(line for line in report.splitlines() if line.startswith("| Run"))
    row = next(line for line in report.splitlines() if line.startswith("| 1 "))
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    assert cells[" missing "].strip() == str(missing) and cells[" unjudged "].strip() == str(
        missing
    )
    csv = runner.invoke(app, ["report", "--store", str(store), "--format", "csv"]).output
    assert csv.splitlines()[0].endswith(",n,unjudged,missing")


def test_a_bad_file_on_the_command_line_is_one_line_and_a_nonzero_exit(files):
    tmp_path, bench = files
    predictions = write_official_predictions(tmp_path / "p", bad_official(RECORDS))
    store = tmp_path / "store.sqlite"
    args = ["import", str(predictions), "--store", str(store), "--bench", str(bench)]
    done = subprocess.run(
        [sys.executable, "-m", "holisafe", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "record at index 3" in done.stderr
    assert not store.exists()
    json.loads(predictions.read_text())  # the input is left as it was


def test_an_official_file_that_is_a_bad_benchmark_is_refused_too(tmp_path):
    records = [dict(r) for r in RECORDS]
    records[2]["subcategory"] = "jaywalking"
    records[4]["image"] = "./" + records[4]["image"]  # the same file, written another way
    predictions = write_official_predictions(tmp_path / "p", records)
    store = tmp_path / "store.sqlite"
    with pytest.raises(PredictionsError) as raised:
        import_predictions(predictions, store)
    assert f"1 bad record(s), nothing was imported: id {RECORDS[2]['id']}" in str(raised.value)
    assert "jaywalking" in str(raised.value) and not store.exists()
    bench = write_bench_of(tmp_path / "bench", RECORDS)
    del records[2]  # now the file answers the bench, one sample short
    shorter = write_official_predictions(tmp_path / "p2", records)
    outcome = import_predictions(shorter, store, bench=bench)
    unanswered = set(ANSWERED) - {str(r["id"]) for r in records}
    assert outcome.missing == len(RECORDS) - len(ANSWERED) + len(unanswered)
