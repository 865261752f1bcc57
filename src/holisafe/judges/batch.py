"""LLM judges through OpenAI's Batch API: the same requests at about half the price, answered
within 24 hours, resumable.

The judge's pending requests go up as one JSONL file and one batch; its id is kept in the
store's `judge_batches` table before anything else happens, so a process stopped while the
batch runs (Ctrl-C, a crash, a closed laptop) picks it up again when the same command runs
again, instead of paying for a second one. The results are read by the judge's own parser and
stored as any verdict; a request the batch failed is stored with its error and asked again by
the next run.

Only `openai/` judges (OpenAI, or a server that offers the Batch API) can go this way so far;
Anthropic's Message Batches and Gemini's batch mode are not done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing

from holisafe.data.sample import Sample
from holisafe.judges.base import JudgeError, Verdict
from holisafe.judges.llm import LLMJudge
from holisafe.models.base import Response
from holisafe.store import Store

ENDPOINT = "/v1/chat/completions"
FINISHED = ("completed", "failed", "expired", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judge_batches (
    run_id INTEGER NOT NULL,
    judge TEXT NOT NULL,
    batch_id TEXT NOT NULL PRIMARY KEY,
    sample_ids TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0
)
"""


def check_batchable(judge: object) -> LLMJudge:
    """The judge, if it can go through a batch API; JudgeError otherwise."""
    model = getattr(judge, "model", None)
    if not isinstance(judge, LLMJudge) or not hasattr(model, "chat_body"):
        raise JudgeError(
            f"judge {getattr(judge, 'id', judge)!r} cannot use a batch API: only openai/ LLM "
            "judges can so far"
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
    """Judge the run's pending responses in one batch (or collect the batch already sent) and
    store the verdicts; waits for the batch, checking every `poll_s` seconds. Returns how many
    verdicts were stored."""
    with closing(sqlite3.connect(store.path, timeout=30)) as db:
        db.execute(_SCHEMA)
        row = db.execute(
            "SELECT batch_id, sample_ids FROM judge_batches "
            "WHERE run_id = ? AND judge = ? AND collected = 0",
            (run_id, judge.id),
        ).fetchone()
        if row is None:
            stored, row = _submit(store, run_id, judge, samples, db)
            if row is None:
                return stored
        else:
            stored = 0
            say(f"{judge.id}: collecting batch {row[0]}, sent earlier")
        batch_id, sample_ids = row[0], json.loads(row[1])
        batch = _wait(judge, batch_id, poll_s, say)
        verdicts = _verdicts(judge, batch, sample_ids)
        store.save_verdicts(run_id, judge.id, verdicts.items())
        with db:
            db.execute("UPDATE judge_batches SET collected = 1 WHERE batch_id = ?", (batch_id,))
    return stored + len(verdicts)


def _submit(store, run_id, judge: LLMJudge, samples, db) -> tuple[int, tuple | None]:
    """Send the pending items as a batch and record it; (error verdicts stored, its row)."""
    by_id = {str(s.id): s for s in samples}
    pending = store.pending_verdicts(run_id, judge.id)
    requests, failed = judge.prepare([(by_id[i], text) for i, text in pending])
    ids = [sample_id for sample_id, _ in pending]
    store.save_verdicts(run_id, judge.id, [(ids[i], verdict) for i, verdict in failed.items()])
    if not requests:
        return len(failed), None
    lines = [
        {
            "custom_id": ids[i],
            "method": "POST",
            "url": ENDPOINT,
            "body": judge.model.chat_body(request, judge.settings),
        }
        for i, request in requests.items()
    ]
    client = judge.model.client
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("judge-requests.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
    )
    asked = [ids[i] for i in requests]
    with db:
        db.execute(
            "INSERT INTO judge_batches (run_id, judge, batch_id, sample_ids) VALUES (?, ?, ?, ?)",
            (run_id, judge.id, batch.id, json.dumps(asked)),
        )
    return len(failed), (batch.id, json.dumps(asked))


def _wait(judge: LLMJudge, batch_id: str, poll_s: float, say: Callable[[str], None]):
    client = judge.model.client
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINISHED:
            return batch
        say(
            f"{judge.id}: batch {batch_id} is {batch.status}; waiting (stop at any time: the "
            "same command collects it later)"
        )
        time.sleep(poll_s)


def _verdicts(judge: LLMJudge, batch, sample_ids: list[str]) -> dict[str, Verdict]:
    """A verdict for every sample the batch was asked about (an error where it gave none)."""
    client = judge.model.client
    missing = Verdict(followed=None, error=f"the batch {batch.id} ended {batch.status} without it")
    verdicts = dict.fromkeys(sample_ids, missing)
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        for line in client.files.content(file_id).text.splitlines():
            if line.strip():
                item = json.loads(line)
                verdicts[item["custom_id"]] = _verdict(judge, item)
    return verdicts


def _verdict(judge: LLMJudge, item: dict) -> Verdict:
    response = item.get("response") or {}
    if item.get("error") or response.get("status_code") != 200:
        error = item.get("error") or response.get("body", {}).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        return Verdict(followed=None, error=f"judge model failed in the batch: {message}")
    choices = response.get("body", {}).get("choices") or [{}]
    text = (choices[0].get("message") or {}).get("content")
    if not text or not text.strip():
        return judge.verdict(Response(text=None, error="empty reply"))
    return judge.verdict(Response(text=text))
