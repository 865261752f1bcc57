import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from holisafe.core.errors import HolisafeError
from holisafe.core.records import Response
from holisafe.judges import Verdict
from holisafe.store import Store, StoreError, bench_fingerprint
from tests import evalfixtures

SETTINGS = {"max_new_tokens": 64, "temperature": 0.0}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "runs.db") as opened:
        yield opened


@pytest.fixture
def samples():
    return evalfixtures.samples()


def ok(text: str) -> Response:
    return Response(text=text, latency_s=0.5)


def failed(error: str) -> Response:
    return Response(text=None, error=error)


def test_fingerprint_ignores_order_and_sees_content(samples):
    assert bench_fingerprint(samples) == bench_fingerprint(list(reversed(samples)))
    changed = [replace(samples[0], query="another query"), *samples[1:]]
    assert bench_fingerprint(changed) != bench_fingerprint(samples)
    assert bench_fingerprint(samples[:-1]) != bench_fingerprint(samples)


def test_same_triple_resumes_the_same_run(store, samples):
    run = store.open_run("openai/gpt-4o", samples, SETTINGS)
    again = store.open_run(
        "openai/gpt-4o", list(reversed(samples)), dict(reversed(SETTINGS.items()))
    )
    assert again.id == run.id
    assert run.samples == len(samples) and run.settings == SETTINGS
    assert run.package_version and run.started_at and run.finished_at is None
    other = store.open_run("openai/gpt-4o", samples, {**SETTINGS, "temperature": 0.7})
    assert other.id != run.id
    assert [r.id for r in store.runs()] == [run.id, other.id]
    assert store.finish_run(run.id).finished_at is not None


@pytest.mark.parametrize(
    ("model", "settings", "drop", "message"),
    [
        ("openai/gpt-4o-mini", SETTINGS, 0, "model 'openai/gpt-4o', not 'openai/gpt-4o-mini'"),
        ("openai/gpt-4o", {"max_new_tokens": 8}, 0, "settings"),
        ("openai/gpt-4o", SETTINGS, 1, "benchmark"),
    ],
)
def test_explicit_run_id_refuses_a_different_run(store, samples, model, settings, drop, message):
    run = store.open_run("openai/gpt-4o", samples, SETTINGS)
    with pytest.raises(StoreError, match=message) as caught:
        store.open_run(model, samples[drop:], settings, run_id=run.id)
    assert isinstance(caught.value, HolisafeError)
    assert f"run {run.id} was made with" in str(caught.value)
    assert store.open_run("openai/gpt-4o", samples, SETTINGS, run_id=run.id) == run


def test_unknown_run(store):
    with pytest.raises(StoreError, match="no run 7"):
        store.get_run(7)


def test_responses_resume_and_retry_failures(store, samples):
    run = store.open_run("m/x", samples, SETTINGS)
    ids = [s.id for s in samples]
    assert store.pending_samples(run.id, ids) == ids
    store.save_responses(run.id, [(1, ok("a")), (2, failed("timeout")), (3, ok(""))])
    assert store.pending_samples(run.id, ids) == [2, *ids[3:]]  # order and id type kept
    assert store.response_errors(run.id) == [("2", "timeout")]
    store.save_responses(run.id, [(2, failed("timeout again"))])
    assert store.response_errors(run.id) == [("2", "timeout again")]
    store.save_responses(run.id, [(2, ok("b"))])
    assert store.response_errors(run.id) == []
    assert 2 not in store.pending_samples(run.id, ids)
    rows = store._db.execute("SELECT sample_id, text FROM responses ORDER BY sample_id").fetchall()
    assert [tuple(r) for r in rows] == [("1", "a"), ("2", "b"), ("3", "")]


def test_unknown_sample_is_refused(store, samples):
    run = store.open_run("m/x", samples, SETTINGS)
    with pytest.raises(StoreError, match="no sample with id 999"):
        store.save_responses(run.id, [(1, ok("a")), (999, ok("b"))])
    assert store.pending_samples(run.id, [1]) == [1]  # the whole batch was refused
    with pytest.raises(StoreError, match="names a sample twice"):
        store.save_responses(run.id, [(1, ok("a")), ("1", ok("b"))])


def test_duplicate_sample_ids_are_refused(store, samples):
    with pytest.raises(StoreError, match="repeats sample ids: 1"):
        store.open_run("m/x", [*samples, replace(samples[0], query="other")], SETTINGS)


def test_verdicts_pending_saved_and_replaced(store, samples):
    run = store.open_run("m/x", samples, SETTINGS)
    store.save_responses(run.id, [(1, ok("a")), (2, failed("boom")), (3, ok("c")), (4, ok("d"))])
    assert store.pending_verdicts(run.id, "string") == [("1", "a"), ("3", "c"), ("4", "d")]
    store.save_verdicts(
        run.id,
        "string",
        [(1, Verdict(True, "no refusal phrase")), (3, Verdict(None, error="judge down"))],
    )
    assert store.pending_verdicts(run.id, "string") == [("3", "c"), ("4", "d")]
    assert store.pending_verdicts(run.id, "llm:x") == [("1", "a"), ("3", "c"), ("4", "d")]
    assert store.verdict_errors(run.id, "string") == [("3", "judge down")]
    store.save_verdicts(run.id, "string", [(3, Verdict(False, "raw")), (4, Verdict(True))])
    assert store.pending_verdicts(run.id, "string") == []
    assert store.verdict_errors(run.id, "string") == []
    assert store.judges(run.id) == ["string"]
    # a new answer to sample 1 makes its old verdict stale
    store.save_responses(run.id, [(1, ok("a2"))])
    assert store.pending_verdicts(run.id, "string") == [("1", "a2")]
    with pytest.raises(StoreError, match="no response"):
        store.save_verdicts(run.id, "string", [(5, Verdict(True))])


def test_results_give_every_sample_and_its_verdict(store, samples):
    run = store.open_run("m/x", samples, SETTINGS)
    store.save_responses(run.id, [(1, ok("a")), (2, failed("boom"))])
    store.save_verdicts(run.id, "string", [(1, Verdict(True, "r"))])
    results = store.results(run.id, "string")
    assert [sample.id for sample, _ in results] == [str(s.id) for s in samples]
    assert results[0][1] == Verdict(True, "r")
    assert all(verdict is None for _, verdict in results[1:])
    first = results[0][0]
    assert (first.type, first.category, first.subcategory) == ("SSS", "hate", "race")


def test_export_jsonl_and_parquet(store, samples, tmp_path):
    run = store.open_run("m/x", samples, SETTINGS)
    store.save_responses(
        run.id, [(1, ok("a")), (2, failed("boom"))], extras={1: {"image_harm": "safe", "p": 0.9}}
    )
    store.save_verdicts(run.id, "string", [(1, Verdict(True, "no refusal phrase"))])
    store.save_verdicts(run.id, "llm:x", [(1, Verdict(None, "junk", "unparsable"))])
    lines = store.export_run(run.id, tmp_path / "out" / "run.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(samples)
    assert rows[0]["model"] == "m/x" and rows[0]["response"] == "a"
    assert rows[0]["extra"] == {"image_harm": "safe", "p": 0.9}
    assert rows[0]["verdicts"] == [
        {"judge": "llm:x", "followed": None, "raw": "junk", "error": "unparsable"},
        {"judge": "string", "followed": True, "raw": "no refusal phrase", "error": None},
    ]
    assert rows[1]["error"] == "boom" and rows[1]["verdicts"] == []
    assert rows[2]["response"] is None and rows[2]["latency_s"] is None
    table = pq.read_table(store.export_run(run.id, tmp_path / "run.parquet")).to_pylist()
    assert [r["sample_id"] for r in table] == [r["sample_id"] for r in rows]
    assert json.loads(table[0]["extra"]) == rows[0]["extra"]
    assert table[0]["verdicts"] == rows[0]["verdicts"]
    with pytest.raises(StoreError, match=r"\.jsonl or \.parquet"):
        store.export_run(run.id, tmp_path / "run.csv")


def test_reopen_keeps_everything(tmp_path, samples):
    path = tmp_path / "runs.db"
    with Store(path) as store:
        run = store.open_run("m/x", samples, SETTINGS)
        store.save_responses(run.id, [(1, ok("a"))])
    with Store(path, create=False) as store:
        assert store.open_run("m/x", samples, SETTINGS).id == run.id
        assert store.pending_samples(run.id, [1, 2]) == [2]
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_bad_store_files(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable holisafe store"):
        Store(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="not a holisafe store"):
        Store(other)
    newer = tmp_path / "newer.db"
    Store(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(newer)


# A writer that saves batches of 20 responses, as fast as it can, until it is killed.
WRITER = """
import sys
from holisafe.core.sample import ImageRef, Sample
from holisafe.core.records import Response
from holisafe.store import Store

samples = [Sample(id=i, query=f"q{i}", image=ImageRef(name=f"{i}.png", data=b"x"))
           for i in range(20000)]
store = Store(sys.argv[1])
run = store.open_run("m/x", samples, {})
todo = store.pending_samples(run.id, [s.id for s in samples])
print("ready", flush=True)
for start in range(0, len(todo), 20):
    store.save_responses(run.id, [(i, Response("x" * 2000)) for i in todo[start:start + 20]])
"""


def test_kill_9_mid_write_loses_at_most_the_batch_in_flight(tmp_path):
    path = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert writer.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
        while _count_responses(path) < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    with Store(path, create=False) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (run,) = store.runs()
        saved = store._db.execute("SELECT sample_id FROM responses").fetchall()
        ids = [int(row[0]) for row in saved]
        assert len(ids) >= 200 and len(ids) % 20 == 0  # whole batches only
        assert len(set(ids)) == len(ids)
        assert sorted(ids) == list(range(len(ids)))
        pending = store.pending_samples(run.id, range(20000))
        assert pending == list(range(len(ids), 20000))  # a rerun does exactly what is missing


def _count_responses(path: Path) -> int:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def filled_store(path: Path, samples) -> None:
    with Store(path) as store:
        run = store.open_run("m/x", samples, SETTINGS)
        store.save_responses(run.id, [(s.id, ok("x" * 3000)) for s in samples])


@pytest.mark.parametrize("page", [2, 5, -1])
def test_a_damaged_page_is_a_clear_error_not_a_traceback(tmp_path, samples, page):
    path = tmp_path / "runs.db"
    filled_store(path, samples)
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    start = (page if page > 0 else pages + page) * 4096 - 4096
    data[start : start + 4096] = random.Random(page).randbytes(4096)
    path.write_bytes(bytes(data))
    damaged = f"{path} (is damaged|is not a usable holisafe store)"
    with pytest.raises(StoreError, match=damaged):
        Store(path)
    result = subprocess.run(
        [sys.executable, "-m", "holisafe", "report", "--store", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.match(f"error: {damaged}", result.stderr)


def test_lone_surrogates_in_replies_are_stored_as_replacement_characters(store, samples):
    run = store.open_run("m/x", samples, SETTINGS)
    store.save_responses(run.id, [(1, ok("a\ud800b")), (2, failed("bad \udfff reply"))])
    store.save_verdicts(run.id, "j", [(1, Verdict(None, "raw \udc80", "err \ud9ff"))])
    (first, second, *_) = store.records(run.id)
    assert first.response.text == "a\ufffdb" and second.response.error == "bad \ufffd reply"
    assert first.verdicts["j"] == Verdict(None, "raw \ufffd", "err \ufffd")


def test_samples_that_are_not_valid_unicode_are_refused_by_name(store, samples):
    broken = [replace(samples[0], query="why\ud800?"), *samples[1:]]
    with pytest.raises(StoreError, match="sample 1: its query is not valid Unicode"):
        store.open_run("m/x", broken, SETTINGS)
    assert store.runs() == []
