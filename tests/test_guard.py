"""The image guard: metrics by hand, the CLI, and the guard inside evaluation."""

import json
import os
import subprocess
import sys
from itertools import pairwise

import pytest
from PIL import Image

from holisafe.core import taxonomy
from holisafe.core.records import SafetyPrediction
from holisafe.core.taxonomy import IMAGE_SAFETY_LABELS
from holisafe.data import load_samples
from holisafe.models import GenerationSettings, ModelOptions, load_model
from holisafe.report.tables import guard_confusion_grid
from holisafe.run.evaluate import evaluate
from holisafe.scoring.guard_metrics import guard_metrics, unsafe_auroc, unsafe_roc
from holisafe.store import Store
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder
from tests.datafixtures import write_official


def holisafe(*args):
    return subprocess.run(
        [sys.executable, "-m", "holisafe", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def safe_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    build_tiny_model(root / "plain", "llava", seed=1)
    convert_folder(str(root / "plain"), str(root / "safe"), VGMSettings())
    return root


def prediction(label: str, p_safe: float) -> SafetyPrediction:
    probs = dict.fromkeys(IMAGE_SAFETY_LABELS, 0.0) | {"safe": p_safe}
    if label != "safe":
        probs[label] = 1 - p_safe
    return SafetyPrediction(label, probs[label], probs)


def test_guard_metrics_by_hand():
    # truth: 3 safe (0), 5 unsafe; predictions: one safe image flagged, one unsafe image missed,
    # one unsafe image given the wrong unsafe label (still a true positive)
    truth = [0, 0, 0, 2, 2, 16, 16, 17]
    guess = [
        prediction("safe", 0.9),
        prediction("safe", 0.8),
        prediction("race", 0.3),
        prediction("race", 0.2),
        prediction("safe", 0.6),
        prediction("weapon_related_violence", 0.1),
        prediction("terrorism", 0.4),
        prediction("sexual_content", 0.3),
    ]
    metrics = guard_metrics(truth, guess)
    # binary: TP = 4 (race, weapon, terrorism, sexual), FN = 1, FP = 1, TN = 2
    assert metrics.n == 8
    assert metrics.accuracy == pytest.approx(100 * 6 / 8)
    assert metrics.precision == pytest.approx(100 * 4 / 5)
    assert metrics.recall == pytest.approx(100 * 4 / 5)
    assert metrics.f1 == pytest.approx(80.0)
    assert metrics.exact_label_accuracy == pytest.approx(100 * 5 / 8)
    # unsafe scores 1 - p(safe): safe images 0.1, 0.2, 0.7; unsafe 0.8, 0.4, 0.9, 0.6, 0.7.
    # Of the 15 (unsafe, safe) pairs the unsafe image ranks higher in 12 and ties in 1.
    assert metrics.auroc == pytest.approx(100 * 12.5 / 15)
    assert metrics.label_accuracy["safe"] == pytest.approx(100 * 2 / 3)
    assert metrics.label_accuracy["weapon_related_violence"] == pytest.approx(50.0)
    assert metrics.label_accuracy["gender"] is None
    assert metrics.confusion[16][15] == 1 and sum(map(sum, metrics.confusion)) == 8


def test_auroc_needs_both_kinds_of_image():
    assert unsafe_auroc([0, 0], [0.2, 0.9]) is None
    assert unsafe_auroc([3, 5], [0.2, 0.9]) is None
    assert unsafe_auroc([0, 3], [0.9, 0.2]) == 0.0


@pytest.mark.slow
def test_guard_cli_prints_each_image_and_reports_bad_files(safe_dir, tmp_path):
    Image.new("RGB", (40, 40), (250, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (40, 40), (0, 0, 250)).save(tmp_path / "blue.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "\x1b[31mred-alert.png").write_bytes(b"not an image either")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait for a writer for ever
    model = f"hf/{safe_dir / 'safe'}"
    result = holisafe("guard", "--model", model, str(tmp_path), "--json", "--device", "cpu")
    assert result.returncode == 1  # three files failed, the others were still classified
    assert "broken.png" in result.stderr and "not a readable image" in result.stderr
    assert "pipe.png is not a regular file" in result.stderr
    assert "\x1b" not in result.stderr and "\\x1b[31mred-alert.png" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"].rsplit("/", 1)[1] for line in lines] == ["blue.png", "red.png"]
    for line in lines:
        assert set(line) == {"image", "label", "prob", "unsafe", "probs"}
        assert len(line["probs"]) == 20 and sum(line["probs"].values()) == pytest.approx(1)
        assert line["prob"] == max(line["probs"].values())
        assert line["unsafe"] == pytest.approx(1 - line["probs"]["safe"])
    text = holisafe("guard", "--model", model, str(tmp_path / "red.png"), "--top-k", "2")
    assert text.returncode == 0
    assert text.stdout.count(",") >= 2 and "unsafe" in text.stdout


@pytest.mark.slow
def test_guard_needs_a_safety_head(safe_dir, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = holisafe("guard", "--model", f"hf/{safe_dir / 'plain'}", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert "has no safety head" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_guard_eval_scores_distinct_images(safe_dir, tmp_path):
    bench = write_official(tmp_path / "bench")
    result = holisafe(
        "guard-eval", "--model", f"hf/{safe_dir / 'safe'}", "--bench", str(bench), "--json"
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert {"accuracy", "f1", "precision", "recall", "label_accuracy", "n"} <= set(metrics)
    assert metrics["n"] == 6  # seven samples over six distinct images
    assert sum(metrics["label_counts"].values()) == 6


def test_eval_stores_the_prediction_of_the_same_prefill(safe_dir, tmp_path):
    """A Safe-VLM's answer and its safety prediction come from one generate call, and the
    prediction depends on the image alone: it equals the guard's for that image."""
    bench = write_official(tmp_path / "bench")
    spec = f"hf/{safe_dir / 'safe'}"
    options = ModelOptions(device="cpu", batch_size=4)
    evaluate(
        spec,
        bench,
        tmp_path / "runs.db",
        settings=GenerationSettings(max_new_tokens=4),
        options=options,
    )
    with Store(tmp_path / "runs.db") as store:
        records = store.records(store.runs()[0].id)
    samples = {str(s.id): s for s in load_samples(bench).samples}
    model = load_model(spec, options)
    guard = model.classify([samples[r.sample.id].image.load() for r in records])
    for record, expected in zip(records, guard, strict=True):
        stored = record.extra["safety"]
        assert stored["label"] == expected.label
        assert stored["probs"] == pytest.approx(expected.probs, abs=1e-5)
    # the report scores the run as a guard, one prediction per distinct image
    report = holisafe("report", "--store", str(tmp_path / "runs.db"), "--format", "json")
    (entry,) = json.loads(report.stdout)
    first_per_image = {}
    for record in records:
        first_per_image.setdefault(record.sample.image, record)
    expected = guard_metrics(
        [r.sample.image_safety_label for r in first_per_image.values()],
        [SafetyPrediction(**r.extra["safety"]) for r in first_per_image.values()],
    )
    assert entry["guard"]["n"] == 6
    assert entry["guard"] == json.loads(json.dumps(expected.as_dict()))
    text = holisafe("report", "--store", str(tmp_path / "runs.db")).stdout
    assert "## Image guard of Safe-VLM runs (safety head)" in text


def test_the_roc_curve_runs_corner_to_corner_and_its_area_is_the_auroc():
    labels = [0, 0, 0, 5, 7, 0, 9, 0, 3]
    scores = [0.1, 0.4, 0.4, 0.4, 0.9, 0.2, 0.7, 0.8, 0.05]
    curve = unsafe_roc(labels, scores)
    assert curve[0] == (0.0, 0.0) and curve[-1] == (100.0, 100.0)
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(curve)) / 100
    assert area == pytest.approx(unsafe_auroc(labels, scores))
    assert unsafe_roc([0, 0], [0.1, 0.2]) == ()


def test_the_confusion_table_shows_the_labels_in_play():
    names = taxonomy.IMAGE_SAFETY_LABELS
    truth = [0, 0, 5, 5, 16]
    predicted = ["safe", names[16], names[5], "safe", names[16]]
    probs = [dict.fromkeys(names, 0.0) | {p: 1.0} for p in predicted]
    metrics = guard_metrics(
        truth, [SafetyPrediction(p, 1.0, q) for p, q in zip(predicted, probs, strict=True)]
    )
    table = guard_confusion_grid(metrics)
    assert [title for title, _ in table.header[1:]] == ["safe", names[5], names[16]]
    assert table.rows == [["safe", 1, 0, 1], [names[5], 1, 1, 0], [names[16], 0, 0, 1]]
