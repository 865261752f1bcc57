"""The store's runs: one model's responses to a benchmark, their verdicts and comparisons.

A run is one model answering one benchmark under one set of generation settings. Its identity
is (model spec, bench fingerprint, settings): opening the same triple again resumes the run, so
a rerun of the same command does only what is missing. Every `save_*` call is one transaction,
so a process killed at any moment loses at most the batch it was writing.

The benchmark's samples are copied into the store (their text and labels, not their images), so
that reports are pure functions of the store. Sample ids are stored as `str(id)`.

Typical loop:

    with Store(path) as store:
        run = store.open_run(model.spec, samples, settings.as_dict())
        todo = store.pending_samples(run.id, [s.id for s in samples])
        for batch in batches(todo):
            store.save_responses(run.id, zip(batch, model.generate(...)))
        by_id = {str(s.id): s for s in samples}
        pending = store.pending_verdicts(run.id, judge.id)  # [(sample id, response text)]
        for batch in batches(pending):
            verdicts = judge.judge([(by_id[i], text) for i, text in batch])
            store.save_verdicts(run.id, judge.id, zip([i for i, _ in batch], verdicts))
        store.finish_run(run.id)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from holisafe import __version__
from holisafe.core.records import Response, Verdict
from holisafe.core.sample import Sample
from holisafe.core.text import lone_surrogate, replace_surrogates
from holisafe.judges.pairwise import Preference
from holisafe.store.connection import StoreError, connect, transaction

EXPORT_FORMATS = ("jsonl", "parquet")
AUDIT_BENCHMARK = "audit"  # the benchmark name of an audit run's bench
AUDIT_SETTINGS = {"audit": True}  # an audit run's settings

# What makes two stored samples the same sample.
_SAMPLE_COLUMNS = ("query", "image", "type", "category", "subcategory", "image_safety_label")
# A response counts as done when it has text and no error; a verdict when it has a decision.
_RESPONSE_OK = "r.error IS NULL AND r.text IS NOT NULL"
_VERDICT_OK = "v.error IS NULL AND v.followed IS NOT NULL"

SampleId = TypeVar("SampleId", int, str)


@dataclass(frozen=True)
class Run:
    """One model on one benchmark under one set of generation settings."""

    id: int
    model: str
    bench: str  # the bench fingerprint
    settings: dict[str, Any]
    package_version: str  # the holisafe version that started the run
    started_at: str  # ISO 8601, UTC
    finished_at: str | None
    samples: int  # samples in the run's benchmark
    bench_source: str | None = None  # where the benchmark was last read from (path or Hub id)
    benchmark: str | None = None  # its name (`holisafe`, `vlsbench`, …); None in older stores


@dataclass(frozen=True)
class StoredSample:
    """A benchmark sample as the store keeps it: its text and labels, its image by name only."""

    id: str
    query: str
    image: str
    type: str | None
    category: str | None
    subcategory: str | None
    image_safety_label: int | None


@dataclass(frozen=True)
class AuditEntry:
    """One request a server answered, as its audit run records it (see `Store.save_audit`).

    `extra` holds what else the audit keeps: the endpoint, the head's prediction, whether the
    reply was gated, the client's key id (see `holisafe.serve.audit`).
    """

    sample_id: str
    received_at: float  # seconds since the epoch
    query: str
    image_sha256: str | None  # None: the request had no image
    image: bytes | None  # the image file itself, when the audit keeps images
    text: str | None
    error: str | None
    latency_s: float
    extra: dict[str, Any]


@dataclass(frozen=True)
class RunRecord:
    """Everything the store holds about one sample of a run."""

    sample: StoredSample
    response: Response | None  # None: not answered yet
    extra: dict[str, Any] | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # judge id → verdict


def bench_fingerprint(samples: Iterable[Sample]) -> str:
    """A stable 16-hex-digit hash of a benchmark: what makes two runs comparable.

    It covers each sample's id, query, type, category, subcategory, image safety label and
    image name, independent of the samples' order. Image bytes are left out on purpose: reading
    every image would make each start of a run slow, and the released benchmark's images do
    not change under their names.
    """
    lines = sorted(json.dumps(_fingerprint_fields(s), ensure_ascii=False) for s in samples)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def _fingerprint_fields(sample: Sample) -> list:
    return [
        sample.id,
        sample.query,
        sample.type,
        sample.category,
        sample.subcategory,
        sample.image_safety_label,
        sample.image.name,
    ]


def _storable(text: str | None) -> str | None:
    """Model and judge output as UTF-8 can keep it: lone surrogates (which a JSON reply can
    carry) become U+FFFD, so one odd reply never costs the batch."""
    return None if text is None else replace_surrogates(text)


def _check_unicode(samples: Iterable[Sample]) -> None:
    for s in samples:
        fields = {"id": s.id, "query": s.query, "image": s.image.name}
        for name, value in fields.items():
            if isinstance(value, str) and lone_surrogate(value) is not None:
                raise StoreError(
                    f"sample {s.id!r}: its {name} is not valid Unicode (a lone surrogate); "
                    "holisafe data validate reports such records"
                )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _settings_key(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


class Store:
    """An open store file. Use as a context manager, or call `close()`.

    One writing process at a time; readers (a report while a run goes on) are fine.
    `create=False` refuses a path with no store instead of creating an empty one.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no store at {self.path}")
        self._db = connect(self.path, check=True)
        self._db.row_factory = sqlite3.Row
        self._bench_ids: dict[str, frozenset[str]] = {}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- runs -----------------------------------------------------------------------------

    def open_run(
        self,
        model: str,
        samples: Sequence[Sample],
        settings: Mapping[str, Any],
        run_id: int | None = None,
        source: str | None = None,
        benchmark: str | None = None,
    ) -> Run:
        """Resume the run of (model, benchmark, settings), or start it if there is none.

        With `run_id`, resume exactly that run, and refuse (StoreError) when it was made with a
        different model, benchmark or settings: one run never mixes them. `source` records where
        the benchmark was read from, so that later steps (judges that look at the images,
        reports that show them) can find its images again; `benchmark` records its name.
        """
        _check_unicode(samples)
        bench = bench_fingerprint(samples)
        settings_key = _settings_key(settings)
        if run_id is not None:
            run = self.get_run(run_id)
            self._check_same_run(run, model, bench, settings, len(samples))
            self._set_source(bench, source, benchmark)
            return self.get_run(run_id)
        with transaction(self._db) as db:
            row = db.execute(
                "SELECT id FROM runs WHERE model = ? AND bench = ? AND settings = ?",
                (model, bench, settings_key),
            ).fetchone()
            if row is None:
                self._save_bench(db, bench, samples)
                row = db.execute(
                    "INSERT INTO runs (model, bench, settings, package_version, started_at) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (model, bench, settings_key, __version__, _now()),
                ).fetchone()
        self._set_source(bench, source, benchmark)
        return self.get_run(row["id"])

    def _set_source(self, bench: str, source: str | None, benchmark: str | None) -> None:
        with transaction(self._db) as db:
            if source is not None:
                db.execute("UPDATE benches SET source = ? WHERE fingerprint = ?", (source, bench))
            if benchmark is not None:
                db.execute(
                    "UPDATE benches SET benchmark = ? WHERE fingerprint = ?", (benchmark, bench)
                )

    @staticmethod
    def _check_same_run(
        run: Run, model: str, bench: str, settings: Mapping[str, Any], samples: int
    ) -> None:
        differences = []
        if run.model != model:
            differences.append(f"model {run.model!r}, not {model!r}")
        if run.bench != bench:
            differences.append(
                f"benchmark {run.bench} ({run.samples} samples), not {bench} ({samples} samples)"
            )
        if _settings_key(run.settings) != _settings_key(settings):
            differences.append(
                f"settings {_settings_key(run.settings)}, not {_settings_key(settings)}"
            )
        if differences:
            raise StoreError(
                f"run {run.id} was made with {'; '.join(differences)}; a run never mixes "
                "models, benchmarks or settings: leave out the run id to start or resume the "
                "matching run"
            )

    @staticmethod
    def _save_bench(db: sqlite3.Connection, bench: str, samples: Sequence[Sample]) -> None:
        if db.execute("SELECT 1 FROM benches WHERE fingerprint = ?", (bench,)).fetchone():
            return
        repeated = [i for i, count in Counter(str(s.id) for s in samples).items() if count > 1]
        if repeated:
            raise StoreError(f"the benchmark repeats sample ids: {', '.join(repeated[:5])}")
        db.execute(
            "INSERT INTO benches (fingerprint, samples) VALUES (?, ?)", (bench, len(samples))
        )
        db.executemany(
            "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    bench,
                    str(s.id),
                    position,
                    s.query,
                    s.image.name,
                    s.type,
                    s.category,
                    s.subcategory,
                    s.image_safety_label,
                )
                for position, s in enumerate(samples)
            ],
        )

    def get_run(self, run_id: int) -> Run:
        row = self._db.execute(
            "SELECT runs.*, benches.samples, benches.source, benches.benchmark FROM runs "
            "JOIN benches ON benches.fingerprint = runs.bench WHERE runs.id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            known = ", ".join(str(run.id) for run in self.runs(audits=True)) or "none"
            raise StoreError(f"no run {run_id} in {self.path} (runs: {known})")
        return _run(row)

    def runs(self, *, audits: bool = False) -> list[Run]:
        """Every benchmark run in the store, oldest first; with `audits`, the audit runs of
        served traffic too (which reports and judges take only when named)."""
        rows = self._db.execute(
            "SELECT runs.*, benches.samples, benches.source, benches.benchmark FROM runs "
            "JOIN benches ON benches.fingerprint = runs.bench "
            "WHERE ? OR benches.benchmark IS NOT ? ORDER BY runs.id",
            (audits, AUDIT_BENCHMARK),
        )
        return [_run(row) for row in rows]

    def finish_run(self, run_id: int) -> Run:
        """Stamp the run's end time (again, after a resumed run completes)."""
        with transaction(self._db) as db:
            db.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (_now(), run_id))
        return self.get_run(run_id)

    # --- responses ------------------------------------------------------------------------

    def pending_samples(self, run_id: int, sample_ids: Iterable[SampleId]) -> list[SampleId]:
        """The given ids, in order, that have no successful response yet (missing or failed)."""
        done = {
            row[0]
            for row in self._db.execute(
                f"SELECT sample_id FROM responses r WHERE run_id = ? AND {_RESPONSE_OK}",
                (run_id,),
            )
        }
        return [i for i in sample_ids if str(i) not in done]

    def save_responses(
        self,
        run_id: int,
        items: Iterable[tuple[int | str, Response]],
        extras: Mapping[int | str, dict[str, Any]] | None = None,
    ) -> None:
        """Record a batch of responses in one transaction.

        A sample answered again replaces its earlier row (a retried failure, never a duplicate),
        and the verdicts on the old text go with it. `extras` attaches a JSON object to some
        responses (e.g. the guard's safety prediction), keyed by sample id.
        """
        items = [(str(sample_id), response) for sample_id, response in items]
        extras = {str(k): v for k, v in (extras or {}).items()}
        if len({sample_id for sample_id, _ in items}) != len(items):
            raise StoreError(f"run {run_id}: a batch of responses names a sample twice")
        self._check_known(run_id, [sample_id for sample_id, _ in items] + list(extras))
        now = _now()
        rows = [
            (
                run_id,
                sample_id,
                _storable(response.text),
                response.latency_s,
                _storable(response.error),
                json.dumps(extras[sample_id]) if sample_id in extras else None,
                now,
            )
            for sample_id, response in items
        ]
        with transaction(self._db) as db:
            db.executemany(
                "DELETE FROM responses WHERE run_id = ? AND sample_id = ?",
                [(run_id, sample_id) for sample_id, _ in items],
            )
            db.executemany("INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def reuse_answers(self, run_id: int) -> int:
        """Copy into a run what its model answered to the same samples under the same settings
        in other runs (one with a smaller --limit, say), with the verdicts on those answers.

        A sample counts as the same when its id, query, image name, type, categories and image
        label all match. Returns the number of responses copied.
        """
        run = self.get_run(run_id)
        same = " AND ".join(f"new.{column} IS old.{column}" for column in _SAMPLE_COLUMNS)
        earlier = f"""
            FROM runs o
            JOIN responses r ON r.run_id = o.id
            JOIN samples old ON old.bench = o.bench AND old.sample_id = r.sample_id
            JOIN samples new ON new.bench = :bench AND new.sample_id = r.sample_id AND {same}
            LEFT JOIN verdicts v ON v.run_id = o.id AND v.sample_id = r.sample_id
            WHERE o.model = :model AND o.settings = :settings AND o.id != :run AND {_RESPONSE_OK}
        """
        keys = {
            "run": run_id,
            "bench": run.bench,
            "model": run.model,
            "settings": _settings_key(run.settings),
        }
        with transaction(self._db) as db:
            copied = db.execute(
                "INSERT OR IGNORE INTO responses "
                "(run_id, sample_id, text, latency_s, error, extra, created_at) "
                "SELECT :run, r.sample_id, r.text, r.latency_s, r.error, r.extra, r.created_at "
                f"{earlier} ORDER BY o.id DESC",
                keys,
            ).rowcount
            db.execute(
                "INSERT OR IGNORE INTO verdicts "
                "(run_id, judge, sample_id, followed, raw, error, created_at) "
                "SELECT :run, v.judge, v.sample_id, v.followed, v.raw, v.error, v.created_at "
                f"{earlier} AND {_VERDICT_OK} AND r.text = "
                "(SELECT text FROM responses WHERE run_id = :run AND sample_id = r.sample_id) "
                "ORDER BY o.id DESC",
                keys,
            )
        return copied

    def response_errors(self, run_id: int) -> list[tuple[str, str]]:
        """(sample id, error) for every response that failed, in benchmark order."""
        rows = self._db.execute(
            "SELECT r.sample_id, r.error FROM responses r "
            "JOIN runs ON runs.id = r.run_id "
            "JOIN samples s ON s.bench = runs.bench AND s.sample_id = r.sample_id "
            f"WHERE r.run_id = ? AND NOT ({_RESPONSE_OK}) ORDER BY s.position",
            (run_id,),
        )
        return [(row[0], row[1] or "empty response") for row in rows]

    def missing_predictions(self, run_id: int) -> frozenset[str]:
        """The ids of the samples an imported file had no prediction for: their
        response carries the extra `{"missing": true}` (see `holisafe.run.importer`)."""
        rows = self._db.execute(
            "SELECT sample_id FROM responses WHERE run_id = ? "
            "AND json_extract(extra, '$.missing') = 1",
            (run_id,),
        )
        return frozenset(row[0] for row in rows)

    def _check_known(self, run_id: int, sample_ids: list[str]) -> None:
        run = self.get_run(run_id)
        if run.bench not in self._bench_ids:
            rows = self._db.execute("SELECT sample_id FROM samples WHERE bench = ?", (run.bench,))
            self._bench_ids[run.bench] = frozenset(row[0] for row in rows)
        unknown = [i for i in sample_ids if i not in self._bench_ids[run.bench]]
        if unknown:
            raise StoreError(
                f"run {run_id}'s benchmark has no sample with id {', '.join(unknown[:5])}"
            )

    # --- verdicts -------------------------------------------------------------------------

    def pending_verdicts(self, run_id: int, judge_id: str) -> list[tuple[str, str]]:
        """(sample id, response text) for each successful response the judge has not yet
        decided (no verdict, or a failed one), in benchmark order."""
        rows = self._db.execute(
            "SELECT r.sample_id, r.text FROM responses r "
            "JOIN runs ON runs.id = r.run_id "
            "JOIN samples s ON s.bench = runs.bench AND s.sample_id = r.sample_id "
            "LEFT JOIN verdicts v ON v.run_id = r.run_id AND v.sample_id = r.sample_id "
            "AND v.judge = ? "
            f"WHERE r.run_id = ? AND {_RESPONSE_OK} "
            f"AND (v.sample_id IS NULL OR NOT ({_VERDICT_OK})) "
            "ORDER BY s.position",
            (judge_id, run_id),
        )
        return [(row[0], row[1]) for row in rows]

    def save_verdicts(
        self, run_id: int, judge_id: str, items: Iterable[tuple[int | str, Verdict]]
    ) -> None:
        """Record a batch of one judge's verdicts in one transaction, replacing earlier ones."""
        now = _now()
        rows = [
            (
                run_id,
                judge_id,
                str(sample_id),
                verdict.followed,
                _storable(verdict.raw),
                _storable(verdict.error),
                now,
            )
            for sample_id, verdict in items
        ]
        try:
            with transaction(self._db) as db:
                db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            raise StoreError(
                f"run {run_id}: a verdict of judge {judge_id!r} is for a sample with no response"
            ) from None

    def verdict_errors(self, run_id: int, judge_id: str) -> list[tuple[str, str]]:
        """(sample id, error) for every verdict of this judge that failed, in benchmark order."""
        rows = self._db.execute(
            "SELECT v.sample_id, v.error FROM verdicts v "
            "JOIN runs ON runs.id = v.run_id "
            "JOIN samples s ON s.bench = runs.bench AND s.sample_id = v.sample_id "
            f"WHERE v.run_id = ? AND v.judge = ? AND NOT ({_VERDICT_OK}) ORDER BY s.position",
            (run_id, judge_id),
        )
        return [(row[0], row[1] or "no decision") for row in rows]

    def judges(self, run_id: int) -> list[str]:
        """The ids of the judges that have verdicts in this run."""
        rows = self._db.execute(
            "SELECT DISTINCT judge FROM verdicts WHERE run_id = ? ORDER BY judge", (run_id,)
        )
        return [row[0] for row in rows]

    # --- pairwise comparisons -------------------------------------------------------------

    def save_preferences(
        self,
        run_a: int,
        run_b: int,
        judge_id: str,
        items: Iterable[tuple[int | str, bool, Preference]],
    ) -> None:
        """Record a batch of one pairwise judge's decisions on runs A and B in one transaction,
        replacing earlier ones. Each item is (sample id, whether A's response was shown first,
        the decision by position)."""
        now = _now()
        rows = [
            (run_a, run_b, judge_id, str(i), a_first, p.winner, p.raw, p.error, now)
            for i, a_first, p in items
        ]
        try:
            with transaction(self._db) as db:
                db.executemany(
                    "INSERT OR REPLACE INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
        except sqlite3.IntegrityError:
            raise StoreError(
                f"runs {run_a} and {run_b}: a comparison by {judge_id!r} is for a sample "
                "without a response in both runs"
            ) from None

    def preferences(
        self, run_a: int, run_b: int, judge_id: str
    ) -> dict[tuple[str, bool], Preference]:
        """(sample id, A shown first) → the judge's decision, for every stored comparison."""
        rows = self._db.execute(
            "SELECT sample_id, a_first, winner, raw, error FROM comparisons "
            "WHERE run_a = ? AND run_b = ? AND judge = ?",
            (run_a, run_b, judge_id),
        )
        return {
            (row["sample_id"], bool(row["a_first"])): Preference(
                row["winner"], row["raw"], row["error"]
            )
            for row in rows
        }

    def compared(self) -> list[tuple[int, int, str]]:
        """(run A, run B, judge) of every pairwise comparison in the store."""
        rows = self._db.execute(
            "SELECT DISTINCT run_a, run_b, judge FROM comparisons ORDER BY run_a, run_b, judge"
        )
        return [(row[0], row[1], row[2]) for row in rows]

    # --- audits of served traffic --------------------------------------------------------

    def open_audit_run(self, model: str) -> Run:
        """The audit run of the served model `model`, started if there is none: a run whose
        samples are the requests the server answered (`save_audit`), in a bench of its own
        whose benchmark is `audit`."""
        bench = "audit-" + hashlib.sha256(model.encode("utf-8")).hexdigest()[:11]
        with transaction(self._db) as db:
            db.execute(
                "INSERT OR IGNORE INTO benches (fingerprint, samples, benchmark) VALUES (?, 0, ?)",
                (bench, AUDIT_BENCHMARK),
            )
            db.execute(
                "INSERT OR IGNORE INTO runs (model, bench, settings, package_version, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (model, bench, _settings_key(AUDIT_SETTINGS), __version__, _now()),
            )
        row = self._db.execute(
            "SELECT id FROM runs WHERE model = ? AND bench = ?", (model, bench)
        ).fetchone()
        return self.get_run(row["id"])

    def run_id(self, name: str) -> int:
        """The run `name` designates: a run id, or `audit` for the store's one audit run."""
        if name.isdigit():
            return self.get_run(int(name)).id
        if name != AUDIT_BENCHMARK:
            raise StoreError(f"--run takes a run id or `audit`, not {name!r}")
        audits = [run for run in self.runs(audits=True) if run.benchmark == AUDIT_BENCHMARK]
        if len(audits) != 1:
            found = ", ".join(f"{run.id} ({run.model})" for run in audits) or "none"
            raise StoreError(
                f"{self.path} has {len(audits)} audit runs ({found}); "
                + ("serve with --audit to make one" if not audits else "name one by its id")
            )
        return audits[0].id

    def save_audit(self, run_id: int, entries: Sequence[AuditEntry]) -> None:
        """Record served requests with their replies in one transaction."""
        bench = self.get_run(run_id).bench
        samples, responses, images = [], [], []
        for entry in entries:
            at = _timestamp(entry.received_at)
            image = "" if entry.image_sha256 is None else f"sha256:{entry.image_sha256}"
            samples.append(
                (
                    bench,
                    entry.sample_id,
                    int(entry.received_at * 1e6),
                    _storable(entry.query),
                    image,
                    None,
                    None,
                    None,
                    None,
                )
            )
            responses.append(
                (
                    run_id,
                    entry.sample_id,
                    _storable(entry.text),
                    entry.latency_s,
                    _storable(entry.error),
                    json.dumps(entry.extra),
                    at,
                )
            )
            if entry.image is not None:
                images.append((entry.image_sha256, entry.image, at))
        with transaction(self._db) as db:
            db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", samples)
            db.executemany("INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", responses)
            db.executemany("INSERT OR IGNORE INTO audit_images VALUES (?, ?, ?)", images)
            db.execute(
                "UPDATE benches SET samples = samples + ? WHERE fingerprint = ?",
                (len(samples), bench),
            )

    def delete_audit_before(self, run_id: int, cutoff: float) -> int:
        """Delete the audited requests received before `cutoff` (seconds since the epoch), with
        their replies, verdicts and the images no request names any more. Returns how many."""
        bench = self.get_run(run_id).bench
        old = "SELECT sample_id FROM samples WHERE bench = :bench AND position < :cutoff"
        keys = {"run": run_id, "bench": bench, "cutoff": int(cutoff * 1e6)}
        with transaction(self._db) as db:
            # the verdicts on those responses go with them (ON DELETE CASCADE)
            db.execute(f"DELETE FROM responses WHERE run_id = :run AND sample_id IN ({old})", keys)
            deleted = db.execute(
                "DELETE FROM samples WHERE bench = :bench AND position < :cutoff", keys
            ).rowcount
            db.execute(
                "DELETE FROM audit_images WHERE NOT EXISTS "
                "(SELECT 1 FROM samples WHERE image = 'sha256:' || audit_images.sha256)"
            )
            db.execute(
                "UPDATE benches SET samples = samples - ? WHERE fingerprint = ?", (deleted, bench)
            )
        return deleted

    def audit_image(self, sha256: str) -> bytes | None:
        """The kept bytes of an audited image (None: not kept)."""
        row = self._db.execute(
            "SELECT data FROM audit_images WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return None if row is None else row["data"]

    def response_times(self, run_id: int) -> dict[str, str]:
        """Sample id → when its response was recorded (for an audit run: when it was received),
        ISO 8601 in UTC."""
        rows = self._db.execute(
            "SELECT sample_id, created_at FROM responses WHERE run_id = ?", (run_id,)
        )
        return {row[0]: row[1] for row in rows}

    # --- reading a run back ---------------------------------------------------------------

    def results(self, run_id: int, judge_id: str) -> list[tuple[StoredSample, Verdict | None]]:
        """Every sample of the run's benchmark with this judge's verdict (None: no verdict,
        because the sample has no successful response yet or was not judged). For metrics."""
        return [
            (record.sample, record.verdicts.get(judge_id) if _answered(record) else None)
            for record in self.records(run_id)
        ]

    def records(self, run_id: int) -> list[RunRecord]:
        """Every sample of the run's benchmark with its response, extra and verdicts."""
        run = self.get_run(run_id)
        verdicts: dict[str, dict[str, Verdict]] = defaultdict(dict)
        for row in self._db.execute("SELECT * FROM verdicts WHERE run_id = ?", (run_id,)):
            followed = None if row["followed"] is None else bool(row["followed"])
            verdicts[row["sample_id"]][row["judge"]] = Verdict(followed, row["raw"], row["error"])
        rows = self._db.execute(
            "SELECT s.*, r.text, r.latency_s, r.error, r.extra, r.run_id AS answered "
            "FROM samples s LEFT JOIN responses r ON r.run_id = ? AND r.sample_id = s.sample_id "
            "WHERE s.bench = ? ORDER BY s.position",
            (run_id, run.bench),
        )
        return [_record(row, verdicts.get(row["sample_id"], {})) for row in rows]

    def export_run(self, run_id: int, path: str | Path) -> Path:
        """Write a run's records to `path`: JSONL (`.jsonl`) or parquet (`.parquet`).

        One row per sample: run id, model, the sample's fields, `response`, `latency_s`,
        `error`, `extra` and `verdicts` (a list of {judge, followed, raw, error}). In parquet
        `extra` is JSON text, since its shape varies.
        """
        path = Path(path)
        fmt = path.suffix.lstrip(".")
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"cannot export to {path}: the name must end in .jsonl or .parquet")
        run = self.get_run(run_id)
        rows = [_export_row(run, record) for record in self.records(run_id)]
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl":
            with path.open("w", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            _write_parquet(rows, path)
        return path


def _timestamp(seconds: float) -> str:
    """ISO 8601 in UTC to the microsecond: strings that sort as the times do."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        model=row["model"],
        bench=row["bench"],
        settings=json.loads(row["settings"]),
        package_version=row["package_version"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        samples=row["samples"],
        bench_source=row["source"],
        benchmark=row["benchmark"],
    )


def _record(row: sqlite3.Row, verdicts: dict[str, Verdict]) -> RunRecord:
    sample = StoredSample(
        id=row["sample_id"],
        query=row["query"],
        image=row["image"],
        type=row["type"],
        category=row["category"],
        subcategory=row["subcategory"],
        image_safety_label=row["image_safety_label"],
    )
    if row["answered"] is None:
        return RunRecord(sample, None)
    response = Response(text=row["text"], error=row["error"], latency_s=row["latency_s"])
    extra = None if row["extra"] is None else json.loads(row["extra"])
    return RunRecord(sample, response, extra, verdicts)


def _answered(record: RunRecord) -> bool:
    return record.response is not None and record.response.ok


def _export_row(run: Run, record: RunRecord) -> dict[str, Any]:
    sample, response = record.sample, record.response
    return {
        "run_id": run.id,
        "model": run.model,
        "sample_id": sample.id,
        "query": sample.query,
        "image": sample.image,
        "type": sample.type,
        "category": sample.category,
        "subcategory": sample.subcategory,
        "image_safety_label": sample.image_safety_label,
        "response": response.text if response else None,
        "latency_s": response.latency_s if response else None,
        "error": response.error if response else None,
        "extra": record.extra,
        "verdicts": [
            {"judge": judge, "followed": v.followed, "raw": v.raw, "error": v.error}
            for judge, v in sorted(record.verdicts.items())
        ],
    }


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    from datasets import Features, List, Value

    from holisafe.data.export import write_parquet

    text, integer = Value("string"), Value("int64")
    verdict = {"judge": text, "followed": Value("bool"), "raw": text, "error": text}
    features = Features(
        {
            "run_id": integer,
            "model": text,
            "sample_id": text,
            "query": text,
            "image": text,
            "type": text,
            "category": text,
            "subcategory": text,
            "image_safety_label": integer,
            "response": text,
            "latency_s": Value("float64"),
            "error": text,
            "extra": text,
            "verdicts": List(verdict),
        }
    )
    rows = [
        {**row, "extra": None if row["extra"] is None else json.dumps(row["extra"])} for row in rows
    ]
    write_parquet(rows, features, path)
