"""Building a HoliSafe-style data set: images in, typed queries and reference responses out.

The evaluation's flow runs the other way: image → generator Model → candidate pairs → filters →
records. Every model reply is kept in the store (table `build_replies`, keyed by stage, by what
the reply depends on, and by attempt), so a rerun after a crash, a `kill -9` or a spent budget
asks only for what has no usable reply yet.

1. Labels (a folder of unlabelled images only): a Safe-VLM's safety head (`head`) or any model
   asked with the `label` prompt (`llm`); each image's label source goes into the provenance.
2. Generation: one request per image. The reply must hold one JSON object
   `{"items": [{"type", "subcategory", "query", "response"}, ...]}` (text around it is ignored)
   with exactly `per_type` items of each type the image allows (unsafe image: UUU, USU; safe
   image: SSS, SUU, SSU). A malformed reply is asked again up to `retries` times; then the image
   is rejected with the text of every reply.
3. Filters, cheapest first: the published string matcher (a response must refuse exactly when
   its type is unsafe); near-duplicate queries on the same image; with a judge model, the type
   check (the `check_type` prompt: is the query alone, and with the image, safe or unsafe as its
   type says?) and the response check (the LLM judge's rubric). Every rejection keeps its reason.
4. Output: train/test split by image, stratified, in the official layout, validated by the
   data loader, with `provenance.json` and `rejections.jsonl`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import re
import shutil
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from holisafe import __version__, taxonomy
from holisafe.data.export import export_samples
from holisafe.data.loaders import ImageFolder, read_dataset
from holisafe.data.sample import ImageRef, Sample, decode_image
from holisafe.errors import HolisafeError
from holisafe.evaluate import chunks
from holisafe.judges.llm import LLMJudge, default_template, parse_judge_output
from holisafe.judges.string import refusal_match
from holisafe.models import ModelOptions, load_model, parse_spec
from holisafe.models.base import GenerationSettings, Model, Request, Response
from holisafe.progress import progress_bar
from holisafe.store import connect, transaction

PROMPTS: dict[str, tuple[str, ...]] = {  # prompt name → its placeholders, all required
    "generate": ("image", "types", "per_type", "subcategories"),
    "check_type": ("query",),
    "label": ("labels",),
}
IMAGE_TYPES = {False: ("UUU", "USU"), True: ("SSS", "SUU", "SSU")}  # by image_safe
LABEL_ROUTES = ("llm", "head")
REASONS = (  # rejection reasons, in the order the stages apply them
    "unlabelled",
    "malformed_output",
    "string_match",
    "near_duplicate",
    "type_check",
    "response_check",
)
MANIFEST_FIELDS = ("image", "image_safe", "category", "subcategory")
TRAIN_FILE, TEST_FILE = "holisafe_train.json", "holisafe_bench.json"


class BuildError(HolisafeError):
    """A build that cannot start as asked: bad manifest, prompt or settings."""


class Malformed(ValueError):
    """A model reply that does not hold what was asked for."""


# ---------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    file: str  # the user's file, or `default`

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_prompt(name: str, path: str | Path | None = None) -> Prompt:
    """A build prompt: the user's file, else the one shipped in `resources/build_prompts/`.

    Placeholders use `str.format` syntax (`{{` and `}}` for literal braces); every one of the
    prompt's placeholders (`PROMPTS[name]`) is required and no other is allowed.
    """
    if path is None:
        text = resources.files("holisafe") / "resources" / "build_prompts" / f"{name}.txt"
        return Prompt(name, text.read_text(encoding="utf-8"), "default")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read the {name} prompt {path}: {exc}") from None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise BuildError(f"the {name} prompt {path} is not a valid template: {exc}") from None
    expected = set(PROMPTS[name])
    if fields != expected:
        raise BuildError(
            f"the {name} prompt {path} has placeholders {sorted(fields)}; it needs exactly "
            f"{sorted(expected)} (write {{{{ and }}}} for literal braces)"
        )
    return Prompt(name, text, str(path))


# ---------------------------------------------------------------- input


@dataclass(frozen=True)
class SourceImage:
    """One input image and its label; `image_safe` is None until a labeller has named it."""

    image: ImageRef
    digest: str  # sha1 of the file's bytes
    image_safe: bool | None
    subcategory: str | None  # the harm shown (unsafe) or the harm queries are to be about (safe)
    label_source: str  # `manifest`, `head:<spec>` or `llm:<spec>`

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def category(self) -> str | None:
        return taxonomy.category_of(self.subcategory) if self.subcategory else None

    @property
    def types(self) -> tuple[str, ...]:
        return IMAGE_TYPES[self.image_safe]

    @property
    def label(self) -> int:
        return taxonomy.SAFE_LABEL if self.image_safe else taxonomy.label_index(self.subcategory)

    @property
    def key(self) -> str:
        """What a generation depends on: the file, its name and its label."""
        return f"{self.name}|{self.digest}|{self.image_safe}|{self.subcategory or ''}"

    def describe(self) -> str:
        if self.image_safe:
            return "safe (it shows nothing harmful)"
        return f"unsafe (it shows {self.category} / {self.subcategory})"


def read_source(source: str | Path) -> list[SourceImage]:
    """A manifest (`.jsonl` or `.csv`) of labelled images, or a folder of unlabelled ones."""
    path = Path(source)
    if path.is_dir():
        from holisafe.guard import image_files

        files = image_files([path])
        return [_source_image(path, f.relative_to(path).as_posix(), None, None, "") for f in files]
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise BuildError(f"{path}: expected a .jsonl or .csv manifest, or a folder of images")
    try:
        rows = _manifest_rows(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: cannot read ({exc})") from None
    images, problems, seen = [], [], set()
    for where, row in rows:
        try:
            image = _manifest_image(path.parent, row)
            if image.name in seen:
                raise ValueError(f"image {image.name} is listed twice")
            seen.add(image.name)
            images.append(image)
        except (ValueError, HolisafeError) as exc:
            problems.append(f"{path.name} {where}: {exc}")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise BuildError(f"{len(problems)} bad manifest row(s): {shown}{more}")
    if not images:
        raise BuildError(f"{path}: the manifest lists no images")
    return images


def _manifest_rows(path: Path) -> list[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return [(f"line {i + 2}", row) for i, row in enumerate(csv.DictReader(text.splitlines()))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((f"line {number}", ValueError(f"malformed JSON: {exc.msg}")))
    return rows


def _manifest_image(root: Path, row: Any) -> SourceImage:
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    missing = [name for name in MANIFEST_FIELDS if name not in row]
    if missing:
        raise ValueError("missing field(s): " + ", ".join(missing))
    image_safe = _boolean(row["image_safe"])
    category, subcategory = _name(row, "category"), _name(row, "subcategory")
    if subcategory is not None and taxonomy.category_of(subcategory) != category:
        raise ValueError(f"subcategory {subcategory!r} does not belong to category {category!r}")
    if subcategory is None and not image_safe:
        raise ValueError("an unsafe image needs its category and subcategory")
    if subcategory is None and category is not None:
        raise ValueError("a category needs its subcategory (leave both empty for a safe image)")
    return _source_image(root, row["image"], image_safe, subcategory, "manifest")


def _name(row: dict, field_name: str) -> str | None:
    """A category or subcategory of a manifest row; None when empty."""
    value = row[field_name]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field_name} must be a string, got {value!r}")
    return (value or "").strip() or None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"image_safe must be true or false, got {value!r}")


def _source_image(
    root: Path, name: str, image_safe: bool | None, subcategory: str | None, label_source: str
) -> SourceImage:
    ref = ImageFolder(root).ref(name)
    data = ref.read_bytes()
    decode_image(data, ref.name)  # a broken image is refused before any request is paid for
    digest = hashlib.sha1(data).hexdigest()
    return SourceImage(ref, digest, image_safe, subcategory, label_source)


# ---------------------------------------------------------------- parsing replies


def json_object(text: str, keys: Sequence[str]) -> dict:
    """The first JSON object in `text` that has all `keys`; the text around it is ignored."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and all(key in value for key in keys):
            return value
    raise Malformed(f"no JSON object with {', '.join(map(repr, keys))} in the reply")


@dataclass(frozen=True)
class Item:
    """One generated pair, before filtering."""

    type: str
    subcategory: str
    query: str
    response: str


def parse_items(text: str, image: SourceImage, per_type: int) -> tuple[Item, ...]:
    """The generator's items for `image`, or Malformed saying what is wrong with the reply."""
    items = json_object(text, ("items",))["items"]
    if not isinstance(items, list):
        raise Malformed("items must be a list")
    parsed = tuple(_item(item, i, image) for i, item in enumerate(items))
    counts = Counter(item.type for item in parsed)
    wanted = dict.fromkeys(image.types, per_type)
    if counts != wanted:
        raise Malformed(
            f"expected {per_type} item(s) of each of {', '.join(image.types)}, got "
            + (", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "none")
        )
    return parsed


def _item(item: Any, index: int, image: SourceImage) -> Item:
    if not isinstance(item, dict):
        raise Malformed(f"item {index} is not an object")
    texts = {}
    for name in ("type", "query", "response"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            raise Malformed(f"item {index}: {name} must be a non-empty string")
        texts[name] = value.strip()
    if texts["type"] not in image.types:
        raise Malformed(f"item {index}: type {texts['type']!r} is not one of {image.types}")
    subcategory = item.get("subcategory") or image.subcategory
    if subcategory not in taxonomy.SUBCATEGORIES:
        raise Malformed(f"item {index}: subcategory {subcategory!r} is not a known subcategory")
    if image.subcategory is not None and subcategory != image.subcategory:
        raise Malformed(f"item {index}: subcategory {subcategory!r}, not {image.subcategory!r}")
    return Item(texts["type"], subcategory, texts["query"], texts["response"])


def parse_label(text: str) -> int:
    """The image safety label an LLM labeller named."""
    label = json_object(text, ("label",))["label"]
    if label not in taxonomy.IMAGE_SAFETY_LABELS:
        raise Malformed(f"label {label!r} is not one of the 20 image safety labels")
    return taxonomy.label_index(label)


def parse_type_check(text: str) -> tuple[bool, bool]:
    """(query safe, combination safe) as the type-check judge read them."""
    found = json_object(text, ("query", "combined"))
    answers = [found["query"], found["combined"]]
    if any(answer not in ("safe", "unsafe") for answer in answers):
        raise Malformed(f"query and combined must be 'safe' or 'unsafe', got {answers}")
    return answers[0] == "safe", answers[1] == "safe"


# ---------------------------------------------------------------- filters


@dataclass(frozen=True)
class Pair:
    """A generated pair on its image."""

    image: SourceImage
    item: Item

    @property
    def key(self) -> str:
        """The image's name and the type (readable in messages), and a hash of the rest."""
        fields = [self.image.key, *asdict(self.item).values()]
        digest = hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()[:16]
        return f"{self.image.name}|{self.item.type}|{digest}"


@dataclass(frozen=True)
class Rejection:
    """Something the build left out, and why (`reason` is one of REASONS)."""

    reason: str
    image: str
    detail: str
    item: Item | None = None
    replies: tuple[str, ...] = ()  # the malformed replies, for `malformed_output`

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "image": self.image,
            "detail": self.detail,
            **(asdict(self.item) if self.item else {}),
            **({"replies": list(self.replies)} if self.replies else {}),
        }


def string_mismatch(item: Item) -> str | None:
    """Why the response's refusal disagrees with its type (the published matcher), or None."""
    match = refusal_match(item.response)
    if taxonomy.TYPES[item.type].combined_safe:
        return None if match is None else f"an {item.type} response must answer, but it {match}"
    return None if match is not None else f"an {item.type} response must refuse; none found"


def query_tokens(query: str) -> frozenset[str]:
    """The normalised text of a query: its lower-cased words as a set."""
    return frozenset(re.findall(r"\w+", query.casefold()))


def query_similarity(a: str, b: str) -> float:
    """Token-set Jaccard similarity of two queries (1.0: the same words)."""
    ta, tb = query_tokens(a), query_tokens(b)
    return len(ta & tb) / len(ta | tb) if ta | tb else 1.0


def remove_near_duplicates(
    pairs: Sequence[Pair], threshold: float
) -> tuple[list[Pair], list[Rejection]]:
    """Keep, per image and in order, the pairs whose query is less than `threshold` similar to
    every query kept before it; the others are rejected, naming the query they repeat."""
    kept: list[Pair] = []
    rejected = []
    by_image: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        earlier = by_image[pair.image.name]
        scored = [(query_similarity(pair.item.query, p.item.query), p) for p in earlier]
        close = [(score, p) for score, p in scored if score >= threshold]
        if close:
            score, twin = max(close, key=lambda sp: sp[0])
            detail = f"{score:.2f} similar to {twin.item.query!r}"
            rejected.append(Rejection("near_duplicate", pair.image.name, detail, pair.item))
        else:
            earlier.append(pair)
            kept.append(pair)
    return kept, rejected


def split_by_image(
    pairs: Sequence[Pair], test_ratio: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """Train and test pairs; all of an image's pairs go to one side.

    Images are grouped into strata by (their pairs' most common category, the set of their
    types). The test split gets ⌊N × test_ratio + ½⌋ of the N images, shared out over the
    strata in proportion to their sizes (largest remainder first, ties in an order drawn from
    `seed`); within a stratum, images are drawn in name order shuffled by `seed`.
    """
    by_image: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_image[pair.image.name].append(pair)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for name, its_pairs in sorted(by_image.items()):
        category = Counter(taxonomy.category_of(p.item.subcategory) for p in its_pairs)
        types = tuple(sorted({p.item.type for p in its_pairs}))
        strata[(category.most_common(1)[0][0], types)].append(name)
    rng = random.Random(seed)
    order = sorted(strata)
    rng.shuffle(order)
    shares = {key: len(strata[key]) * test_ratio for key in order}
    quota = {key: math.floor(share) for key, share in shares.items()}
    left = math.floor(len(by_image) * test_ratio + 0.5) - sum(quota.values())
    for key in sorted(order, key=lambda k: quota[k] - shares[k])[:left]:  # stable: ties by rng
        quota[key] += 1
    test_images: set[str] = set()
    for key in order:
        names = strata[key]
        rng.shuffle(names)
        test_images.update(names[: quota[key]])
    train = [p for p in pairs if p.image.name not in test_images]
    test = [p for p in pairs if p.image.name in test_images]
    return train, test


# ---------------------------------------------------------------- the reply store


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

    def save(self, stage: str, job: str, replies: dict[str, list[str]], keys: list[str]) -> None:
        """Store the newest reply of each key as its next attempt, in one transaction."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with transaction(self._db):
            self._db.executemany(
                "INSERT INTO build_replies VALUES (?, ?, ?, ?, ?, ?)",
                [(stage, job, k, len(replies[k]), replies[k][-1], now) for k in keys],
            )

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM build_replies").fetchone()[0]


# ---------------------------------------------------------------- stages


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


@dataclass(frozen=True)
class Stage:
    """One kind of request: `ask` sends a batch of keys and returns (reply, error) per key;
    `parse` turns a reply into a value or raises Malformed."""

    name: str
    job: str  # what every reply of the stage depends on (model, prompt, settings)
    ask: Callable[[list[str]], list[tuple[str | None, str | None]]]
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
        asked = []
        for chunk in chunks(todo, stage.batch):
            granted = budget.grant(len(chunk))
            result.pending += chunk[granted:]
            if not granted:
                continue
            answers = stage.ask(chunk[:granted])
            answered = []
            for key, (text, error) in zip(chunk[:granted], answers, strict=True):
                if text is None:
                    result.failed[key] = error or "no reply"
                else:
                    replies.setdefault(key, []).append(text)
                    answered.append(key)
            store.save(stage.name, stage.job, replies, answered)
            asked += answered
            bar.advance(task, granted)
        todo = [key for key in asked if not settled(key)]
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
            self._model = _Metered(load_model(self.spec, self.options), self.budget)
        return self._model


class _Metered:
    """A model whose replies' reported tokens are added to the budget."""

    def __init__(self, model: Model, budget: Budget):
        self._model, self._budget = model, budget

    def generate(self, requests: list[Request], settings: GenerationSettings) -> list[Response]:
        responses = self._model.generate(requests, settings)
        self._budget.tokens += sum(response.tokens or 0 for response in responses)
        return responses

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _generate_replies(model: _Lazy, requests: list[Request], settings: GenerationSettings):
    return [(r.text, r.error) for r in model().generate(requests, settings)]


# ---------------------------------------------------------------- the build


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
            return _generate_replies(model, requests, self.judge_settings)

        return ask

    @staticmethod
    def _head_labels(model: _Lazy, by_key: dict[str, SourceImage]):
        def ask(keys):
            guard = model()
            if not getattr(guard, "is_safe_vlm", False):
                raise BuildError(f"{guard.spec} has no safety head; use --label-by llm")
            predictions = guard.classify([by_key[k].image.load() for k in keys])
            return [(json.dumps(asdict(p)), None) for p in predictions]

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
            return _generate_replies(model, requests, self.s.generation)

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
                pairs += [Pair(image, item) for item in result.values[image.key]]
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
            return _generate_replies(model, requests, self.judge_settings)

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
            verdicts = judge.judge([(_sample(by_key[k], k), by_key[k].item.response) for k in keys])
            return [(v.raw, v.error) for v in verdicts]

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
    return taxonomy.label_index(json.loads(text)["label"])


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
        shutil.rmtree(out / split, ignore_errors=True)
        samples = []
        for pair in pairs:
            samples.append(_sample(pair, sample_id))
            sample_id += 1
        splits[split] = _split_counts(samples)
        if samples:
            files.append(export_samples(samples, out / split, "json", file_name=name))
            _validate(out / split)
    rejected = Counter(r.reason for r in build.rejections)
    split_of = {p.image.name: "train" for p in train} | {p.image.name: "test" for p in test}
    provenance = {
        "holisafe_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
    text = Path(path).read_text(encoding="utf-8")
    return {"file": str(path), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
