"""The build itself: labels, generation, filters, then the data set written whole."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from holisafe import __version__
from holisafe.build.common import (
    LABEL_ROUTES,
    REASONS,
    TEST_FILE,
    TRAIN_FILE,
    BuildError,
    Malformed,
)
from holisafe.build.filters import (
    Pair,
    Rejection,
    remove_near_duplicates,
    split_by_image,
    string_mismatch,
)
from holisafe.build.prompts import load_prompt
from holisafe.build.replies import parse_items, parse_label, parse_type_check
from holisafe.build.sources import SourceImage, read_source
from holisafe.build.stages import (
    Budget,
    ReplyStore,
    Stage,
    StageResult,
    _generate_replies,
    _job,
    _Lazy,
    run_stage,
)
from holisafe.core import taxonomy
from holisafe.core.files import read_regular_text
from holisafe.core.folders import new_folder
from holisafe.core.progress import progress_bar
from holisafe.core.records import GenerationSettings, Request
from holisafe.core.safe_json import parse_json
from holisafe.core.sample import Sample
from holisafe.data.export import export_samples
from holisafe.data.loaders import read_dataset
from holisafe.judges.llm import LLMJudge, default_template, parse_judge_output
from holisafe.models import ModelOptions, parse_spec


@dataclass(frozen=True)
class BuildSettings:
    """One build. `source` is a manifest (`.jsonl` / `.csv`) or a folder of unlabelled images,
    which then needs `label_model` (`label_by` `llm`, any model, or `head`, a Safe-VLM).
    `store` defaults to `OUT/build.sqlite`; `max_requests` caps the model requests of one call,
    `token_budget` the tokens the providers report (checked between batches);
    prompt paths replace the shipped prompts."""

    source: str | Path
    out: str | Path
    generator: str
    judge: str | None = None
    label_model: str | None = None
    label_by: str = "llm"
    per_type: int = 1
    retries: int = 2
    test_ratio: float = 0.26
    seed: int = 0
    dedup_threshold: float = 0.8
    max_requests: int | None = None
    token_budget: int | None = None
    store: str | Path | None = None
    generate_prompt: str | Path | None = None
    check_type_prompt: str | Path | None = None
    label_prompt: str | Path | None = None
    judge_template: str | Path | None = None
    generation: GenerationSettings = GenerationSettings(max_new_tokens=2048, temperature=0.7)
    generator_options: ModelOptions = ModelOptions()
    judge_options: ModelOptions = ModelOptions()
    label_options: ModelOptions = ModelOptions()

    def __post_init__(self) -> None:
        checks = {
            "per_type must be at least 1": self.per_type >= 1,
            "retries must be 0 or more": self.retries >= 0,
            "test_ratio must be from 0 to 1": 0 <= self.test_ratio <= 1,
            "dedup_threshold must be above 0 and at most 1": 0 < self.dedup_threshold <= 1,
            "max_requests must be 0 or more": self.max_requests is None or self.max_requests >= 0,
            "token_budget must be 0 or more": self.token_budget is None or self.token_budget >= 0,
            f"label_by must be one of {', '.join(LABEL_ROUTES)}": self.label_by in LABEL_ROUTES,
        }
        problems = [problem for problem, ok in checks.items() if not ok]
        if problems:
            raise BuildError("; ".join(problems))
        for spec in (self.generator, self.judge, self.label_model):
            if spec is not None:
                parse_spec(spec)  # a bad spec fails now, not after paying for a stage

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store is not None else Path(self.out) / "build.sqlite"


@dataclass
class BuildOutcome:
    """What a build call did. `complete` when the data set was written; otherwise `pending`
    (stage → requests still to make: budget spent, or a dry run) and `failures` (requests that
    got no reply; a rerun asks again) say what is left."""

    complete: bool
    requests: int
    tokens: int  # as the providers reported them
    pending: dict[str, int]
    failures: list[tuple[str, str]]
    rejections: list[Rejection]
    estimate: int = 0  # dry run: the most requests the build may still make
    provenance: dict | None = None
    files: list[Path] = field(default_factory=list)


class _Build:
    """The state of one build call; the stages in order."""

    def __init__(self, settings: BuildSettings, budget: Budget, bar):
        self.s = settings
        self.budget = budget
        self.bar = bar
        self.prompts = {
            "generate": load_prompt("generate", settings.generate_prompt),
            "check_type": load_prompt("check_type", settings.check_type_prompt),
            "label": load_prompt("label", settings.label_prompt),
        }
        self.store = ReplyStore(settings.store_path)
        self.rejections: list[Rejection] = []
        self.failures: list[tuple[str, str]] = []
        self.pending: dict[str, list[str]] = {}  # stage → keys not asked (budget)
        self.judge_settings = GenerationSettings(max_new_tokens=512, temperature=0.0)

    def stage(self, stage: Stage, keys: Sequence[str]) -> StageResult:
        result = run_stage(self.store, stage, keys, self.budget, self.bar)
        self.failures += [(f"{stage.name} {key}", error) for key, error in result.failed.items()]
        if result.pending:
            self.pending[stage.name] = result.pending
        return result

    def batch(self, options: ModelOptions) -> int:
        return max(options.batch_size, options.concurrency)

    # -- labels

    def label(self, images: list[SourceImage]) -> list[SourceImage]:
        unlabelled = [image for image in images if image.image_safe is None]
        if not unlabelled:
            return images
        if self.s.label_model is None:
            raise BuildError("a folder of unlabelled images needs --label-model (and --label-by)")
        by_key = {f"{image.name}|{image.digest}": image for image in unlabelled}
        model = _Lazy(self.s.label_model, self.s.label_options, self.budget)
        source = f"{self.s.label_by}:{self.s.label_model}"
        if self.s.label_by == "head":
            ask, parse, attempts = self._head_labels(model, by_key), _head_label, 1
            job = _job(source)
        else:
            ask, parse = self._llm_labels(model, by_key), lambda key, text: parse_label(text)
            attempts = self.s.retries + 1
            job = _job(source, self.prompts["label"].sha256, self.judge_settings.as_dict())
        stage = Stage("label", job, ask, parse, attempts, self.batch(self.s.label_options))
        result = self.stage(stage, list(by_key))
        labelled = []
        for image in images:
            if image.image_safe is not None:
                labelled.append(image)
            elif (key := f"{image.name}|{image.digest}") in result.values:
                label = taxonomy.IMAGE_SAFETY_LABELS[result.values[key]]
                subcategory = None if label == "safe" else label
                labelled.append(
                    SourceImage(image.image, image.digest, label == "safe", subcategory, source)
                )
            elif key in result.malformed:
                self.rejections.append(
                    Rejection(
                        "unlabelled",
                        image.name,
                        f"no usable label: {result.why[key]}",
                        replies=tuple(result.malformed[key]),
                    )
                )
        return labelled

    def _llm_labels(self, model: _Lazy, by_key: dict[str, SourceImage]):
        text = self.prompts["label"].text.format(labels=", ".join(taxonomy.IMAGE_SAFETY_LABELS))

        def ask(keys):
            requests = [Request(query=text, image=by_key[k].image.load()) for k in keys]
            return _generate_replies(model, keys, requests, self.judge_settings)

        return ask

    @staticmethod
    def _head_labels(model: _Lazy, by_key: dict[str, SourceImage]):
        def ask(keys):
            guard = model()
            if not getattr(guard, "is_safe_vlm", False):
                raise BuildError(f"{guard.spec} has no safety head; use --label-by llm")
            predictions = guard.classify([by_key[k].image.load() for k in keys])
            return [
                (k, json.dumps(asdict(p)), None) for k, p in zip(keys, predictions, strict=True)
            ]

        return ask

    # -- generation

    def generate(self, images: list[SourceImage]) -> list[Pair]:
        by_key = {image.key: image for image in images}
        model = _Lazy(self.s.generator, self.s.generator_options, self.budget)
        prompt = self.prompts["generate"]

        def ask(keys):
            requests = [
                Request(query=self._generation_text(by_key[k]), image=by_key[k].image.load())
                for k in keys
            ]
            return _generate_replies(model, keys, requests, self.s.generation)

        job = _job(self.s.generator, prompt.sha256, self.s.per_type, self.s.generation.as_dict())
        stage = Stage(
            "generate",
            job,
            ask,
            lambda key, text: parse_items(text, by_key[key], self.s.per_type),
            self.s.retries + 1,
            self.batch(self.s.generator_options),
        )
        result = self.stage(stage, list(by_key))
        pairs = []
        for image in images:
            if image.key in result.values:
                generated = result.values[image.key]
                pairs += [Pair(image, item) for item in generated.items]
                self.rejections += [
                    Rejection(
                        "malformed_item",
                        image.name,
                        dropped.detail,
                        given=json.dumps(dropped.given, ensure_ascii=False),
                    )
                    for dropped in generated.dropped
                ]
            elif image.key in result.malformed:
                replies = result.malformed[image.key]
                detail = f"{len(replies)} malformed replies; the last: {result.why[image.key]}"
                self.rejections.append(
                    Rejection("malformed_output", image.name, detail, replies=tuple(replies))
                )
        return pairs

    def _generation_text(self, image: SourceImage) -> str:
        subcategories = [image.subcategory] if image.subcategory else taxonomy.SUBCATEGORIES
        return self.prompts["generate"].text.format(
            image=image.describe(),
            types=", ".join(image.types),
            per_type=self.s.per_type,
            subcategories=", ".join(subcategories),
        )

    # -- filters

    def free_filters(self, pairs: list[Pair]) -> list[Pair]:
        kept = []
        for pair in pairs:
            problem = string_mismatch(pair.item)
            if problem is None:
                kept.append(pair)
            else:
                self.rejections.append(
                    Rejection("string_match", pair.image.name, problem, pair.item)
                )
        kept, duplicates = remove_near_duplicates(kept, self.s.dedup_threshold)
        self.rejections += duplicates
        return kept

    def judged(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs both judge checks pass; a pair still unchecked is left out (pending)."""
        if self.s.judge is None:
            return pairs
        by_key = {pair.key: pair for pair in pairs}
        model = _Lazy(self.s.judge, self.s.judge_options, self.budget)
        types = self.stage(self._type_stage(model, by_key), list(by_key))
        responses = self.stage(self._response_stage(model, by_key), list(by_key))
        kept = []
        for key, pair in by_key.items():
            verdicts = [
                ("type_check", types, self._type_problem),
                ("response_check", responses, self._response_problem),
            ]
            problems = []
            for reason, result, problem in verdicts:
                if key in result.malformed:
                    problems.append((reason, f"no usable judge reply: {result.why[key]}"))
                elif key in result.values and (why := problem(pair, result.values[key])):
                    problems.append((reason, why))
            if problems:
                reason, detail = problems[0]
                self.rejections.append(Rejection(reason, pair.image.name, detail, pair.item))
            elif key in types.values and key in responses.values:
                kept.append(pair)
        return kept

    def _type_stage(self, model: _Lazy, by_key: dict[str, Pair]) -> Stage:
        prompt = self.prompts["check_type"]

        def ask(keys):
            requests = [
                Request(
                    query=prompt.text.format(query=by_key[k].item.query),
                    image=by_key[k].image.image.load(),
                )
                for k in keys
            ]
            return _generate_replies(model, keys, requests, self.judge_settings)

        job = _job(self.s.judge, prompt.sha256, self.judge_settings.as_dict())
        return Stage(
            "type_check",
            job,
            ask,
            lambda key, text: parse_type_check(text),
            self.s.retries + 1,
            self.batch(self.s.judge_options),
        )

    def _response_stage(self, model: _Lazy, by_key: dict[str, Pair]) -> Stage:
        template = None
        if self.s.judge_template is not None:
            from holisafe.judges import load_template

            template = load_template(self.s.judge_template)

        def ask(keys):
            judge = LLMJudge(model(), template=template, settings=self.judge_settings)
            requests, unasked = judge.prepare(
                [(_sample(by_key[k], k), by_key[k].item.response) for k in keys]
            )
            for i, verdict in unasked.items():
                yield keys[i], verdict.raw, verdict.error
            asked = list(requests)
            for i, response in judge.model.answers(list(requests.values()), judge.settings):
                verdict = judge.verdict(response)
                yield keys[asked[i]], verdict.raw, verdict.error

        def parse(key, text):
            verdict = parse_judge_output(text)
            if verdict.error:
                raise Malformed(verdict.error)
            return verdict.followed

        rubric = template if template is not None else default_template()
        job = _job(self.s.judge, rubric, self.judge_settings.as_dict())
        return Stage(
            "response_check", job, ask, parse, self.s.retries + 1, self.batch(self.s.judge_options)
        )

    @staticmethod
    def _type_problem(pair: Pair, answer: tuple[bool, bool]) -> str | None:
        safeness = taxonomy.TYPES[pair.item.type]
        expected = (safeness.query_safe, safeness.combined_safe)
        if answer == expected:
            return None

        def word(safe: bool) -> str:
            return "safe" if safe else "unsafe"

        return (
            f"the judge read the query as {word(answer[0])} and the pair as "
            f"{word(answer[1])}; {pair.item.type} means {word(expected[0])} and "
            f"{word(expected[1])}"
        )

    @staticmethod
    def _response_problem(pair: Pair, followed: bool) -> str | None:
        expected = taxonomy.TYPES[pair.item.type].expected_behaviour
        return None if followed else f"the judge found the response does not {expected}"


def _head_label(key: str, text: str) -> int:
    return taxonomy.label_index(parse_json(text)["label"])


def _sample(pair: Pair, sample_id: int | str) -> Sample:
    item = pair.item
    return Sample(
        id=sample_id,
        query=item.query,
        image=pair.image.image,
        type=item.type,
        category=taxonomy.category_of(item.subcategory),
        subcategory=item.subcategory,
        image_safety_label=pair.image.label,
        response=item.response,
    )


def build_dataset(
    settings: BuildSettings, *, dry_run: bool = False, progress: bool = False
) -> BuildOutcome:
    """Run (or resume) a build; with `dry_run`, make no request and say how many are left."""
    _check_out(Path(settings.out))
    images = read_source(settings.source)
    budget = Budget(0, None) if dry_run else Budget(settings.max_requests, settings.token_budget)
    with progress_bar(progress) as bar:
        build = _Build(settings, budget, bar)
        try:
            labelled = build.label(images)
            candidates = build.generate(labelled)
            kept = build.judged(build.free_filters(candidates))
            total_replies = build.store.count()
        finally:
            build.store.close()
    outcome = BuildOutcome(
        complete=not build.pending and not build.failures,
        requests=budget.used,
        tokens=budget.tokens,
        pending={stage: len(keys) for stage, keys in build.pending.items()},
        failures=build.failures,
        rejections=build.rejections,
    )
    if dry_run:
        outcome.estimate = _estimate(settings, labelled, build.pending)
    elif outcome.complete:
        counts = {
            "images": len(images),
            "generated": len(candidates),
            "kept": len(kept),
            "replies_stored": total_replies,
        }
        outcome.files, outcome.provenance = _write(settings, build, labelled, kept, counts)
    return outcome


def _check_out(out: Path) -> None:
    """Refuse to replace `train/` or `test/` folders that an earlier build did not write."""
    foreign = [
        split for split in ("train", "test")
        if (out / split).exists() and not (out / "provenance.json").is_file()
    ]  # fmt: skip
    if foreign:
        raise BuildError(
            f"{out} already holds {' and '.join(foreign)}/ from something other than a build; "
            "choose another output folder"
        )


def _estimate(settings: BuildSettings, labelled: list[SourceImage], pending: dict) -> int:
    """The most requests the build may still make, first attempts only: what is pending now,
    plus the two judge checks of every pair not generated yet (an unlabelled image counted at
    three types)."""
    waiting = set(pending.get("generate", ()))
    new_pairs = sum(len(i.types) for i in labelled if i.key in waiting)
    new_pairs += 3 * len(pending.get("label", ()))
    checks = len(pending.get("type_check", ())) + len(pending.get("response_check", ()))
    if settings.judge is not None:
        checks += 2 * new_pairs * settings.per_type
    labels = len(pending.get("label", ()))
    return labels + labels + len(waiting) + checks  # a newly labelled image needs a generation


def _write(settings: BuildSettings, build: _Build, labelled, kept: list[Pair], counts: dict):
    """The split data set, validated, with its provenance and rejections; the files written."""
    out = Path(settings.out)
    train, test = split_by_image(kept, settings.test_ratio, settings.seed)
    files, splits, sample_id = [], {}, 0
    for split, pairs, name in (("train", train, TRAIN_FILE), ("test", test, TEST_FILE)):
        samples = []
        for pair in pairs:
            samples.append(_sample(pair, sample_id))
            sample_id += 1
        splits[split] = _split_counts(samples)
        if not samples:
            shutil.rmtree(out / split, ignore_errors=True)
            continue
        with new_folder(out / split, overwrite=True) as folder:  # whole, or not at all
            export_samples(samples, folder, "json", file_name=name)
            _validate(folder)
        files.append(out / split / name)
    rejected = Counter(r.reason for r in build.rejections)
    split_of = {p.image.name: "train" for p in train} | {p.image.name: "test" for p in test}
    provenance = {
        "holisafe_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(Path(settings.source).resolve()),
        "generator": {"model": settings.generator, **settings.generation.as_dict()},
        "judge": settings.judge,
        "labeller": (
            f"{settings.label_by}:{settings.label_model}" if settings.label_model else None
        ),
        "prompts": {
            **{p.name: {"file": p.file, "sha256": p.sha256} for p in build.prompts.values()},
            "judge_template": _template_provenance(settings.judge_template),
        },
        "settings": {
            "per_type": settings.per_type,
            "retries": settings.retries,
            "dedup": {"similarity": "token-set Jaccard", "threshold": settings.dedup_threshold},
            "test_ratio": settings.test_ratio,
            "seed": settings.seed,
        },
        "counts": {**counts, "rejected": {r: rejected.get(r, 0) for r in REASONS}, **splits},
        "images": [
            {
                "image": i.name,
                "image_safe": i.image_safe,
                "category": i.category,
                "subcategory": i.subcategory,
                "label_source": i.label_source,
                "split": split_of.get(i.name),  # None: every pair was rejected
            }
            for i in labelled
        ],
    }
    files.append(_write_json(out / "provenance.json", provenance))
    lines = "".join(json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in build.rejections)
    (out / "rejections.jsonl").write_text(lines, encoding="utf-8")
    files.append(out / "rejections.jsonl")
    return files, provenance


def _split_counts(samples: list[Sample]) -> dict:
    by_type_category: dict[str, dict[str, int]] = defaultdict(dict)
    for (category, type_code), n in sorted(Counter((s.category, s.type) for s in samples).items()):
        by_type_category[category][type_code] = n
    return {
        "images": len({s.image.name for s in samples}),
        "pairs": len(samples),
        "by_type_category": dict(by_type_category),
    }


def _validate(folder: Path) -> None:
    dataset = read_dataset(folder)
    if dataset.problems:
        raise BuildError(
            f"the written data set {folder} does not validate: "
            + "; ".join(map(str, dataset.problems[:5]))
        )


def _template_provenance(path: str | Path | None) -> dict:
    if path is None:
        return {
            "file": "default",
            "sha256": hashlib.sha256(default_template().encode("utf-8")).hexdigest(),
        }
    text = read_regular_text(path)
    return {"file": str(path), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
