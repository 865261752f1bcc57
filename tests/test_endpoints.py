"""Many endpoints of one model: spread, taken out and probed back, nothing lost or asked twice."""

from __future__ import annotations

import signal
import sqlite3

import pytest
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core.records import GenerationSettings, ModelError, Request
from holisafe.models import ModelOptions
from holisafe.models.endpoints import (
    Endpoint,
    EndpointFault,
    EndpointPool,
    read_endpoints_file,
    summary,
)
from holisafe.models.openai_api import OpenAIModel
from holisafe.run.evaluate import evaluate
from tests.datafixtures import official_records, write_official
from tests.stub_servers import closed_port_url, openai_stub, openai_stub_process

SAMPLES = 48


def bench_of(root, count: int = SAMPLES):
    template = official_records()
    records = [
        template[i % len(template)]
        | {"id": i + 1, "query": f"question number {i + 1}?", "image": f"img_{i % 6}.png"}
        for i in range(count)
    ]
    return write_official(root, records)


def stored_answers(store) -> list[tuple[str, str | None]]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT sample_id, text FROM responses WHERE error IS NULL").fetchall()


def test_three_endpoints_one_killed_mid_run_one_slow_answer_every_sample_once(tmp_path):
    bench = bench_of(tmp_path / "bench")
    store = tmp_path / "runs.db"
    queries = [f"question number {i + 1}?" for i in range(SAMPLES)]
    with (
        openai_stub_process(tmp_path / "fast.log", latency_s=0.02) as fast,
        openai_stub_process(tmp_path / "slow.log", latency_s=0.25) as slow,
        openai_stub_process(tmp_path / "dying.log", latency_s=0.05, die_after=8) as dying,
    ):
        options = ModelOptions(
            base_url=(fast.url, slow.url, Endpoint(dying.url, concurrency=3)),
            api_key="k",
            concurrency=2,
            max_retries=1,
        )
        first = evaluate("openai/stub-model", bench, store, options=options)
        assert dying.process.wait(timeout=5) == -signal.SIGKILL  # it really died
        served = fast.served() + slow.served() + dying.served()
        second = evaluate("openai/stub-model", bench, store, options=options)
        served_again = fast.served() + slow.served()
    # every sample answered by exactly one server, as the servers' own logs count them
    assert sorted(served) == sorted(queries)
    assert 0 < len(dying.served()) <= 8  # the 9th request (at least) died in flight
    assert slow.served() and fast.served()
    assert first.generated == SAMPLES and not first.response_errors
    assert first.run.finished_at is not None
    assert len(stored_answers(store)) == SAMPLES
    # the rerun asks nothing
    assert second.generated == 0 and served_again == fast.served() + slow.served()
    assert len(served_again) + len(dying.served()) == SAMPLES


def test_an_endpoint_taken_out_is_probed_and_comes_back():
    with openai_stub(latency_s=0.02) as steady, openai_stub(latency_s=0.02) as flaky:
        flaky.fail("server_error", times=3)
        model = OpenAIModel(
            "stub-model",
            base_url=[steady.url, flaky.url],
            api_key=steady.api_key,
            concurrency=1,
            max_retries=0,
        )
        model.pool.probe_s = 0.1
        requests = [Request(query=f"q{i}") for i in range(60)]
        responses = model.generate(requests, GenerationSettings())
        steady_state, flaky_state = model.pool.states()
    assert all(response.text == "stub answer" for response in responses)
    assert flaky_state.outages == 1  # three server errors in a row took it out
    assert flaky_state.in_rotation and flaky_state.answered > 0  # a probe brought it back
    assert steady_state.answered + flaky_state.answered == 60
    assert len(flaky.requests) == 3 + flaky_state.answered


def test_a_lone_endpoint_that_cannot_be_reached_stops_with_its_own_error():
    url = closed_port_url()
    model = OpenAIModel("stub-model", base_url=url, api_key="k", max_retries=0)
    with pytest.raises(ModelError, match=f"openai: cannot reach {url}"):
        model.generate([Request(query="q")], GenerationSettings())


def test_when_every_endpoint_is_down_the_run_stops_naming_them():
    urls = [closed_port_url(), closed_port_url()]
    model = OpenAIModel("stub-model", base_url=urls, api_key="k", max_retries=0)
    with pytest.raises(ModelError, match="none of the 2 endpoints can be reached"):
        model.generate([Request(query="q")], GenerationSettings())


def test_a_request_every_endpoint_failed_is_that_requests_error_and_the_last_stays_in():
    def timed_out(sender: str) -> str:
        raise EndpointFault(RuntimeError(f"{sender} timed out"), down=False)

    pool = EndpointPool([("a", "a", 1), ("b", "b", 1)], strikes=1)
    with pytest.raises(EndpointFault, match="timed out"):
        pool.send(timed_out)
    states = pool.states()
    assert [s.in_rotation for s in states].count(True) == 1  # the last one is never taken out
    assert pool.send(lambda sender: f"answer from {sender}").startswith("answer from")


def test_progress_shows_each_endpoints_rate_or_out():
    pool = EndpointPool([("http://127.0.0.1:1/v1", 1, 1), ("http://127.0.0.1:2/v1", 2, 1)])
    for _ in range(3):
        pool.send(lambda sender: sender)
    pool._members[1].in_rotation = False
    line = summary(pool.states())
    assert line.startswith("127.0.0.1:1 ") and line.endswith("/s, 127.0.0.1:2 out")


def test_an_endpoints_file_gives_urls_and_concurrency(tmp_path):
    listed = tmp_path / "endpoints.txt"
    listed.write_text(
        "# vLLM servers\nhttp://gpu1:8000/v1 concurrency=16\n\n  http://gpu2:8000/v1\n"
    )
    assert read_endpoints_file(listed) == (
        Endpoint("http://gpu1:8000/v1", 16),
        Endpoint("http://gpu2:8000/v1"),
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("gpu1:8000/v1", "'gpu1:8000/v1' is not an http:// or https:// URL"),
        ("http://gpu1:8000/v1 concurrency=0", "'concurrency=0' is not concurrency=N"),
        ("http://gpu1:8000/v1 workers=4", "'workers=4' is not concurrency=N"),
    ],
)
def test_a_bad_endpoints_line_is_named_by_file_and_line(tmp_path, line, problem):
    listed = tmp_path / "endpoints.txt"
    listed.write_text(f"http://gpu0:8000/v1\n{line}\n")
    with pytest.raises(ModelError) as raised:
        read_endpoints_file(listed)
    assert str(raised.value).startswith(f"endpoints file {listed}, line 2: {problem}")


def test_an_empty_or_missing_endpoints_file_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ModelError, match="no endpoints in it"):
        read_endpoints_file(empty)
    with pytest.raises(ModelError, match="cannot read it"):
        read_endpoints_file(tmp_path / "missing.txt")
    with pytest.raises(ModelError, match="not a regular file"):
        read_endpoints_file(tmp_path)


def test_eval_with_a_bad_endpoints_file_says_where_in_one_line(tmp_path):
    listed = tmp_path / "endpoints.txt"
    listed.write_text("http://gpu0:8000/v1 concurrency=many\n")
    result = CliRunner().invoke(
        app,
        [
            *("eval", "--model", "openai/m", "--bench", str(tmp_path)),
            *("--store", str(tmp_path / "s"), "--endpoints", str(listed)),
        ],
    )
    assert isinstance(result.exception, ModelError)
    assert f"endpoints file {listed}, line 1: 'concurrency=many'" in str(result.exception)


def test_repeated_base_urls_and_a_file_add_up(monkeypatch, tmp_path):
    seen = {}

    def evaluate(**arguments):
        seen["model"] = arguments["options"].base_url
        seen["judge"] = arguments["judge_options"].base_url
        raise SystemExit(0)

    monkeypatch.setattr("holisafe.run.evaluate.evaluate", evaluate)
    listed = tmp_path / "endpoints.txt"
    listed.write_text("http://c:1/v1 concurrency=4\n")
    CliRunner().invoke(
        app,
        [
            *("eval", "--model", "openai/m", "--bench", "b", "--store", "s"),
            *("--base-url", "http://a:1/v1", "--base-url", "http://b:1/v1"),
            *("--endpoints", str(listed), "--judge-base-url", "http://j:1/v1"),
        ],
    )
    assert seen["model"] == (
        Endpoint("http://a:1/v1"),
        Endpoint("http://b:1/v1"),
        Endpoint("http://c:1/v1", 4),
    )
    assert seen["judge"] == (Endpoint("http://j:1/v1"),)
