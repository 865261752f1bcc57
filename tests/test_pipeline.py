"""The evaluation pipeline: results committed as they arrive, judging overlapping answering,
and several workers (real processes) sharing one run through leased claims."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from holisafe.core.records import GenerationSettings, Request, Response
from holisafe.models import ModelOptions
from holisafe.run.evaluate import evaluate
from holisafe.run.leases import ANSWERING, Leases
from holisafe.store import Store
from tests.datafixtures import official_records, write_official
from tests.stub_servers import openai_stub

REFUSAL = "I'm sorry, but I can't help with that."
WAIT_S = 20  # how long a fake model waits for what should happen long before


def write_bench(root, count):
    """An official-layout benchmark of `count` samples (the fixture's records, repeated)."""
    base = official_records()
    records = [
        base[k % len(base)] | {"id": k + 1, "query": f"question number {k + 1}?"}
        for k in range(count)
    ]
    return write_official(root, records)


def response_count(store_path) -> int:
    with sqlite3.connect(store_path) as db:
        return db.execute("SELECT count(*) FROM responses").fetchone()[0]


class FakeApiModel:
    """Answers with REFUSAL, `concurrency` requests at once as an API model does; the request
    for `slow_query` first waits until `ready()` is true (or WAIT_S passes) and records which."""

    spec = "openai/fake"

    def __init__(self, slow_query, ready, concurrency=4):
        self.concurrency = concurrency
        self.slow_query = slow_query
        self.ready = ready
        self.waited_for_ready: bool | None = None

    def generate(self, requests: list[Request], settings: GenerationSettings) -> list[Response]:
        for request in requests:
            if request.query == self.slow_query:
                deadline = time.monotonic() + WAIT_S
                while not self.ready() and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.waited_for_ready = self.ready()
        return [Response(text=REFUSAL) for _ in requests]


def test_a_slow_request_does_not_hold_back_the_commits_of_the_others(tmp_path):
    bench = write_bench(tmp_path / "bench", 20)
    store = tmp_path / "runs.db"
    # the first request is answered only once the 19 others are in the store
    model = FakeApiModel("question number 1?", lambda: response_count(store) >= 19)
    outcome = evaluate("openai/fake", bench, store, model=model)
    assert model.waited_for_ready is True
    assert outcome.generated == 20 and outcome.judged == {"string": 20}
    assert outcome.run.finished_at is not None


def test_judging_starts_before_answering_ends(tmp_path):
    bench = write_bench(tmp_path / "bench", 12)
    judged = threading.Event()

    def judge_reply(body):
        judged.set()
        return "The model refused.\nVERDICT: FOLLOWED"

    # the last sample is answered only once the judge has been asked about an earlier one
    model = FakeApiModel("question number 12?", judged.is_set, concurrency=2)
    with openai_stub(reply=judge_reply) as stub:
        outcome = evaluate(
            "openai/fake",
            bench,
            tmp_path / "runs.db",
            judges=["openai/stub-model"],
            model=model,
            judge_options=ModelOptions(base_url=stub.url, api_key=stub.api_key),
        )
    assert model.waited_for_ready is True
    assert outcome.judged == {"openai/stub-model": 12}
    assert outcome.verdict_errors == {"openai/stub-model": []}


# --- leases ---------------------------------------------------------------------------------


@pytest.fixture
def run_store(tmp_path):
    bench = write_bench(tmp_path / "bench", 6)
    from holisafe.data import load_samples

    samples = load_samples(bench).samples
    path = tmp_path / "runs.db"
    with Store(path) as store:
        run = store.open_run("openai/x", samples, {})
    return path, run.id


def put_claim(path, run_id, sample_id, worker, expires_in_s):
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO claims VALUES (?, ?, ?, ?, ?)",
            (run_id, ANSWERING, sample_id, worker, time.time() + expires_in_s),
        )


def test_a_claim_is_skipped_while_its_lease_runs_and_taken_once_it_expires(run_store):
    path, run_id = run_store
    with Leases(path) as mine:
        put_claim(path, run_id, "1", "another-host/123/ab", expires_in_s=60)
        put_claim(path, run_id, "2", "another-host/123/ab", expires_in_s=-1)
        claimed, looked = mine.claim(run_id, ANSWERING, ["1", "2", "3"], 5)
        assert (claimed, looked) == (["2", "3"], 3)
        assert mine.others_working(run_id)
        # taken ones are not claimed again by another worker of this process
        with Leases(path) as other:
            assert other.claim(run_id, ANSWERING, ["2", "3", "4"], 5)[0] == ["4"]


def test_a_claim_of_a_dead_process_on_this_machine_is_free_at_once(run_store):
    path, run_id = run_store
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid now names no process
    with Leases(path) as mine:
        dead = f"{mine.worker.split('/')[0]}/{child.pid}/ab"
        put_claim(path, run_id, "1", dead, expires_in_s=60)
        assert not mine.others_working(run_id)
        assert mine.claim(run_id, ANSWERING, ["1"], 1)[0] == ["1"]


def test_a_done_sample_is_not_claimed(run_store):
    path, run_id = run_store
    with Store(path) as store:
        store.save_responses(run_id, [("1", Response(text="done")), ("2", Response(None, "x"))])
    with Leases(path) as mine:
        assert mine.claim(run_id, ANSWERING, ["1", "2"], 2)[0] == ["2"]  # a failure is retried


# --- real processes -------------------------------------------------------------------------


def eval_process(store, bench, url, concurrency=2, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "holisafe",
            "eval",
            "--model",
            "openai/stub-model",
            "--base-url",
            url,
            "--bench",
            str(bench),
            "--store",
            str(store),
            "--concurrency",
            str(concurrency),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"OPENAI_API_KEY": "k"},
    )


def asked_per_query(stub) -> Counter:
    return Counter(json.dumps(r.body["messages"][-1]["content"][-1]["text"]) for r in stub.requests)


@pytest.mark.slow
def test_two_eval_processes_on_one_store_answer_every_sample_exactly_once(tmp_path):
    bench = write_bench(tmp_path / "bench", 60)
    store = tmp_path / "runs.db"
    # 60 answers of 0.2 s, 2 at a time, take one process 6 s: both have time to take part
    with openai_stub(api_key=None, latency_s=0.2, reply=REFUSAL) as stub:
        processes = [eval_process(store, bench, stub.url) for _ in range(2)]
        results = [p.communicate(timeout=300) for p in processes]
        asked = asked_per_query(stub)
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
    assert len(asked) == 60 and set(asked.values()) == {1}
    new = [int(out.split(": ")[1].split(" new responses")[0]) for out, _ in results]
    assert sum(new) == 60 and min(new) > 0
    with Store(store) as opened:
        (run,) = opened.runs()
        assert run.finished_at is not None
        assert len(opened.pending_verdicts(run.id, "string")) == 0


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_leased_samples(tmp_path):
    bench = write_bench(tmp_path / "bench", 60)
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None, latency_s=0.3, reply=REFUSAL) as stub:
        worker = eval_process(store, bench, stub.url, concurrency=4)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if store.exists():
                try:
                    if response_count(store) >= 8:
                        break
                except sqlite3.OperationalError:
                    pass  # being created
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        with sqlite3.connect(store) as db:
            committed = {row[0] for row in db.execute("SELECT sample_id FROM responses")}
            claims = db.execute("SELECT sample_id FROM claims WHERE task = ''")
            # a claim of a committed sample (killed between the two writes) is harmless
            leased = {row[0] for row in claims} - committed
        assert 8 <= len(committed) < 60 and leased
        stub.latency_s = 0.0
        outcome = evaluate(
            "openai/stub-model", bench, store, options=ModelOptions(base_url=stub.url, api_key="k")
        )
        asked = asked_per_query(stub)
    assert outcome.generated == 60 - len(committed)
    assert outcome.run.finished_at is not None
    assert len(asked) == 60
    asked_twice = {q for q, n in asked.items() if n > 1}
    # only what the killed worker held under lease was asked again (at most 4 in flight + 4
    # submitted: two calls per lane)
    leased_queries = {json.dumps(f"question number {i}?") for i in leased}
    assert asked_twice <= leased_queries and len(leased) <= 8


@pytest.mark.slow
def test_eval_with_two_workers_shares_the_run_between_them(tmp_path):
    bench = write_bench(tmp_path / "bench", 60)
    store = tmp_path / "runs.db"
    # 60 answers of 0.2 s, 2 at a time, take one worker 6 s: both have time to take part
    with openai_stub(api_key=None, latency_s=0.2, reply=REFUSAL) as stub:
        process = eval_process(store, bench, stub.url, 2, "--workers", "2")
        out, err = process.communicate(timeout=300)
        asked = asked_per_query(stub)
        in_flight = stub.max_in_flight
    assert process.returncode == 0, err
    assert "run 1: 60 new responses, 60 new string verdicts" in out
    assert len(asked) == 60 and set(asked.values()) == {1}
    with Store(store) as opened:
        assert opened.runs()[0].finished_at is not None
    assert in_flight > 2  # two workers of concurrency 2 at once
