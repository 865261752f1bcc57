"""LLM judges through the providers' batch APIs (OpenAI's Batch API, Anthropic's Message
Batches): the same requests at about half the price, answered within 24 hours, resumable.

The judge's pending requests go up as one JSONL file and one batch; its id is kept in the
store's `judge_batches` table before anything else happens, so a process stopped while the
batch runs (Ctrl-C, a crash, a closed laptop) picks it up again when the same command runs
again, instead of paying for a second one. The results are read by the judge's own parser and
stored as any verdict; a request the batch failed is stored with its error and asked again by
the next run.

`openai/` judges (OpenAI, or a server that offers its Batch API) and `anthropic/` judges can go
this way; Gemini's batch mode is not done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import Protocol

from holisafe.data.sample import Sample
from holisafe.judges.base import JudgeError
from holisafe.judges.llm import LLMJudge
from holisafe.models.base import GenerationSettings, Request, Response
from holisafe.store import Store

ENDPOINT = "/v1/chat/completions"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_batches (
    run_id INTEGER NOT NULL,
    judge TEXT NOT NULL,
    batch_id TEXT NOT NULL PRIMARY KEY,
    sample_ids TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0
)
"""


class _Service(Protocol):
    """One provider's batch API, as the judge needs it."""

    max_bytes: int  # the provider's limit on one batch's size
    max_requests: int  # and on its number of requests

    def line(self, sample_id: str, request: Request, settings: GenerationSettings) -> dict: ...

    def submit(self, lines: list[dict]) -> str: ...

    def status(self, batch_id: str) -> str | None: ...  # None while it runs

    def results(self, batch_id: str) -> dict[str, Response]: ...


class _OpenAIBatches:
    max_bytes = 190_000_000  # OpenAI takes input files of up to 200 MB
    max_requests = 50_000

    def __init__(self, model):
        self.model = model
        self.client = model.client

    def line(self, sample_id: str, request: Request, settings: GenerationSettings) -> dict:
        body = self.model.chat_body(request, settings)
        return {"custom_id": sample_id, "method": "POST", "url": ENDPOINT, "body": body}

    def submit(self, lines: list[dict]) -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        uploaded = self.client.files.create(file=("judge-requests.jsonl", data), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
        )
        return batch.id

    def status(self, batch_id: str) -> str | None:
        status = self.client.batches.retrieve(batch_id).status
        return status if status in ("completed", "failed", "expired", "cancelled") else None

    def results(self, batch_id: str) -> dict[str, Response]:
        batch = self.client.batches.retrieve(batch_id)
        found: dict[str, Response] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            for line in self.client.files.content(file_id).text.splitlines() if file_id else []:
                if line.strip():
                    item = json.loads(line)
                    found[item["custom_id"]] = _openai_response(item)
        return found


class _AnthropicBatches:
    max_bytes = 250_000_000  # a message batch may be up to 256 MB
    max_requests = 100_000

    def __init__(self, model):
        self.model = model
        self.client = model.client

    def line(self, sample_id: str, request: Request, settings: GenerationSettings) -> dict:
        return {"custom_id": sample_id, "params": self.model.message_params(request, settings)}

    def submit(self, lines: list[dict]) -> str:
        return self.client.messages.batches.create(requests=lines).id

    def status(self, batch_id: str) -> str | None:
        batch = self.client.messages.batches.retrieve(batch_id)
        return "ended" if batch.processing_status == "ended" else None

    def results(self, batch_id: str) -> dict[str, Response]:
        found: dict[str, Response] = {}
        for entry in self.client.messages.batches.results(batch_id):
            result = entry.result
            if result.type == "succeeded":
                text = "".join(b.text for b in result.message.content if b.type == "text")
                found[entry.custom_id] = Response(text=text or None, error=_empty(text))
            else:
                detail = getattr(getattr(result, "error", None), "error", None)
                message = getattr(detail, "message", None) or result.type
                found[entry.custom_id] = Response(text=None, error=f"batch: {message}")
        return found


def _empty(text: str) -> str | None:
    return None if text and text.strip() else "empty reply"


def _openai_response(item: dict) -> Response:
    response = item.get("response") or {}
    if item.get("error") or response.get("status_code") != 200:
        error = item.get("error") or response.get("body", {}).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        return Response(text=None, error=f"batch: {message}")
    choices = response.get("body", {}).get("choices") or [{}]
    text = (choices[0].get("message") or {}).get("content") or ""
    return Response(text=text or None, error=_empty(text))


def _service(judge: object) -> _Service | None:
    model = getattr(judge, "model", None)
    if hasattr(model, "chat_body"):
        return _OpenAIBatches(model)
    if hasattr(model, "message_params"):
        return _AnthropicBatches(model)
    return None


def check_batchable(judge: object) -> LLMJudge:
    """The judge, if it can go through a batch API; JudgeError otherwise."""
    if not isinstance(judge, LLMJudge) or _service(judge) is None:
        raise JudgeError(
            f"judge {getattr(judge, 'id', judge)!r} cannot use a batch API: only openai/ and "
            "anthropic/ LLM judges can so far"
        )
    return judge


def judge_in_batch(
    store: Store,
    run_id: int,
    judge: LLMJudge,
    samples: Sequence[Sample],
    *,
    poll_s: float = 30.0,
    say: Callable[[str], None] = lambda line: None,
) -> int:
    """Judge the run's pending responses in batches (or collect the batches already sent) and
    store the verdicts; waits for each batch, checking every `poll_s` seconds. Returns how many
    verdicts were stored."""
    service = _service(check_batchable(judge))
    with closing(sqlite3.connect(store.path, timeout=30)) as db:
        db.execute(_SCHEMA)
        stored = 0
        batches = _uncollected(db, run_id, judge.id)
        if batches:
            say(f"{judge.id}: collecting {len(batches)} batch(es) sent earlier")
        else:
            stored = _submit(store, run_id, judge, service, samples, db)
            batches = _uncollected(db, run_id, judge.id)
        for batch_id, sample_ids in batches:
            status = _wait(service, judge.id, batch_id, poll_s, say)
            answered = service.results(batch_id)
            missing = Response(None, error=f"batch {batch_id} ended {status} without an answer")
            verdicts = {i: judge.verdict(answered.get(i, missing)) for i in sample_ids}
            store.save_verdicts(run_id, judge.id, verdicts.items())
            with db:
                db.execute("UPDATE judge_batches SET collected = 1 WHERE batch_id = ?", (batch_id,))
            stored += len(verdicts)
    return stored


def _uncollected(db: sqlite3.Connection, run_id: int, judge_id: str) -> list[tuple[str, list]]:
    rows = db.execute(
        "SELECT batch_id, sample_ids FROM judge_batches "
        "WHERE run_id = ? AND judge = ? AND collected = 0 ORDER BY rowid",
        (run_id, judge_id),
    )
    return [(batch_id, json.loads(ids)) for batch_id, ids in rows]


def _submit(store, run_id, judge: LLMJudge, service: _Service, samples, db) -> int:
    """Send the pending items in batches within the provider's limits, each recorded as it
    is sent; returns the error verdicts stored for items that cannot be asked about. Images
    are read a few at a time, so memory holds at most one batch."""
    from holisafe.evaluate import chunks  # here: evaluate imports this module

    by_id = {str(s.id): s for s in samples}
    failures = 0
    lines: list[dict] = []
    size = 0
    for group in chunks(store.pending_verdicts(run_id, judge.id), 64):
        requests, failed = judge.prepare([(by_id[i], text) for i, text in group])
        store.save_verdicts(run_id, judge.id, [(group[i][0], v) for i, v in failed.items()])
        failures += len(failed)
        for i, request in requests.items():
            line = service.line(group[i][0], request, judge.settings)
            line_size = len(json.dumps(line)) + 1
            if lines and (
                size + line_size > service.max_bytes or len(lines) == service.max_requests
            ):
                _send(service, lines, run_id, judge.id, db)
                lines, size = [], 0
            lines.append(line)
            size += line_size
    if lines:
        _send(service, lines, run_id, judge.id, db)
    return failures


def _send(service: _Service, lines: list[dict], run_id: int, judge_id: str, db) -> None:
    batch_id = service.submit(lines)
    with db:
        db.execute(
            "INSERT INTO judge_batches (run_id, judge, batch_id, sample_ids) VALUES (?, ?, ?, ?)",
            (run_id, judge_id, batch_id, json.dumps([line["custom_id"] for line in lines])),
        )


def _wait(service: _Service, judge_id: str, batch_id: str, poll_s: float, say) -> str:
    while (status := service.status(batch_id)) is None:
        say(
            f"{judge_id}: batch {batch_id} is running; waiting (stop at any time: the same "
            "command collects it later)"
        )
        time.sleep(poll_s)
    return status
