"""The evaluation loop: a model answers a benchmark, judges score it, all through the store.

Answering and judging run as one pipeline (`holisafe.run.pipeline`): every response and verdict is
committed as it arrives, so an interrupted run (Ctrl-C, a crash, `kill -9`) resumes where it
stopped when the same command runs again, and any number of processes on one machine may work
on one run together (`holisafe.run.workers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.progress import Progress

from holisafe.core.errors import DataError
from holisafe.core.progress import RateColumn, progress_bar
from holisafe.core.records import GenerationSettings, Model, Request, Response
from holisafe.core.sample import ImageError, ImageRef
from holisafe.data import Sample, first, load_samples
from holisafe.judges import Judge, LLMJudge, load_judge
from holisafe.models import ModelOptions, gate_of, load_model
from holisafe.run import provenance
from holisafe.run.judge_batch import check_batchable, judge_in_batch
from holisafe.run.leases import DEFAULT_LEASE_S, Leases
from holisafe.run.pipeline import Pipeline
from holisafe.store import AUDIT_BENCHMARK, Run, Store, StoreError, bench_fingerprint


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
    lease_s: float = DEFAULT_LEASE_S,
    judge_batch: bool = False,
    batch_poll_s: float = 30.0,
) -> EvalOutcome:
    """Generate the missing responses of a run and the missing verdicts of each judge, judging
    each response as soon as it is stored.

    The model is loaded only when responses are missing; pass `model` to reuse a loaded one.
    LLM judges are reached with `judge_options` (default: `options` without the judged model's
    base URL and API key) and follow `judge_protocol` (`toolkit` or `official`, see
    `load_judge`) with the template file `judge_template` if given. Other processes may
    evaluate the same run at the same time: each sample is claimed for `lease_s` seconds
    (renewed while this process lives) before it is answered or judged. With `judge_batch`,
    LLM judges send their requests through the provider's batch API once answering is done
    (see `holisafe.run.judge_batch`), checking on the batch every `batch_poll_s` seconds.
    """
    # the gate is part of the run's settings: a gated run never mixes with an ungated one
    gate = gate_of(model_spec, options) if model is None else getattr(model, "gate", None)
    dataset = load_samples(bench, skip_invalid=skip_invalid, progress=progress)
    samples = first(dataset.samples, limit)
    if not samples:
        raise DataError(f"{bench}: no valid samples to evaluate{_first_problem(dataset)}")
    judge_options = judge_options or replace(options, base_url=None, api_key=None)
    # the judged model's gate is not the judges'
    judge_options = replace(judge_options, gate=None, gate_refusal=None)
    judge_objects = [load_judge(j, judge_options, judge_template, judge_protocol) for j in judges]
    with Store(store_path) as store, progress_bar(progress, RateColumn()) as bar:
        run = store.open_run(
            model_spec,
            samples,
            settings.as_dict() | (gate.as_dict() if gate else {}),
            run_id=run_id,
            source=bench_source(bench),
            benchmark=dataset.benchmark_name,
        )
        outcome = EvalOutcome(
            run=run, skipped=[str(p) for p in dataset.problems], notes=_notes(judge_objects)
        )
        judge_ids = [judge.id for judge in judge_objects]
        loaded: list[Model] = []
        recorded: list[int] = []  # this process's provenance row

        def load() -> Model:
            loaded.append(model or load_model(model_spec, options))
            description = provenance.describe(loaded[0], judge_ids, judge_protocol)
            recorded.append(provenance.record(store.path, run.id, description))
            return loaded[0]

        outcome.reused = store.reuse_answers(run.id)
        with Leases(store.path, lease_s) as leases:
            pipeline = Pipeline(store, leases, run.id, samples, bar)
            pipeline.answer_with(
                load, lambda answerer, batch: _answer(answerer, batch, settings), options.batch_size
            )
            batched = _batched(judge_objects, judge_batch)
            for judge in judge_objects:
                if judge not in batched:
                    pipeline.judge_with(judge, judge_options.batch_size)
            counts = pipeline.run()
        for judge in batched:
            counts.judged[judge.id] = judge_in_batch(
                store, run.id, judge, samples,
                poll_s=batch_poll_s, lease_s=lease_s, say=_say(bar, progress),
            )  # fmt: skip
        if not loaded:
            description = provenance.describe(None, judge_ids, judge_protocol)
            recorded.append(provenance.record(store.path, run.id, description))
        senders = [*loaded, *(getattr(judge, "model", None) for judge in judge_objects)]
        provenance.add_reencoded(store.path, recorded[0], provenance.reencoded_images(senders))
        outcome.generated, outcome.judged = counts.answered, counts.judged
        for judge in judge_objects:
            outcome.verdict_errors[judge.id] = store.verdict_errors(run.id, judge.id)
        outcome.response_errors = store.response_errors(run.id)
        unanswered = store.pending_samples(run.id, [s.id for s in samples])
        if not unanswered:
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
    judge_batch: bool = False,
    batch_poll_s: float = 30.0,
) -> list[EvalOutcome]:
    """Add judges to the responses already in a store, without generating any.

    Judges every benchmark run (or run `run_id`, which may be an audit run: see
    `audit_samples`), only the verdicts each judge still lacks or failed. Each benchmark run's
    benchmark is read again from where the run recorded it (or from `bench`, when it has moved)
    for the images, and must still match the run's fingerprint. `judge_batch`
    sends LLM judges through a batch API, as in `evaluate`.
    """
    judge_objects = [load_judge(j, options, judge_template, judge_protocol) for j in judges]
    outcomes = []
    with Store(store_path, create=False) as store, progress_bar(progress, RateColumn()) as bar:
        runs = [store.get_run(run_id)] if run_id is not None else store.runs()
        if not runs:
            raise StoreError(f"no runs in {store.path}; answer a benchmark with holisafe eval")
        read: dict[str, list[Sample]] = {}
        for run in runs:
            samples = run_samples(store, run, bench, read)
            outcome = EvalOutcome(run=run, notes=_notes(judge_objects))
            with Leases(store.path) as leases:
                pipeline = Pipeline(store, leases, run.id, samples, bar)
                batched = _batched(judge_objects, judge_batch)
                for judge in judge_objects:
                    if judge not in batched:
                        pipeline.judge_with(judge, options.batch_size)
                outcome.judged = pipeline.run().judged
            for judge in batched:
                outcome.judged[judge.id] = judge_in_batch(
                    store, run.id, judge, samples, poll_s=batch_poll_s, say=_say(bar, progress)
                )
            for judge in judge_objects:
                outcome.verdict_errors[judge.id] = store.verdict_errors(run.id, judge.id)
            outcomes.append(outcome)
    return outcomes


def _batched(judges: Sequence[Judge], judge_batch: bool) -> list[LLMJudge]:
    """The LLM judges that go through a batch API (all of them with `judge_batch`)."""
    if not judge_batch:
        return []
    return [check_batchable(judge) for judge in judges if isinstance(judge, LLMJudge)]


def _say(bar: Progress, progress: bool):
    return bar.console.print if progress else lambda line: None


def _first_problem(dataset) -> str:
    if not dataset.problems:
        return ""
    return f" ({len(dataset.problems)} skipped; the first, {dataset.problems[0]})"


def _notes(judges: Sequence[Judge]) -> list[str]:
    return [note for judge in judges for note in judge.notes]


def run_samples(
    store: Store, run: Run, bench: str | Path | None, read: dict[str, list[Sample]]
) -> list[Sample]:
    """The run's samples read again from its benchmark, checked against its fingerprint (an
    audit run's from the store)."""
    if run.benchmark == AUDIT_BENCHMARK:
        return audit_samples(store, run)
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


# An audited request is judged against the head's verdict on its image: one the head flags is
# to be refused (read as an unsafe image with a safe query), any other answered.
_AUDIT_TYPES = {True: "USU", False: "SSS"}


def audit_samples(store: Store, run: Run) -> list[Sample]:
    """An audit run's chat requests as samples, each with the type its head verdict implies and
    its image where the audit kept it (an image that was not kept cannot be read)."""
    samples = []
    for record in store.records(run.id):
        extra = record.extra or {}
        if extra.get("endpoint") != "chat":
            continue
        if extra.get("safety") is None:
            raise StoreError(
                f"run {run.id} audits {run.model}, which has no safety head: its requests have "
                "no verdict to judge the replies against (the report counts their refusals)"
            )
        name = record.sample.image or "(no image)"
        data = store.audit_image(name.removeprefix("sha256:")) if record.sample.image else None
        if data is None:
            name += " (not kept: serve with --audit-images)" if record.sample.image else ""
        flagged = extra["safety"]["label"] != "safe"
        samples.append(
            Sample(
                id=record.sample.id,
                query=record.sample.query,
                image=ImageRef(name, data=data or b""),
                type=_AUDIT_TYPES[flagged],
            )
        )
    return samples


def bench_source(bench: str | Path) -> str:
    """A local benchmark as an absolute path (so it is found from any folder), or a Hub id."""
    path = Path(bench)
    return str(path.resolve()) if path.exists() else str(bench)


def _answer(model: Model, batch: list[Sample], settings: GenerationSettings) -> list[Response]:
    """The model's responses; a sample whose image cannot be read gets an error response."""
    requests: dict[int, Request] = {}
    failed: dict[int, Response] = {}
    for i, sample in enumerate(batch):
        try:
            image, file = sample.image.load_with_file()
            requests[i] = Request(query=sample.query, image=image, image_file=file)
        except ImageError as exc:
            failed[i] = Response(text=None, error=str(exc))
    answered = iter(model.generate(list(requests.values()), settings) if requests else [])
    return [failed[i] if i in failed else next(answered) for i in range(len(batch))]
