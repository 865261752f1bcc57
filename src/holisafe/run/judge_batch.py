"""LLM judges through the providers' batch APIs (OpenAI's Batch API, Anthropic's Message
Batches, Gemini's batch mode): the same requests at about half the price, answered within 24
hours, resumable.

The judge's pending requests go up as one batch (a JSONL file for OpenAI and Gemini); its id is
kept in the store's `judge_batches` table before anything else happens, so a process stopped
while the batch runs (Ctrl-C, a crash, a closed laptop) picks it up again when the same command
runs again, instead of paying for a second one. The results are read by the judge's own parser
and stored as any verdict; a request the batch failed is stored with its error and asked again
by the next run.

Several processes on one store (`--workers N`, or commands started by hand) share a judge's
batches: one at a time keeps them (submits, waits, collects) under a lease in the
`judge_batch_keepers` table, taken in one transaction and renewed while it works; the others
wait and then find the verdicts stored. A keeper that dies loses its lease as a worker loses its
claims (both are a `holisafe.store.Lease`), and the next process collects the batches it
recorded.

`openai/` judges (OpenAI, or a server that offers its Batch API), `anthropic/` and `google/`
judges can go this way.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from holisafe.core.chunks import chunks
from holisafe.core.errors import why
from holisafe.core.records import GenerationSettings, Request, Response
from holisafe.core.safe_json import parse_json
from holisafe.core.sample import Sample
from holisafe.judges.base import JudgeError
from holisafe.judges.llm import LLMJudge
from holisafe.models.api import RequestFailed
from holisafe.run.leases import DEFAULT_LEASE_S
from holisafe.store import Lease, Store, connect, transaction

ENDPOINT = "/v1/chat/completions"


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
        data = _jsonl(lines)
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
            if file_id:
                text = self.client.files.content(file_id).text
                found |= _result_lines(text, "custom_id", _openai_response)
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
        for entry in _readable(self.client.messages.batches.results(batch_id)):
            custom_id = getattr(entry, "custom_id", None)
            if not isinstance(custom_id, str):
                continue  # that sample counts as unanswered
            try:
                found[custom_id] = _anthropic_response(entry.result)
            except SHAPE_ERRORS as exc:
                found[custom_id] = _malformed(exc)
        return found


def _readable(entries: Iterator[Any]) -> Iterator[Any]:
    """The entries the SDK decodes from a results file, up to a line it cannot decode (one
    nested past the parser's stack, or no JSON): the samples from there on count as unanswered,
    so the batch is still collected and a rerun asks only for them."""
    try:
        yield from entries
    except (RecursionError, ValueError):
        return


class _GeminiBatches:
    # The Files API takes files of up to 2 GB; a quarter of that bounds the memory one batch
    # takes here. Gemini documents no limit on the number of requests.
    max_bytes = 500_000_000
    max_requests = 10_000_000
    ended = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")

    def __init__(self, model):
        self.model = model
        self.client = model.client

    def line(self, sample_id: str, request: Request, settings: GenerationSettings) -> dict:
        return {"key": sample_id, "request": self.model.batch_request(request, settings)}

    def submit(self, lines: list[dict]) -> str:
        data = _jsonl(lines)
        uploaded = self.client.files.upload(
            file=io.BytesIO(data),
            config={"mime_type": "jsonl", "display_name": "judge-requests.jsonl"},
        )
        return self.client.batches.create(model=self.model.name, src=uploaded.name).name

    def status(self, batch_id: str) -> str | None:
        state = self.client.batches.get(name=batch_id).state
        return state.value if state is not None and state.value in self.ended else None

    def results(self, batch_id: str) -> dict[str, Response]:
        output = self.client.batches.get(name=batch_id).dest
        if output is None or output.file_name is None:
            return {}
        text = self.client.files.download(file=output.file_name).decode()
        return _result_lines(text, "key", _gemini_response)


# What reading a result of the wrong shape raises (pydantic's ValidationError is a ValueError).
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def _result_lines(
    text: str, id_key: str, response_of: Callable[[dict], Response]
) -> dict[str, Response]:
    """The answers in a batch's results file, by sample id. A line that is not a JSON object
    with its sample's id is passed over (that sample then counts as unanswered: a failed
    verdict); a line whose result has the wrong shape fails its sample."""
    found: dict[str, Response] = {}
    for line in text.splitlines():
        try:
            item = parse_json(line)
        except ValueError:
            continue
        if not isinstance(item, dict) or not isinstance(item.get(id_key), str):
            continue
        try:
            found[item[id_key]] = response_of(item)
        except SHAPE_ERRORS as exc:
            found[item[id_key]] = _malformed(exc)
    return found


def _malformed(exc: Exception) -> Response:
    return Response(None, error=f"batch: malformed result ({why(exc)})")


def _jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _empty(text: str) -> str | None:
    return None if text and text.strip() else "empty reply"


def _anthropic_response(result) -> Response:
    if result.type == "succeeded":
        text = "".join(b.text for b in result.message.content if b.type == "text")
        return Response(text=text or None, error=_empty(text))
    detail = getattr(getattr(result, "error", None), "error", None)
    message = getattr(detail, "message", None) or result.type
    return Response(text=None, error=f"batch: {message}")


def _openai_response(item: dict) -> Response:
    response = item.get("response") or {}
    if item.get("error") or response.get("status_code") != 200:
        error = item.get("error") or response.get("body", {}).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        return Response(text=None, error=f"batch: {message}")
    choices = response.get("body", {}).get("choices") or [{}]
    text = (choices[0].get("message") or {}).get("content") or ""
    return Response(text=text or None, error=_empty(text))


def _gemini_response(item: dict) -> Response:
    """A line of a Gemini batch's results: a GenerateContentResponse, or a status."""
    from google.genai import types  # here: the SDK is slow to import

    if item.get("error") or "response" not in item:
        error = item.get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        return Response(text=None, error=f"batch: {message or 'no response'}")
    text = types.GenerateContentResponse.model_validate(item["response"]).text or ""
    return Response(text=text or None, error=_empty(text))


def _service(judge: object) -> _Service | None:
    model = getattr(judge, "model", None)
    if hasattr(model, "chat_body"):
        return _OpenAIBatches(model)
    if hasattr(model, "message_params"):
        return _AnthropicBatches(model)
    if hasattr(model, "batch_request"):
        return _GeminiBatches(model)
    return None


def check_batchable(judge: object) -> LLMJudge:
    """The judge, if it can go through a batch API; JudgeError otherwise."""
    if not isinstance(judge, LLMJudge) or _service(judge) is None:
        raise JudgeError(
            f"judge {getattr(judge, 'id', judge)!r} cannot use a batch API: only openai/, "
            "anthropic/ and google/ LLM judges can"
        )
    return judge


def judge_in_batch(
    store: Store,
    run_id: int,
    judge: LLMJudge,
    samples: Sequence[Sample],
    *,
    poll_s: float = 30.0,
    lease_s: float = DEFAULT_LEASE_S,
    say: Callable[[str], None] = lambda line: None,
) -> int:
    """Judge the run's pending responses in batches (or collect the batches already sent) and
    store the verdicts; waits for each batch, checking every `poll_s` seconds. Another process
    keeping this judge's batches is waited for (its lease lasts `lease_s` seconds unless
    renewed). Returns how many verdicts this call stored.

    A call sends batches only if no batch of this judge and run was sent or collected since
    it began: what a batch failed waits for the next call, so a call never pays twice."""
    service = _service(check_batchable(judge))
    with closing(connect(store.path)) as db:
        keeper = _Keeper(db, run_id, judge.id, lease_s)
        batches = _Batches(store, db, run_id, judge, service, keeper, poll_s, say)
        collected_before = batches.count(collected_only=True)
        stored, sent = 0, False
        try:
            with _batch_errors(judge):
                while True:
                    if not keeper.take():
                        say(f"{judge.id}: another process keeps this judge's batches; waiting")
                        time.sleep(poll_s)
                    elif uncollected := batches.uncollected():
                        stored += sum(batches.collect(*batch) for batch in uncollected)
                    elif sent or batches.count() > collected_before:
                        return stored
                    else:
                        stored += batches.submit(samples)
                        sent = True
        finally:
            keeper.release()


@contextmanager
def _batch_errors(judge: LLMJudge) -> Iterator[None]:
    try:
        with judge.model.provider_errors():
            yield
    except RequestFailed as failure:
        raise JudgeError(
            f"{judge.id}: the batch API failed: {failure}; the batches sent are kept in the "
            "store: run the same command again"
        ) from None


class _Keeper:
    """The lease on one judge's batches in one run, held by at most one process at a time."""

    def __init__(self, db: sqlite3.Connection, run_id: int, judge_id: str, lease_s: float):
        self.run_id, self.judge_id = run_id, judge_id
        self.lease = Lease(db, "judge_batch_keepers", lease_s)

    def take(self) -> bool:
        """Take (or keep) the lease, unless another live process holds it."""
        with transaction(self.lease.db):
            free = not self.lease.held_by_others(run_id=self.run_id, judge=self.judge_id)
            if free:
                self.lease.take([(self.run_id, self.judge_id)])
        return free

    def renew(self) -> None:
        """Extend the lease; JudgeError if another process has taken it meanwhile (this one
        was stopped, or its machine slept, longer than the lease)."""
        if not self.lease.renew():
            raise JudgeError(
                f"{self.judge_id}: another process took over this judge's batches while this "
                "one was stopped; it sends and collects them (or run the same command again)"
            )

    def release(self) -> None:
        self.lease.release_all()


@dataclass
class _Batches:
    """One judge's batches in one run, as recorded in the store's `judge_batches` table."""

    store: Store
    db: sqlite3.Connection
    run_id: int
    judge: LLMJudge
    service: _Service
    keeper: _Keeper
    poll_s: float
    say: Callable[[str], None]

    def count(self, collected_only: bool = False) -> int:
        query = "SELECT COUNT(*) FROM judge_batches WHERE run_id = ? AND judge = ?"
        if collected_only:
            query += " AND collected = 1"
        return self.db.execute(query, (self.run_id, self.judge.id)).fetchone()[0]

    def uncollected(self) -> list[tuple[str, list[str]]]:
        rows = self.db.execute(
            "SELECT batch_id, sample_ids FROM judge_batches "
            "WHERE run_id = ? AND judge = ? AND collected = 0 ORDER BY rowid",
            (self.run_id, self.judge.id),
        )
        return [(batch_id, json.loads(ids)) for batch_id, ids in rows]

    def collect(self, batch_id: str, sample_ids: list[str]) -> int:
        """Wait for the batch, store its verdicts; returns how many."""
        status = self._wait(batch_id)
        answered = self.service.results(batch_id)
        missing = Response(None, error=f"batch {batch_id} ended {status} without an answer")
        verdicts = {i: self.judge.verdict(answered.get(i, missing)) for i in sample_ids}
        self.store.save_verdicts(self.run_id, self.judge.id, verdicts.items())
        self.db.execute("UPDATE judge_batches SET collected = 1 WHERE batch_id = ?", (batch_id,))
        return len(verdicts)

    def submit(self, samples: Sequence[Sample]) -> int:
        """Send the pending items in batches within the provider's limits, each recorded as
        it is sent; returns the error verdicts stored for items that cannot be asked about.
        Images are read a few at a time, so memory holds at most one batch."""
        by_id = {str(s.id): s for s in samples}
        failures = 0
        lines: dict[str, dict] = {}  # sample id → its request line
        size = 0
        for group in chunks(self.store.pending_verdicts(self.run_id, self.judge.id), 64):
            self.keeper.renew()
            requests, failed = self.judge.prepare([(by_id[i], text) for i, text in group])
            failed_verdicts = [(group[i][0], v) for i, v in failed.items()]
            self.store.save_verdicts(self.run_id, self.judge.id, failed_verdicts)
            failures += len(failed)
            for i, request in requests.items():
                line = self.service.line(group[i][0], request, self.judge.settings)
                line_size = len(json.dumps(line)) + 1
                full = size + line_size > self.service.max_bytes
                if lines and (full or len(lines) == self.service.max_requests):
                    self._send(lines)
                    lines, size = {}, 0
                lines[group[i][0]] = line
                size += line_size
        if lines:
            self._send(lines)
        return failures

    def _send(self, lines: dict[str, dict]) -> None:
        batch_id = self.service.submit(list(lines.values()))
        self.db.execute(
            "INSERT INTO judge_batches (run_id, judge, batch_id, sample_ids) VALUES (?, ?, ?, ?)",
            (self.run_id, self.judge.id, batch_id, json.dumps(list(lines))),
        )

    def _wait(self, batch_id: str) -> str:
        while (status := self.service.status(batch_id)) is None:
            self.say(
                f"{self.judge.id}: batch {batch_id} is running; waiting (stop at any time: the "
                "same command collects it later)"
            )
            self.keeper.renew()
            time.sleep(self.poll_s)
        return status
