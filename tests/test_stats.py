import json
import subprocess
import sys
from collections import Counter

import pytest
from PIL import Image

from holisafe.data import dataset_stats, read_dataset
from tests.datafixtures import CASES, write_official


def holisafe(*args):
    return subprocess.run(
        [sys.executable, "-m", "holisafe", *args], capture_output=True, text=True, timeout=120
    )


def test_stats_count_everything(tmp_path):
    stats = dataset_stats(read_dataset(write_official(tmp_path)).samples)
    assert stats["samples"] == len(CASES)
    assert stats["images"] == 6  # the last record shares an image
    assert stats["by_type"] == dict(Counter(t for t, _, _ in CASES))
    assert stats["by_category"] == dict(Counter(c for _, c, _ in CASES))
    assert stats["by_subcategory"] == dict(Counter(s for _, _, s in CASES))
    table = stats["by_type_category"]
    assert table["illegal_activity"] == {"USU": 1}
    assert table["hate"] == {"SSS": 1}
    assert sum(sum(row.values()) for row in table.values()) == len(CASES)
    # types come in the paper's column order
    assert list(stats["by_type"]) == ["SSS", "SSU", "USU", "UUU", "SUU"]


def test_cli_stats_json_has_exactly_the_documented_keys(tmp_path):
    pytest.importorskip("matplotlib")  # for --plot
    root = write_official(tmp_path / "bench")
    chart = tmp_path / "chart.png"
    result = holisafe("data", "stats", str(root), "--json", "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert set(stats) == {
        "samples",
        "images",
        "missing_images",
        "by_type",
        "by_category",
        "by_subcategory",
        "by_type_category",
    }
    assert stats == dataset_stats(read_dataset(root).samples)
    assert Image.open(chart).size[0] > 100


def test_cli_stats_table_and_skip_invalid(tmp_path):
    root = write_official(tmp_path)
    records = json.loads((root / "holisafe_bench.json").read_text())
    records[0]["type"] = "bad"
    (root / "holisafe_bench.json").write_text(json.dumps(records))
    failed = holisafe("data", "stats", str(root))
    assert failed.returncode == 2 and "id 1: unknown safeness type 'bad'" in failed.stderr
    result = holisafe("data", "stats", str(root), "--skip-invalid")
    assert result.returncode == 0
    assert "skipped id 1" in result.stderr
    assert f"{len(CASES) - 1} samples" in result.stdout


def test_cli_export_then_validate(tmp_path):
    root = write_official(tmp_path / "src")
    result = holisafe("data", "export", str(root), str(tmp_path / "out"), "--to", "parquet")
    assert result.returncode == 0, result.stderr
    assert holisafe("data", "validate", str(tmp_path / "out")).returncode == 0


def test_stats_name_the_image_files_that_are_missing(tmp_path):
    root = write_official(tmp_path)
    (root / "images" / "img_2.png").unlink()
    stats = dataset_stats(read_dataset(root, check_images=False).samples)
    assert stats["missing_images"] == ["img_2.png"]
    result = holisafe("data", "stats", str(root))
    assert result.returncode == 0
    assert "warning: 1 image file(s) missing: img_2.png" in result.stderr
