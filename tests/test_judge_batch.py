"""LLM judges through the providers' batch APIs, against a loopback batch server."""

import json
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from holisafe.judges import JudgeError, LLMJudge
from holisafe.models import ModelOptions
from holisafe.run import judge_batch as batch_module
from holisafe.run.evaluate import evaluate, judge_stored
from holisafe.run.judge_batch import check_batchable
from holisafe.store import Store, connect
from tests.batch_stub import batch_stub
from tests.datafixtures import write_official
from tests.stub_servers import openai_stub

JUDGE = "openai/judge-model"


def judge_reply(body):
    """FOLLOWED for every request but sample 3's, which the batch refuses."""
    return None if "question number 3?" in json.dumps(body) else "Fine.\nVERDICT: FOLLOWED"


def run_eval(bench, store, answers, batches, **extra):
    return evaluate(
        "openai/stub-model",
        bench,
        store,
        judges=["string", JUDGE],
        options=ModelOptions(base_url=answers.url, api_key="k"),
        judge_options=ModelOptions(base_url=batches.url, api_key="k"),
        judge_batch=True,
        batch_poll_s=0.01,
        **extra,
    )


def test_verdicts_come_back_from_one_batch_and_failures_go_in_the_next(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        first = run_eval(bench, store, answers, batches)
        (batch,) = batches.batches.values()
        lines = batches.files[batch["input_file_id"]].decode().splitlines()
        second = run_eval(bench, store, answers, batches)
        retried = list(batches.batches.values())[1]
        retried_lines = batches.files[retried["input_file_id"]].decode().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["url"] == "/v1/chat/completions"
    assert json.loads(lines[0])["body"]["model"] == "judge-model"
    assert first.judged == {"string": 7, JUDGE: 7}
    assert first.verdict_errors[JUDGE] == [("3", "judge model failed: batch: stub refused "
                                             "this request")]  # fmt: skip
    assert [json.loads(line)["custom_id"] for line in retried_lines] == ["3"]
    assert second.judged[JUDGE] == 1
    with Store(store) as opened:
        verdicts = [v for _, v in opened.results(1, JUDGE)]
    assert sum(v is not None and v.followed is True for v in verdicts) == 6


def test_a_stopped_wait_collects_the_same_batch_when_run_again(tmp_path, monkeypatch):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"

    class Stop(Exception):
        pass

    def stop(seconds):
        raise Stop  # as Ctrl-C while the batch runs

    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        with monkeypatch.context() as patch:
            patch.setattr(batch_module.time, "sleep", stop)
            with pytest.raises(Stop):
                run_eval(bench, store, answers, batches)
        assert len(batches.batches) == 1
        outcome = run_eval(bench, store, answers, batches)
        assert len(batches.batches) == 1  # collected, not sent again
    assert outcome.judged[JUDGE] == 7


def test_a_judge_without_a_batch_api_is_refused():
    class LocalModel:  # a local model: no provider, no batch API
        spec = "hf/some-vlm"

        def generate(self, requests, settings):
            raise AssertionError("not asked")

    with pytest.raises(JudgeError, match="'hf/some-vlm' cannot use a batch API"):
        check_batchable(LLMJudge(LocalModel()))


@pytest.mark.parametrize("judge", [JUDGE, "anthropic/judge-model", "google/judge-model"])
def test_a_refused_batch_stops_with_a_clear_message_and_a_rerun_sends_it(tmp_path, judge):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        evaluate("openai/stub-model", bench, store, options=ModelOptions(base_url=answers.url))
        url = batches.url if judge == JUDGE else batches.url.removesuffix("/v1")
        options = ModelOptions(base_url=url, api_key="k", max_retries=0)
        batches.refuse_batches = True
        refused = rf"^{judge}: the batch API failed: request rejected \(400\): stub refuses"
        with pytest.raises(JudgeError, match=refused + " batches; .* run the same command"):
            judge_stored(store, [judge], options=options, judge_batch=True, batch_poll_s=0.01)
        batches.refuse_batches = False
        (outcome,) = judge_stored(
            store, [judge], options=options, judge_batch=True, batch_poll_s=0.01
        )
        assert len(batches.batches) == 1
    assert outcome.judged == {judge: 7}


def test_judging_a_stored_run_can_go_through_a_batch(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        evaluate("openai/stub-model", bench, store, options=ModelOptions(base_url=answers.url))
        (outcome,) = judge_stored(
            store,
            [JUDGE],
            options=ModelOptions(base_url=batches.url, api_key="k"),
            judge_batch=True,
            batch_poll_s=0.01,
        )
        assert len(batches.batches) == 1
    assert outcome.judged == {JUDGE: 7} and len(outcome.verdict_errors[JUDGE]) == 1


def evaluate_with_batch_judge(tmp_path, judge, answers, batches):
    """Answer the official fixture with the stub model and judge it with `judge` in batches
    sent to the batch stub at its provider's root URL."""
    return evaluate(
        "openai/stub-model", write_official(tmp_path / "bench"), tmp_path / "runs.db",
        judges=[judge],
        options=ModelOptions(base_url=answers.url, api_key="k"),
        judge_options=ModelOptions(base_url=batches.url.removesuffix("/v1"), api_key="k"),
        judge_batch=True, batch_poll_s=0.01,
    )  # fmt: skip


def test_an_anthropic_judge_goes_through_message_batches(tmp_path):
    judge = "anthropic/judge-model"
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        outcome = evaluate_with_batch_judge(tmp_path, judge, answers, batches)
        assert list(batches.batches) == ["msgbatch_1"]
    assert outcome.judged == {judge: 7}
    assert outcome.verdict_errors[judge] == [("3", "judge model failed: batch: stub refused "
                                              "this request")]  # fmt: skip


def test_requests_past_a_providers_limit_go_in_several_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_module._OpenAIBatches, "max_requests", 3)
    bench = write_official(tmp_path / "bench")
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        outcome = run_eval(bench, tmp_path / "runs.db", answers, batches)
        sizes = [
            len(batches.files[b["input_file_id"]].decode().splitlines())
            for b in batches.batches.values()
        ]
    assert sizes == [3, 3, 1]
    assert outcome.judged[JUDGE] == 7 and len(outcome.verdict_errors[JUDGE]) == 1


def test_a_google_judge_goes_through_gemini_batch_mode(tmp_path):
    judge = "google/judge-model"
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        outcome = evaluate_with_batch_judge(tmp_path, judge, answers, batches)
        (batch,) = batches.batches.values()
        lines = [json.loads(line) for line in batches.files[batch["inputConfig"]["fileName"]]
                 .decode().splitlines()]  # fmt: skip
    assert batch["model"] == "models/judge-model" and len(lines) == 7
    request = lines[0]["request"]
    assert lines[0]["key"] == "1" and request["contents"][0]["role"] == "user"
    assert [sorted(part) for part in request["contents"][0]["parts"]] == [["inlineData"], ["text"]]
    assert request["generationConfig"] == {"maxOutputTokens": 512, "temperature": 0.0}
    assert outcome.judged == {judge: 7}
    assert outcome.verdict_errors[judge] == [("3", "judge model failed: batch: stub refused "
                                              "this request")]  # fmt: skip
    with Store(tmp_path / "runs.db") as opened:
        verdicts = [v for _, v in opened.results(1, judge)]
    assert sum(v is not None and v.followed is True for v in verdicts) == 6


JUDGE_PROCESS = """
import pathlib, sys, time
from holisafe.run.evaluate import judge_stored
from holisafe.models import ModelOptions
judge, store, url, gate, name = sys.argv[1:]
pathlib.Path(gate, name).touch()
while len(list(pathlib.Path(gate).iterdir())) < 2:  # start together
    time.sleep(0.005)
options = ModelOptions(base_url=url, api_key="k")
(outcome,) = judge_stored(store, [judge], options=options, judge_batch=True, batch_poll_s=0.01)
print(outcome.judged[judge])
"""


@pytest.mark.slow
def test_two_processes_on_one_store_share_one_batch(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    gate = tmp_path / "gate"
    gate.mkdir()
    # the batch takes 0.3 s to create, so the second judge arrives while the first submits
    with (
        openai_stub(api_key=None) as answers,
        batch_stub(reply=judge_reply, polls_before_done=5, create_latency_s=0.3) as batches,
    ):
        evaluate("openai/stub-model", bench, store, options=ModelOptions(base_url=answers.url))
        arguments = [JUDGE, str(store), batches.url, str(gate)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", JUDGE_PROCESS, *arguments, name],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        ]
        results = [process.communicate(timeout=120) for process in processes]
        created = list(batches.batches.values())
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
    assert len(created) == 1
    stored = sorted(int(out) for out, _ in results)
    assert stored == [0, 7]  # one process kept the batch; the other waited for its verdicts
    with Store(store) as opened:
        assert sum(v is not None for _, v in opened.results(1, JUDGE)) == 7
        assert opened.verdict_errors(1, JUDGE) == [("3", "judge model failed: batch: stub "
                                                     "refused this request")]  # fmt: skip
    with closing(sqlite3.connect(store)) as db:
        assert db.execute("SELECT * FROM judge_batch_keepers").fetchall() == []  # both let go


@pytest.mark.parametrize("holder", ["dead", "expired"])
def test_a_keeper_that_died_or_lapsed_does_not_hold_the_batches(tmp_path, holder):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    if holder == "dead":  # a process of this machine that no longer exists; lease still valid
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        worker, expires_at = f"{socket.gethostname()}/{child.pid}/ab", time.time() + 600
    else:  # another machine's process, which cannot be checked: its lease has run out
        worker, expires_at = "elsewhere/1/ab", time.time() - 1
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        evaluate("openai/stub-model", bench, store, options=ModelOptions(base_url=answers.url))
        with closing(sqlite3.connect(store)) as db, db:
            db.execute(
                "INSERT INTO judge_batch_keepers VALUES (1, ?, ?, ?)", (JUDGE, worker, expires_at)
            )
        (outcome,) = judge_stored(
            store, [JUDGE], options=ModelOptions(base_url=batches.url, api_key="k"),
            judge_batch=True, batch_poll_s=0.01,
        )  # fmt: skip
        assert len(batches.batches) == 1
    assert outcome.judged == {JUDGE: 7}


def test_a_keeper_whose_lease_ran_out_stops_before_sending_more(tmp_path):
    store = tmp_path / "runs.db"
    with (
        closing(sqlite3.connect(store, isolation_level=None)) as first_db,
        closing(sqlite3.connect(store, isolation_level=None)) as second_db,
    ):
        connect(store).close()  # the store's tables
        first = batch_module._Keeper(first_db, 1, JUDGE, lease_s=0.05)
        second = batch_module._Keeper(second_db, 1, JUDGE, lease_s=60)
        assert first.take() and not second.take()  # held, and its process lives
        time.sleep(0.1)  # as if the first process was suspended past its lease
        assert second.take()
        with pytest.raises(JudgeError, match="another process took over"):
            first.renew()
        assert not first.take()
