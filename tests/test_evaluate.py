"""`holisafe eval` end to end: local tiny models, API faults on loopback, real process kills."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from holisafe.core.errors import DataError
from holisafe.core.records import Response
from holisafe.data import load_samples
from holisafe.models import GenerationSettings, ModelError, ModelOptions
from holisafe.run.evaluate import _answer, evaluate
from holisafe.store import Store, StoreError
from holisafe.synthetic.mini import generate_mini
from holisafe.synthetic.tiny import build_tiny_model
from tests.datafixtures import CASES, write_official
from tests.stub_servers import closed_port_url, openai_stub

SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def mini_bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    return generate_mini(root, seed=3, bench_pairs=95, train_pairs=95).bench_dir


def holisafe(*args, **popen):
    env = os.environ | {"OPENAI_API_KEY": "test-key"}
    return subprocess.Popen(
        [sys.executable, "-m", "holisafe", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **popen,
    )


def default_ctrl_c() -> None:
    """Run in the child before it starts: a background job (CI may run the suite as one) begins
    with SIGINT ignored, and a Python started that way never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finished(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def response_rows(store_path):
    with sqlite3.connect(store_path) as db:
        return db.execute("SELECT sample_id, text, error FROM responses").fetchall()


def wait_for_rows(store_path, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store_path.exists():
            try:
                if len(response_rows(store_path)) >= count:
                    return
            except sqlite3.OperationalError:
                pass  # the store is being created
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} responses after {timeout} s")


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "gemma3"])
def test_tiny_models_of_every_family_run_end_to_end(tmp_path, family):
    model_dir = build_tiny_model(tmp_path / family, family)
    bench = write_official(tmp_path / "bench")
    outcome = evaluate(
        f"hf/{model_dir}",
        bench,
        tmp_path / "runs.db",
        settings=SHORT,
        options=ModelOptions(device="cpu"),
    )
    assert outcome.generated == len(CASES)
    assert outcome.judged == {"string": len(CASES)}
    assert outcome.run.finished_at is not None
    again = evaluate(f"hf/{model_dir}", bench, tmp_path / "runs.db", settings=SHORT)
    assert (again.generated, again.judged) == (0, {"string": 0})  # nothing left to do


@pytest.mark.slow
def test_cli_eval_then_report(tmp_path, mini_bench):
    model_dir = build_tiny_model(tmp_path / "llava", "llava")
    store = tmp_path / "runs.db"
    code, out, err = finished(
        holisafe(
            "eval",
            "--model",
            f"hf/{model_dir}",
            "--bench",
            mini_bench,
            "--store",
            store,
            "--max-new-tokens",
            4,
            "--limit",
            30,
            "--device",
            "cpu",
        )
    )
    assert code == 0, err
    assert "run 1: 30 new responses, 30 new string verdicts" in out
    assert "| S_I S_T→S ↑ |" in out
    code, out, err = finished(holisafe("report", "--store", store, "--format", "json"))
    assert code == 0, err
    (entry,) = json.loads(out)
    figures = {"asr", "helpful_rate", "masr_type_mean", "masr_pooled", "rr", "by_category"}
    assert {"model", "judge", "n", *figures} <= set(entry)
    assert entry["model"] == f"hf/{model_dir}" and entry["judge"] == "string"
    assert entry["n"] == 30 and set(entry["asr"]) == {"SSU", "USU", "UUU", "SUU"}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_without_duplicates(tmp_path, mini_bench):
    store = tmp_path / "runs.db"
    # slow enough answers (95 take 10 s) that the run cannot finish before the kill lands
    with openai_stub(api_key=None, latency_s=0.2) as stub:
        command = (
            "eval",
            "--model",
            "openai/stub-model",
            "--base-url",
            stub.url,
            "--bench",
            mini_bench,
            "--store",
            store,
            "--concurrency",
            2,
            "--batch-size",
            4,
        )
        process = holisafe(*command)
        wait_for_rows(store, 12)
        process.kill()  # SIGKILL: no clean-up at all
        process.wait()
        before = response_rows(store)
        assert 12 <= len(before) < 95
        stub.latency_s = 0.0
        code, _, err = finished(holisafe(*command))
        assert code == 0, err
        after = response_rows(store)
        asked = len(stub.requests)
    ids = [row[0] for row in after]
    assert len(ids) == 95 and len(set(ids)) == 95
    assert all(text == "stub answer" and error is None for _, text, error in after)
    # the rerun asked only for what was missing (plus at most the batch lost in flight)
    assert asked <= 95 + 4


@pytest.mark.slow
def test_ctrl_c_mid_run_says_so_and_resumes(tmp_path, mini_bench):
    store = tmp_path / "runs.db"
    # slow enough answers (95 take 19 s) that the run cannot finish before the signal lands
    with openai_stub(api_key=None, latency_s=0.2) as stub:
        command = (
            "eval",
            "--model",
            "openai/stub-model",
            "--base-url",
            stub.url,
            "--bench",
            mini_bench,
            "--store",
            store,
            "--concurrency",
            1,
            "--batch-size",
            4,
        )
        process = holisafe(*command, preexec_fn=default_ctrl_c)
        wait_for_rows(store, 8)
        process.send_signal(signal.SIGINT)
        code, _, err = finished(process)
        assert code == 130
        assert "interrupted; completed work is kept" in err and "Traceback" not in err
        stub.latency_s = 0.0
        assert finished(holisafe(*command))[0] == 0
    assert len({row[0] for row in response_rows(store)}) == 95


@pytest.mark.parametrize(
    "fault",
    ["rate_limit", "server_error", "stall", "malformed", "null_message", "content_not_text"],
)
def test_api_faults_are_stored_as_errors_and_retried_on_resume(tmp_path, fault):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None, stall_s=5) as stub:
        options = ModelOptions(
            base_url=stub.url, api_key="k", concurrency=4, timeout_s=0.3, max_retries=1
        )
        stub.fail(fault)
        first = evaluate("openai/stub-model", bench, store, options=options)
        assert len(first.response_errors) == len(CASES)
        assert first.judged == {"string": 0}  # failed responses are never judged
        assert first.run.finished_at is None
        stub.recover()
        second = evaluate("openai/stub-model", bench, store, options=options)
    assert second.generated == len(CASES) and not second.response_errors
    assert second.run.finished_at is not None
    rows = response_rows(store)
    assert len(rows) == len(CASES) and all(error is None for *_, error in rows)


def test_odd_replies_are_kept_and_the_run_finishes(tmp_path):
    """Lone surrogates in a model's or a judge's reply, and a blank reply: nothing is lost,
    nothing is retried for ever."""

    def model_reply(body: dict) -> str:
        query = str(body["messages"][-1]["content"])
        if "number 1?" in query:
            return "a lone \ud800 surrogate"
        return "  " if "number 2?" in query else "I'm sorry, I can't help with that."

    judge_reply = "it refused \udfff\nVERDICT: FOLLOWED"
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(reply=model_reply) as model, openai_stub(reply=judge_reply) as judge:
        options = ModelOptions(base_url=model.url, api_key="stub-key", max_retries=0)
        outcome = evaluate(
            "openai/stub-model",
            bench,
            store,
            judges=["string", "openai/stub-model"],
            options=options,
            judge_options=ModelOptions(base_url=judge.url, api_key="stub-key", max_retries=0),
        )
    assert not outcome.response_errors and not any(outcome.verdict_errors.values())
    assert outcome.run.finished_at is not None
    texts = {row[0]: row[1] for row in response_rows(store)}
    assert texts["1"] == "a lone \ufffd surrogate" and texts["2"] == ""
    with Store(store) as opened:
        verdicts = [r.verdicts["openai/stub-model"] for r in opened.records(outcome.run.id)]
    assert all(v.followed and v.raw == "it refused \ufffd\nVERDICT: FOLLOWED" for v in verdicts)


def test_a_negative_limit_is_refused_not_read_as_all_but_the_last(tmp_path):
    bench = write_official(tmp_path / "bench")
    with pytest.raises(DataError, match="limit must be 0 or more, got -3"):
        evaluate("openai/x", bench, tmp_path / "runs.db", limit=-3)


def test_an_unreachable_endpoint_is_one_clear_line(tmp_path):
    bench = write_official(tmp_path / "bench")
    code, _, err = finished(
        holisafe(
            "eval",
            "--model",
            "openai/x",
            "--base-url",
            closed_port_url(),
            "--bench",
            bench,
            "--store",
            tmp_path / "runs.db",
            "--max-retries",
            0,
        )
    )
    assert code == 2
    last = err.strip().splitlines()[-1]  # after the progress lines of a redirected stderr
    assert last.startswith("error: ") and "cannot reach" in last and "Traceback" not in err


def test_a_sample_whose_image_breaks_after_loading_gets_an_error_response(tmp_path):
    bench = write_official(tmp_path / "bench")
    samples = load_samples(bench).samples[:3]
    samples[1].image.path.unlink()

    class Echo:
        spec = "test/echo"

        def generate(self, requests, settings):
            return [Response(text=r.query) for r in requests]

    responses = _answer(Echo(), samples, SHORT)
    assert [r.text for r in responses] == [samples[0].query, None, samples[2].query]
    assert "image file not found" in responses[1].error


def test_mixing_another_model_into_a_run_is_refused(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as stub:
        options = ModelOptions(base_url=stub.url, api_key="k")
        run = evaluate("openai/stub-model", bench, store, options=options).run
        with pytest.raises(StoreError, match=f"run {run.id} was made with model"):
            evaluate("openai/other", bench, store, options=options, run_id=run.id)
    with Store(store) as opened:
        assert opened.runs()[0].bench_source == str(bench.resolve())


def test_a_bad_model_spec_is_refused_before_any_work(tmp_path):
    with pytest.raises(ModelError, match="provider/name"):
        evaluate("gpt-4o", write_official(tmp_path / "b"), tmp_path / "runs.db")


def test_raising_the_limit_reuses_what_was_answered(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as stub:
        options = ModelOptions(base_url=stub.url, api_key="k")
        first = evaluate("openai/stub-model", bench, store, options=options, limit=2)
        asked = len(stub.requests)
        second = evaluate("openai/stub-model", bench, store, options=options, limit=4)
        assert len(stub.requests) - asked == 2
    assert first.run.id != second.run.id
    assert (second.generated, second.reused, second.judged) == (2, 2, {"string": 2})
    with Store(store) as opened:
        answered = [r for r in opened.records(second.run.id) if r.response is not None]
        assert len(answered) == 4 and all("string" in r.verdicts for r in answered)


def test_a_bench_left_empty_by_skip_invalid_says_why(tmp_path):
    bench = write_official(tmp_path / "bench")
    for image in (bench / "images").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"no valid samples to evaluate \(\d+ skipped; the first"):
        evaluate("openai/stub-model", bench, tmp_path / "runs.db", skip_invalid=True)


def test_eval_passes_its_api_key(tmp_path):
    bench = write_official(tmp_path / "bench")
    with openai_stub(api_key="secret") as stub:
        args = ["eval", "--model", "openai/stub-model", "--base-url", stub.url]
        args += ["--api-key", "secret", "--bench", bench, "--store", tmp_path / "runs.db"]
        code, out, err = finished(holisafe(*args))
    assert code == 0, err
    assert f"{len(CASES)} new responses" in out
