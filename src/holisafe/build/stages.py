"""Asking models in stages whose every reply is kept in the store, so a rerun asks only what
has no usable reply yet; token budgets."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from holisafe.build.common import Malformed
from holisafe.core.chunks import chunks
from holisafe.core.records import GenerationSettings, Model, ModelBase, Request, Response
from holisafe.models import ModelOptions, load_model
from holisafe.store import connect, transaction


class ReplyStore:
    """The build's table in a holisafe store: every usable model reply, by attempt."""

    def __init__(self, path: str | Path):
        self._db = connect(path, check=True)

    def close(self) -> None:
        self._db.close()

    def replies(self, stage: str, job: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = defaultdict(list)
        rows = self._db.execute(
            "SELECT key, text FROM build_replies WHERE stage = ? AND job = ? ORDER BY attempt",
            (stage, job),
        )
        for key, text in rows:
            found[key].append(text)
        return found

    def save(self, stage: str, job: str, key: str, attempt: int, text: str) -> None:
        """Store one reply as the key's attempt `attempt`, in a transaction of its own: a
        commit costs no fsync in the store's WAL mode, little beside a model's reply."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO build_replies VALUES (?, ?, ?, ?, ?, ?)",
                (stage, job, key, attempt, text, now),
            )

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM build_replies").fetchone()[0]


@dataclass
class Budget:
    """What one build call may spend: `limit` requests, and requests until the providers have
    reported `token_limit` tokens (checked between batches); None: no limit."""

    limit: int | None
    token_limit: int | None = None
    used: int = 0
    tokens: int = 0

    def grant(self, wanted: int) -> int:
        """How many of `wanted` requests may be made now; they count as made."""
        if self.token_limit is not None and self.tokens >= self.token_limit:
            return 0
        granted = wanted if self.limit is None else min(wanted, self.limit - self.used)
        self.used += granted
        return granted


# One answer to a stage's request: (key, reply, error), the reply None when there is none.
Answer = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class Stage:
    """One kind of request: `ask` sends a batch of keys and yields an Answer for each key as
    soon as it arrives; `parse` turns a reply into a value or raises Malformed."""

    name: str
    job: str  # what every reply of the stage depends on (model, prompt, settings)
    ask: Callable[[list[str]], Iterable[Answer]]
    parse: Callable[[str, str], Any]  # (key, reply) → value
    attempts: int
    batch: int


@dataclass
class StageResult:
    values: dict[str, Any] = field(default_factory=dict)
    malformed: dict[str, list[str]] = field(default_factory=dict)  # attempts spent: the replies
    why: dict[str, str] = field(default_factory=dict)  # what is wrong with the last of them
    failed: dict[str, str] = field(default_factory=dict)  # no reply this time (rerun retries)
    pending: list[str] = field(default_factory=list)  # not asked: the budget is spent


def run_stage(
    store: ReplyStore, stage: Stage, keys: Sequence[str], budget: Budget, bar
) -> StageResult:
    """Settle every key from stored replies, asking the model for those that have none usable
    (again, up to `stage.attempts` replies in all, while the budget lasts)."""
    replies = store.replies(stage.name, stage.job)
    result = StageResult()

    def settled(key: str) -> bool:
        for text in replies.get(key, []):
            try:
                result.values[key] = stage.parse(key, text)
                return True
            except Malformed as exc:
                why = str(exc)
        if len(replies.get(key, [])) >= stage.attempts:
            result.malformed[key], result.why[key] = replies[key], why
            return True
        return False

    todo = [key for key in dict.fromkeys(keys) if not settled(key)]
    task = bar.add_task(f"{stage.name}", total=len(todo), visible=bool(todo))
    while todo:
        asked = set()
        for chunk in chunks(todo, stage.batch):
            granted = budget.grant(len(chunk))
            result.pending += chunk[granted:]
            if not granted:
                continue
            for key, text, error in stage.ask(chunk[:granted]):
                if text is None:
                    result.failed[key] = error or "no reply"
                else:
                    replies.setdefault(key, []).append(text)
                    store.save(stage.name, stage.job, key, len(replies[key]), text)
                    asked.add(key)
                bar.advance(task)
        todo = [key for key in todo if key in asked and not settled(key)]
        bar.update(task, total=bar.tasks[task].total + len(todo))
    return result


def _job(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class _Lazy:
    """A model loaded on first use, so that a dry run or a fully stored build loads none; the
    tokens its replies report count against the budget."""

    def __init__(self, spec: str, options: ModelOptions, budget: Budget):
        self.spec, self.options, self.budget, self._model = spec, options, budget, None

    def __call__(self):
        if self._model is None:
            self._model = Metered(load_model(self.spec, self.options), self.budget)
        return self._model


class Metered(ModelBase):
    """A model whose replies' reported tokens are added to the budget as they arrive."""

    def __init__(self, model: Model, budget: Budget):
        self._model, self._budget = model, budget

    def answers(
        self, requests: list[Request], settings: GenerationSettings
    ) -> Iterator[tuple[int, Response]]:
        for index, response in self._model.answers(requests, settings):
            self._budget.tokens += response.tokens or 0
            yield index, response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _generate_replies(
    model: _Lazy, keys: list[str], requests: list[Request], settings: GenerationSettings
) -> Iterator[Answer]:
    """Each key's Answer as its request's Response arrives."""
    for index, response in model().answers(requests, settings):
        yield keys[index], response.text, response.error
