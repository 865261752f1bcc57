"""The evaluation loop: a model answers a benchmark, judges score it, all through the store.

Every batch of responses and verdicts is committed as it completes, so an interrupted run
(Ctrl-C, a crash, `kill -9`) resumes where it stopped when the same command runs again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from holisafe.data import Sample, load_samples
from holisafe.data.sample import ImageError
from holisafe.errors import DataError
from holisafe.judges import Judge, load_judge
from holisafe.models import ModelOptions, load_model
from holisafe.models.base import GenerationSettings, Model, Request, Response
from holisafe.progress import progress_bar
from holisafe.store import Run, Store, StoreError, bench_fingerprint

T = TypeVar("T")


@dataclass
class EvalOutcome:
    """What one `evaluate` call did, and what is still wrong."""

    run: Run
    generated: int = 0
    reused: int = 0  # answers copied from other runs of the same model, settings and samples
    judged: dict[str, int] = field(default_factory=dict)
    response_errors: list[tuple[str, str]] = field(default_factory=list)
    verdict_errors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # invalid benchmark records, described
    notes: list[str] = field(default_factory=list)  # what a judge could not do as its protocol asks


def evaluate(
    model_spec: str,
    bench: str | Path,
    store_path: str | Path,
    *,
    judges: Sequence[str] = ("string",),
    settings: GenerationSettings = GenerationSettings(),
    options: ModelOptions = ModelOptions(),
    limit: int | None = None,
    skip_invalid: bool = False,
    run_id: int | None = None,
    progress: bool = False,
    model: Model | None = None,
    judge_options: ModelOptions | None = None,
    judge_template: str | Path | None = None,
    judge_protocol: str = "toolkit",
) -> EvalOutcome:
    """Generate the missing responses of a run, then the missing verdicts of each judge.

    The model is loaded only when responses are missing; pass `model` to reuse a loaded one.
    LLM judges are reached with `judge_options` (default: `options` without the judged model's
    base URL and API key) and follow `judge_protocol` (`toolkit` or `official`, see
    `load_judge`) with the template file `judge_template` if given.
    """
    dataset = load_samples(bench, skip_invalid=skip_invalid, progress=progress)
    samples = dataset.samples[:limit] if limit is not None else dataset.samples
    if not samples:
        raise DataError(f"{bench}: no valid samples to evaluate{_first_problem(dataset)}")
    judge_options = judge_options or replace(options, base_url=None, api_key=None)
    judge_objects = [load_judge(j, judge_options, judge_template, judge_protocol) for j in judges]
    with Store(store_path) as store, progress_bar(progress) as bar:
        run = store.open_run(
            model_spec, samples, settings.as_dict(), run_id=run_id, source=bench_source(bench)
        )
        outcome = EvalOutcome(
            run=run, skipped=[str(p) for p in dataset.problems], notes=_notes(judge_objects)
        )
        outcome.reused = store.reuse_answers(run.id)
        pending = set(store.pending_samples(run.id, [s.id for s in samples]))
        todo = [s for s in samples if s.id in pending]
        if todo:
            model = model or load_model(model_spec, options)
            outcome.generated = _generate(store, run.id, model, todo, settings, options, bar)
        for judge in judge_objects:
            outcome.judged[judge.id] = _judge(store, run.id, judge, samples, judge_options, bar)
            outcome.verdict_errors[judge.id] = store.verdict_errors(run.id, judge.id)
        outcome.response_errors = store.response_errors(run.id)
        if not outcome.response_errors:
            outcome.run = store.finish_run(run.id)
    return outcome


def judge_stored(
    store_path: str | Path,
    judges: Sequence[str],
    *,
    run_id: int | None = None,
    bench: str | Path | None = None,
    options: ModelOptions = ModelOptions(),
    judge_template: str | Path | None = None,
    judge_protocol: str = "toolkit",
    progress: bool = False,
) -> list[EvalOutcome]:
    """Add judges to the responses already in a store, without generating any.

    Judges every run (or run `run_id`), only the verdicts each judge still lacks or failed.
    Each run's benchmark is read again from where the run recorded it (or from `bench`, when it
    has moved) for the images, and must still match the run's fingerprint.
    """
    judge_objects = [load_judge(j, options, judge_template, judge_protocol) for j in judges]
    outcomes = []
    with Store(store_path, create=False) as store, progress_bar(progress) as bar:
        runs = [store.get_run(run_id)] if run_id is not None else store.runs()
        if not runs:
            raise StoreError(f"no runs in {store.path}; answer a benchmark with holisafe eval")
        read: dict[str, list[Sample]] = {}
        for run in runs:
            samples = _run_samples(store, run, bench, read)
            outcome = EvalOutcome(run=run, notes=_notes(judge_objects))
            for judge in judge_objects:
                outcome.judged[judge.id] = _judge(store, run.id, judge, samples, options, bar)
                outcome.verdict_errors[judge.id] = store.verdict_errors(run.id, judge.id)
            outcomes.append(outcome)
    return outcomes


def _first_problem(dataset) -> str:
    if not dataset.problems:
        return ""
    return f" ({len(dataset.problems)} skipped; the first, {dataset.problems[0]})"


def _notes(judges: Sequence[Judge]) -> list[str]:
    return [note for judge in judges for note in judge.notes]


def _run_samples(
    store: Store, run: Run, bench: str | Path | None, read: dict[str, list[Sample]]
) -> list[Sample]:
    """The run's samples read again from its benchmark, checked against its fingerprint."""
    source = str(bench) if bench is not None else run.bench_source
    if source is None:
        raise StoreError(f"run {run.id} does not record where its benchmark is; pass --bench")
    if source not in read:
        # Images are decoded when judged, so a broken one fails only its own verdict.
        try:
            read[source] = load_samples(source, skip_invalid=True, check_images=False).samples
        except DataError as exc:
            raise StoreError(
                f"cannot read run {run.id}'s benchmark: {exc}; pass --bench if it has moved"
            ) from None
    by_id = {str(s.id): s for s in read[source]}
    wanted = [record.sample.id for record in store.records(run.id)]
    samples = [by_id[i] for i in wanted if i in by_id]
    if len(samples) != len(wanted) or bench_fingerprint(samples) != run.bench:
        raise StoreError(
            f"the benchmark at {source} is not the one run {run.id} answered (fingerprint "
            f"{run.bench}); pass --bench with the benchmark the run was made on, or --run to "
            "judge one run"
        )
    return samples


def bench_source(bench: str | Path) -> str:
    """A local benchmark as an absolute path (so it is found from any folder), or a Hub id."""
    path = Path(bench)
    return str(path.resolve()) if path.exists() else str(bench)


def _generate(store, run_id, model, todo, settings, options, bar) -> int:
    task = bar.add_task(f"answering with {model.spec}", total=len(todo))
    size = max(options.batch_size, options.concurrency)
    for batch in chunks(todo, size):
        responses = _answer(model, batch, settings)
        extras = {
            s.id: {"safety": asdict(r.safety)}
            for s, r in zip(batch, responses, strict=True)
            if r.safety is not None
        }
        store.save_responses(run_id, zip([s.id for s in batch], responses, strict=True), extras)
        bar.advance(task, len(batch))
    return len(todo)


def _answer(model: Model, batch: list[Sample], settings: GenerationSettings) -> list[Response]:
    """The model's responses; a sample whose image cannot be read gets an error response."""
    requests: dict[int, Request] = {}
    failed: dict[int, Response] = {}
    for i, sample in enumerate(batch):
        try:
            requests[i] = Request(query=sample.query, image=sample.image.load())
        except ImageError as exc:
            failed[i] = Response(text=None, error=str(exc))
    answered = iter(model.generate(list(requests.values()), settings) if requests else [])
    return [failed[i] if i in failed else next(answered) for i in range(len(batch))]


def _judge(store, run_id, judge: Judge, samples, options, bar) -> int:
    pending = store.pending_verdicts(run_id, judge.id)
    if not pending:
        return 0
    by_id = {str(s.id): s for s in samples}
    task = bar.add_task(f"judging with {judge.id}", total=len(pending))
    for batch in chunks(pending, max(options.batch_size, options.concurrency)):
        verdicts = judge.judge([(by_id[i], text) for i, text in batch])
        store.save_verdicts(run_id, judge.id, zip([i for i, _ in batch], verdicts, strict=True))
        bar.advance(task, len(batch))
    return len(pending)


def chunks(items: Sequence[T], size: int) -> Iterable[list[T]]:
    """`items` in consecutive lists of at most `size`."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
