"""LLM judges through OpenAI's Batch API, against a loopback Batch API server."""

import json

import pytest

from holisafe.evaluate import evaluate, judge_stored
from holisafe.judges import JudgeError
from holisafe.judges import batch as batch_module
from holisafe.models import ModelOptions
from holisafe.store import Store
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


def test_a_judge_without_a_batch_api_is_refused(tmp_path):
    bench = write_official(tmp_path / "bench")
    with openai_stub(api_key=None) as answers, pytest.raises(JudgeError, match="batch API"):
        evaluate(
            "openai/stub-model", bench, tmp_path / "runs.db",
            judges=["google/gemini-x"],
            options=ModelOptions(base_url=answers.url, api_key="k"),
            judge_options=ModelOptions(api_key="k"),
            judge_batch=True,
        )  # fmt: skip


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


def test_an_anthropic_judge_goes_through_message_batches(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    judge = "anthropic/judge-model"
    with openai_stub(api_key=None) as answers, batch_stub(reply=judge_reply) as batches:
        outcome = evaluate(
            "openai/stub-model", bench, store,
            judges=[judge],
            options=ModelOptions(base_url=answers.url, api_key="k"),
            judge_options=ModelOptions(base_url=batches.url.removesuffix("/v1"), api_key="k"),
            judge_batch=True, batch_poll_s=0.01,
        )  # fmt: skip
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
