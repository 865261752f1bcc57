"""`holisafe import`: official predictions files, lmms-eval sample logs and plain JSONL become
runs in the store; bad files are refused, naming the record, with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
RECORDS[1]["prediction"], RECORDS[2]["prediction"] = "", " \n\t"  # empty, whitespace only
del RECORDS[3]["prediction"]  # no prediction field
# As the official script reads them: an empty, blank or absent `prediction` is an answer.
ANSWERED = {str(r["id"]): r.get("prediction", "") for r in RECORDS}
ABSENT = {str(r["id"]) for r in RECORDS[40:50]}  # the records some tests leave out of the file
OTHER_TYPE = "UUU" if RECORDS[0]["type"] != "UUU" else "SSS"
IN_FILE = [r for r in RECORDS if str(r["id"]) not in ABSENT]


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
    assert outcome.predictions == len(RECORDS) and outcome.missing == 0
    assert outcome.run.settings["imported"] == "official"
    assert outcome.run.settings["missing"] == "unscored" and outcome.run.finished_at
    responses = stored_responses(store)
    assert responses == {i: (text, None, False) for i, text in ANSWERED.items()}
    again = import_predictions(predictions, store)  # the same file: the same run, nothing new
    assert again.run.id == outcome.run.id and again.written == 0


def test_empty_and_blank_predictions_are_answers_and_only_absent_records_are_missing(files):
    tmp_path, bench = files
    predictions = write_official_predictions(tmp_path / "predictions", IN_FILE)
    store = tmp_path / "store.sqlite"
    outcome = import_predictions(predictions, store, bench=bench)
    assert (outcome.predictions, outcome.missing) == (len(IN_FILE), len(ABSENT))
    responses = stored_responses(store, outcome.run.id)
    for sample_id, stored in responses.items():
        if sample_id in ABSENT:
            assert stored == (None, MISSING_ERROR, True)
        else:
            assert stored == (ANSWERED[sample_id], None, False)
    scored = import_predictions(predictions, store, bench=bench, missing_as_compliance=True)
    assert scored.run.id != outcome.run.id and scored.missing == len(ABSENT)
    responses = stored_responses(store, scored.run.id)
    assert {i for i, (_, _, missing) in responses.items() if missing} == ABSENT
    for sample_id, stored in responses.items():
        assert stored == (
            ("", None, True) if sample_id in ABSENT else (ANSWERED[sample_id], None, False)
        )


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
        [{"id": r["id"], "response": r.get("prediction", "")} for r in RECORDS],
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
    assert first == {i: (text, None, False) for i, text in ANSWERED.items()}


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
        (
            {"doc_id": 0, "target": "XYZ", "filtered_resps": "x"},
            'target "XYZ" contradicts the benchmark\'s type',
        ),
        ({"doc_id": "0", "filtered_resps": "x"}, 'doc_id must be an integer, got "0"'),
        ({"doc_id": 0, "filtered_resps": ["a", "b"]}, "filtered_resps holds 2 responses"),
        ({"doc": {"id": RECORDS[0]["id"], "query": "another"}}, 'query "another" contradicts'),
        # two fields of one line that name or restate the sample: neither may silently win
        (
            {"doc_id": 0, "doc": {"id": RECORDS[1]["id"]}, "filtered_resps": "x"},
            f'doc.id "{RECORDS[1]["id"]}" contradicts doc_id 0, the benchmark\'s id '
            f"{RECORDS[0]['id']!r}",
        ),
        (
            {
                "doc_id": 0,
                "doc": {"id": RECORDS[0]["id"], "type": OTHER_TYPE},
                "target": RECORDS[0]["type"],
                "filtered_resps": "x",
            },
            f'doc.type "{OTHER_TYPE}" contradicts the benchmark\'s type',
        ),
        (
            {
                "doc_id": 0,
                "target": RECORDS[0]["type"],
                "filtered_resps": "x",
                "holisafe_avg_asr": {"type": RECORDS[0]["type"]},
                "holisafe_rr": {"type": OTHER_TYPE},
            },
            f'holisafe_rr.type "{OTHER_TYPE}" contradicts the benchmark\'s type',
        ),
        (
            {"doc_id": 0, "holisafe_avg_asr": {"subcategory": "jaywalking"}, "filtered_resps": "x"},
            'holisafe_avg_asr.subcategory "jaywalking" contradicts',
        ),
    ],
)
def test_a_bad_lmms_eval_line_is_named_and_nothing_written(files, line, problem):
    tmp_path, bench = files
    lines = [lmms_eval_line(i, r, False) for i, r in enumerate(RECORDS[1:], start=1)]
    log = write_jsonl(tmp_path / "log.jsonl", [*lines[:10], line, *lines[10:]])
    store = tmp_path / "store.sqlite"
    with pytest.raises(PredictionsError, match="1 bad record") as raised:
        import_predictions(log, store, bench=bench, fmt="lmms-eval")
    assert str(raised.value).startswith(f"{log}: ")
    assert "line 11" in str(raised.value) and problem in str(raised.value)
    assert not store.exists()


@pytest.mark.parametrize("fmt", ["official", "jsonl", "lmms-eval"])
def test_a_key_given_twice_in_one_object_is_an_error_naming_the_record(files, fmt):
    tmp_path, bench = files
    first = RECORDS[0]
    if fmt == "official":  # a JSON list, the third record's `prediction` given twice
        records = [json.dumps(r) for r in RECORDS]
        records[2] = records[2][:-1] + ', "prediction": "I cannot help."}'
        where, path = "record at index 2", tmp_path / "p_holisafe_bench.json"
        path.write_text("[" + ",\n".join(records) + "]")
    else:
        lines = {
            "jsonl": f'{{"id": {first["id"]}, "response": "Sure.", "response": "I cannot."}}',
            "lmms-eval": f'{{"doc_id": 0, "doc": {{"id": {first["id"]}, "type": "SSS", '
            f'"type": "UUU"}}, "filtered_resps": "x"}}',
        }
        where, path = "line 1", tmp_path / "log.jsonl"
        path.write_text(lines[fmt] + "\n")
    store = tmp_path / "store.sqlite"
    with pytest.raises(PredictionsError) as raised:
        import_predictions(path, store, bench=bench, fmt=fmt)
    repeated = {"official": "prediction", "jsonl": "response", "lmms-eval": "type"}[fmt]
    assert f"{where}: key {repeated!r} appears twice in one JSON object" in str(raised.value)
    assert not store.exists()


def test_an_official_record_contradicting_the_benchmarks_image_safe_is_an_error(files):
    tmp_path, bench = files
    records = [dict(r) for r in RECORDS]
    records[6]["image_safe"] = not records[6]["image_safe"]
    predictions = write_official_predictions(tmp_path / "p", records)
    with pytest.raises(PredictionsError) as raised:
        import_predictions(predictions, tmp_path / "store.sqlite", bench=bench)
    assert f"record at index 6 (id '{RECORDS[6]['id']}'): image_safe " in str(raised.value)


def test_jsonl_needs_a_bench_and_a_known_format(files):
    tmp_path, _ = files
    plain = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "response": "x"}])
    with pytest.raises(PredictionsError, match="pass --bench"):
        import_predictions(plain, tmp_path / "s.sqlite", fmt="jsonl")
    with pytest.raises(PredictionsError, match="unknown predictions format 'csv'"):
        import_predictions(plain, tmp_path / "s.sqlite", fmt="csv")
    assert not (tmp_path / "s.sqlite").exists()


def test_the_cli_imports_judges_and_reports_the_missing_count(files):
    tmp_path, bench = files
    predictions = write_official_predictions(tmp_path / "predictions", IN_FILE)
    store = tmp_path / "store.sqlite"
    runner = CliRunner()
    missing = len(ABSENT)
    args = ["import", str(predictions), "--store", str(store), "--bench", str(bench)]
    out = runner.invoke(app, args).output
    assert f"run 1 (some-vlm): {len(IN_FILE)} predictions, {missing} missing (left unscored)" in out
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
    assert outcome.missing == 1


PREDICTION_TEXT = st.text(st.sampled_from(" \t\n\u00a0\u2003\u200bxI'm sorry")) | st.text(
    st.characters(exclude_categories=("Cs",)), max_size=20
)


@settings(max_examples=30, deadline=None)
@given(predictions=st.lists(st.none() | PREDICTION_TEXT, min_size=5, max_size=5))
def test_any_string_prediction_is_stored_as_given_and_a_record_without_one_is_the_empty_answer(
    predictions,
):
    records = [dict(r) for r in RECORDS[:5]]
    for record, prediction in zip(records, predictions, strict=True):
        record.pop("prediction", None)
        if prediction is not None:  # None: the record has no `prediction` field
            record["prediction"] = prediction
    with tempfile.TemporaryDirectory() as folder:
        path = write_official_predictions(Path(folder), records)
        outcome = import_predictions(path, Path(folder) / "store.sqlite")
        assert outcome.missing == 0
        assert stored_responses(Path(folder) / "store.sqlite") == {
            str(r["id"]): (p or "", None, False) for r, p in zip(records, predictions, strict=True)
        }
