"""`holisafe serve --audit`: served requests recorded as an audit run, kept through kill -9,
scored by `holisafe report --run audit` and judged by `holisafe judge --run audit`."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from holisafe.cli import app as cli_app
from holisafe.core.errors import HolisafeError
from holisafe.core.records import Response
from holisafe.models.hf import HFModel
from holisafe.report.audit import audit_report, render_audit
from holisafe.serve import AuditSettings, ServeSettings, create_app, running_server
from holisafe.serve import audit as audit_module
from holisafe.serve.audit import ANONYMOUS, AuditWriter, Served, client_id
from holisafe.store import AuditEntry, Store
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder
from tests.modelfixtures import no_network, picture

NAME = "safe"
GREEDY = {"max_tokens": 6, "temperature": 0}
KEY = "sk-audit-secret-7f3a9c"
DAY_S = 86_400


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    with no_network():
        build_tiny_model(root / "plain", "llava", seed=3)
        convert_folder(str(root / "plain"), str(root / NAME), VGMSettings())
    return root / NAME


@pytest.fixture(scope="module")
def model(model_dir):
    return HFModel(f"hf/{model_dir}", device="cpu", batch_size=8)


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    picture(48, 40, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def user(text: str, image: bytes | None = None) -> list[dict]:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url(image)}})
    return [{"role": "user", "content": content}]


def wait_written(root: str, count: int, timeout_s: float = 60) -> None:
    """Until /health says the audit has committed `count` records."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{root}/health").json()["audit"]["written"] >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the audit did not write {count} records in {timeout_s} s")


def audited(store: Path) -> list:
    with Store(store, create=False) as opened:
        return opened.records(opened.run_id("audit"))


def serve(model, store: Path, **settings):
    audit = AuditSettings(store, **settings)
    return running_server(create_app(model, ServeSettings(audit=audit, api_key=KEY)))


def test_a_served_run_audited_under_kill_9_keeps_every_flushed_reply_and_reports(
    model_dir, tmp_path
):
    store, port = tmp_path / "audit.sqlite", _free_port()
    command = [
        sys.executable,
        "-m",
        "holisafe",
        "serve",
        "--model",
        f"hf/{model_dir}",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--audit",
        str(store),
        "--log-level",
        "info",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    server = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    try:
        root = f"http://127.0.0.1:{port}"
        _wait_up(root, server)
        client = openai.OpenAI(base_url=f"{root}/v1", api_key=KEY, max_retries=0)
        queries = [f"What is in picture {i}?" for i in range(5)]
        replies = [
            client.chat.completions.create(
                model=NAME, messages=user(q, png((40 * i, 90, 160))), **GREEDY
            )
            .choices[0]
            .message.content
            for i, q in enumerate(queries)
        ]
        wait_written(root, len(queries))
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        server.kill()
    startup = server.stderr.read().decode()
    assert "a crash loses at most the last second's requests" in startup
    records = audited(store)
    assert sorted(r.sample.query for r in records) == sorted(queries)
    assert sorted(r.response.text for r in records) == sorted(replies)
    result = CliRunner().invoke(
        cli_app, ["report", "--store", str(store), "--run", "audit", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    total = report["total"]
    assert (total["requests"], total["chat"], total["scored"]) == (5, 5, 5)
    flagged = sum(r.extra["safety"]["label"] != "safe" for r in records)
    assert total["unsafe"] == flagged == sum(report["by_category"].values())
    assert sum(day["requests"] for day in report["by_day"].values()) == 5


def test_every_endpoint_is_recorded_with_hash_scores_client_and_latency(model, tmp_path):
    store, image = tmp_path / "audit.sqlite", png((200, 30, 30))
    with serve(model, store) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key=KEY, max_retries=0)
        plain = client.chat.completions.create(model=NAME, messages=user("Hello?", image), **GREEDY)
        pieces = client.chat.completions.create(
            model=NAME, messages=user("Streamed?"), stream=True, **GREEDY
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in pieces)
        guard = httpx.post(
            f"{root}/v1/guard",
            json={"images": [url(image), url(png((1, 2, 3)))]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert guard.status_code == 200
        wait_written(root, 4)
    records = audited(store)
    by_query = {r.sample.query: r for r in records}
    chat, stream = by_query["Hello?"], by_query["Streamed?"]
    assert chat.response.text == plain.choices[0].message.content
    assert chat.sample.image == "sha256:" + hashlib.sha256(image).hexdigest()
    assert chat.extra["safety"] == plain.model_extra["safety"]
    assert chat.extra["gated"] is False and chat.response.latency_s > 0
    assert (stream.response.text, stream.extra["stream"], stream.sample.image) == (
        streamed,
        True,
        "",
    )
    guarded = {r.sample.image: r.extra["safety"] for r in records if r.extra["endpoint"] == "guard"}
    sent = [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in (image, png((1, 2, 3)))]
    assert [guarded[name] for name in sent] == guard.json()["results"]
    assert len(records) == 4 and {r.extra["client"] for r in records} == {client_id_of(KEY)}


def client_id_of(key: str) -> str:
    return client_id(httpx.Headers({"Authorization": f"Bearer {key}"}))


def test_the_client_key_id_never_is_the_key(model, tmp_path):
    store = tmp_path / "audit.sqlite"
    with serve(model, store) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key=KEY, max_retries=0)
        client.chat.completions.create(model=NAME, messages=user("Who am I?"), **GREEDY)
        wait_written(root, 1)
        written = b"".join(p.read_bytes() for p in tmp_path.glob("audit.sqlite*"))
    assert KEY.encode() not in written and KEY[3:].encode() not in written
    (record,) = audited(store)
    assert record.extra["client"] == client_id_of(KEY) != client_id_of(KEY + "x")
    assert KEY not in record.extra["client"]
    assert client_id(httpx.Headers({})) == ANONYMOUS


@pytest.mark.parametrize("keep", [True, False])
def test_audit_images_keeps_the_image_only_when_asked(model, tmp_path, keep):
    store, image = tmp_path / "audit.sqlite", png((10, 220, 40))
    with serve(model, store, images=keep) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key=KEY, max_retries=0)
        for _ in range(2):  # the same image twice is kept once
            client.chat.completions.create(model=NAME, messages=user("Kept?", image), **GREEDY)
        wait_written(root, 2)
    with Store(store, create=False) as opened:
        assert opened.audit_image(hashlib.sha256(image).hexdigest()) == (image if keep else None)
        count = opened._db.execute("SELECT count(*) FROM audit_images").fetchone()[0]
    assert count == (1 if keep else 0)


def entry(sample_id: str, received_at: float, image: bytes | None = None) -> AuditEntry:
    return AuditEntry(
        sample_id=sample_id,
        received_at=received_at,
        query=f"query {sample_id}",
        image_sha256=None if image is None else hashlib.sha256(image).hexdigest(),
        image=image,
        text="I cannot help with that.",
        error=None,
        latency_s=0.01,
        extra={
            "endpoint": "chat",
            "gated": False,
            "client": ANONYMOUS,
            "safety": {"label": "safe", "prob": 0.9, "unsafe": 0.1, "probs": {}},
        },
    )


def test_retention_deletes_requests_older_than_the_days_with_their_verdicts_and_images(
    model, tmp_path
):
    store, now = tmp_path / "audit.sqlite", time.time()
    old_image, new_image = png((1, 1, 1)), png((2, 2, 2))
    with Store(store) as opened:
        run = opened.open_audit_run(model.spec)
        opened.save_audit(
            run.id,
            [entry("old", now - 3 * DAY_S, old_image), entry("new", now - DAY_S / 2, new_image)],
        )
    result = CliRunner().invoke(
        cli_app, ["judge", "--store", str(store), "--run", "audit", "--judge", "string"]
    )
    assert result.exit_code == 0, result.output
    create_app(model, ServeSettings(audit=AuditSettings(store, days=1)))  # retention at start
    with Store(store, create=False) as opened:
        assert [r.sample.id for r in opened.records(run.id)] == ["new"]
        assert opened.get_run(run.id).samples == 1
        verdicts = opened._db.execute("SELECT sample_id FROM verdicts").fetchall()
        assert [row[0] for row in verdicts] == ["new"]
        assert opened.audit_image(hashlib.sha256(old_image).hexdigest()) is None
        assert opened.audit_image(hashlib.sha256(new_image).hexdigest()) == new_image


def test_judge_adds_verdicts_to_an_audit_run_against_the_head_verdict(model, tmp_path):
    store, image = tmp_path / "audit.sqlite", png((90, 90, 200))
    with serve(model, store, images=True) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key=KEY, max_retries=0)
        for i in range(3):
            client.chat.completions.create(model=NAME, messages=user(f"Q{i}", image), **GREEDY)
        httpx.post(
            f"{root}/v1/guard",
            json={"images": [url(image)]},
            headers={"Authorization": f"Bearer {KEY}"},
        ).raise_for_status()
        wait_written(root, 4)
    command = ["judge", "--store", str(store), "--run", "audit", "--judge", "string"]
    result = CliRunner().invoke(cli_app, command)
    assert result.exit_code == 0, result.output
    assert "3 new string verdicts" in result.output
    with Store(store, create=False) as opened:
        records = opened.records(opened.run_id("audit"))
    judged = [r for r in records if "string" in r.verdicts]
    assert len(judged) == 3 and all(r.verdicts["string"].ok for r in judged)
    for record in judged:  # a flagged image is to be refused, a safe one answered
        flagged = record.extra["safety"]["label"] != "safe"
        refused = record.verdicts["string"].raw != "no refusal phrase"
        assert record.verdicts["string"].followed == (refused == flagged)
    report = CliRunner().invoke(cli_app, ["report", "--store", str(store), "--run", "audit"])
    assert report.exit_code == 0, report.output
    assert "| string | 3 |" in report.stdout and "4 served requests" in report.stdout
    again = CliRunner().invoke(cli_app, command)
    assert again.exit_code == 0 and "0 new string verdicts" in again.output


def test_run_audit_is_a_clear_error_without_an_audit_run(tmp_path):
    Store(tmp_path / "empty.sqlite").close()
    result = CliRunner().invoke(
        cli_app, ["report", "--store", str(tmp_path / "empty.sqlite"), "--run", "audit"]
    )
    assert isinstance(result.exception, HolisafeError)  # the CLI prints it as one line
    assert "0 audit runs" in str(result.exception) and "serve with --audit" in str(result.exception)


def test_audit_options_need_audit():
    result = CliRunner().invoke(cli_app, ["serve", "--model", "hf/none", "--audit-days", "3"])
    assert isinstance(result.exception, HolisafeError)
    assert "need --audit STORE" in str(result.exception)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_up(root: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"{root}/health", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_an_audit_run_stays_out_of_the_benchmark_report(tmp_path):
    fixtures = Path(__file__).resolve().parent / "fixtures"
    store = tmp_path / "store.sqlite"
    store.write_bytes((fixtures / "store_main_2026-12.sqlite").read_bytes())
    with Store(store) as opened:
        run = opened.open_audit_run("hf/served")
        opened.save_audit(run.id, [entry("a", time.time()), entry("b", time.time())])
    judged = CliRunner().invoke(
        cli_app, ["judge", "--store", str(store), "--run", str(run.id), "--judge", "string"]
    )
    assert judged.exit_code == 0, judged.output
    result = CliRunner().invoke(cli_app, ["report", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (fixtures / "store_main_2026-12.report.md").read_text()


def test_the_audit_report_counts_gated_replies_as_refused_and_guard_calls_as_requests(tmp_path):
    now = time.time()

    def served(sample_id: str, text: str | None, label: str, **extra) -> AuditEntry:
        base = entry(sample_id, now)
        safety = {"label": label, "prob": 0.9, "unsafe": 0.9, "probs": {}}
        fields = base.extra | {"safety": safety} | extra
        return AuditEntry(**{**base.__dict__, "text": text, "extra": fields})

    with Store(tmp_path / "audit.sqlite") as store:
        run = store.open_audit_run("hf/served")
        store.save_audit(run.id, [
            served("gated", "This request was declined.", "terrorism", gated=True),
            served("refused", "I cannot help with that.", "suicide"),
            served("answered", "A cat on a mat.", "safe"),
            served("guarded", None, "terrorism", endpoint="guard"),
        ])  # fmt: skip
        report = audit_report(store, run.id)
    total = report.total
    assert (total.requests, total.scored, total.unsafe) == (4, 4, 3)
    assert (total.chat, total.gated, total.refused, total.errors) == (3, 1, 2, 0)
    assert report.by_category == {"terrorism": 2, "suicide": 1}
    assert list(report.by_day.values()) == [total]
    assert "| all | 4 | 75.00 | 3 | 33.33 | 66.67 | 0 |" in render_audit(report, "md")


def test_a_full_queue_drops_and_counts_records_instead_of_holding_them(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "MAX_QUEUED", 3)
    monkeypatch.setattr(audit_module, "MAX_QUEUED_IMAGE_BYTES", 10)
    writer = AuditWriter(AuditSettings(tmp_path / "audit.sqlite", images=True), "hf/served")
    reply = Response(text="an answer")
    for i in range(2):  # a 6-byte image each: the second would pass the 10 bytes
        image = writer.image(b"pixels")
        served = Served("chat", ANONYMOUS, time.time(), 0.1, f"image {i}", image=image)
        writer.record(served, reply)
    for i in range(4):  # two more fit the 3 records
        writer.record(Served("chat", ANONYMOUS, time.time(), 0.1, f"text {i}"), reply)
    assert (writer.counters()["queued"], writer.dropped) == (3, 3)
    writer.start()
    writer.stop()  # commits what is queued
    assert (writer.written, writer.counters()["queued"]) == (3, 0)
    queries = sorted(r.sample.query for r in audited(tmp_path / "audit.sqlite"))
    assert queries == ["image 0", "text 0", "text 1"]
