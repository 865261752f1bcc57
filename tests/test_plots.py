"""The report's plots: radar charts, ASR bars, agreement heatmaps, as PNG and SVG."""

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import replace

import pytest
from PIL import Image
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.report import BoardEntry, store_leaderboards
from holisafe.report.plots import agreement_heatmap, category_radar, write_plots
from holisafe.report.reference import load_reference, reference_rank_agreement
from holisafe.scoring.agreement import store_agreement
from holisafe.scoring.metrics import Bootstrap
from holisafe.store import Store
from tests import reportfixtures
from tests.test_metrics import hand_results

SVG = "{http://www.w3.org/2000/svg}svg"


@pytest.fixture(scope="module")
def report_store(tmp_path_factory):
    return reportfixtures.build_store(tmp_path_factory.mktemp("plots"))


@pytest.fixture(scope="module")
def board_and_agreement(report_store):
    with Store(report_store.path, create=False) as store:
        entries = store_leaderboards(store, bootstrap=Bootstrap(resamples=100))
        return entries, store_agreement(store)


def assert_png_and_svg(plot):
    with Image.open(plot.png) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert ElementTree.parse(plot.svg).getroot().tag == SVG


def test_every_plot_of_a_store(tmp_path, board_and_agreement):
    entries, agreement = board_and_agreement
    published = reference_rank_agreement(load_reference())
    plots = write_plots(entries, tmp_path / "plots", agreement, published)
    names = sorted(plot.png.name for plot in plots)
    assert names == [
        "agreement_kappa.png",
        "agreement_spearman_paper.png",
        "asr_openai_gpt-4o.png",
        "asr_string.png",
        "radar_run1.png",
        "radar_run2.png",
    ]
    for plot in plots:
        assert_png_and_svg(plot)
    radar = next(p for p in plots if p.png.name == "radar_run1.png")
    assert "hf/cautious-vlm" in radar.title
    # Two runs rank too few models for a rank-agreement heatmap of the store's judges.
    assert not (tmp_path / "plots" / "agreement_spearman.png").exists()


def test_svg_is_the_same_every_time(tmp_path, board_and_agreement):
    entries, agreement = board_and_agreement
    one_run = [e for e in entries if e.run_id == 1]
    first = write_plots(one_run, tmp_path / "a", agreement)
    second = write_plots(one_run, tmp_path / "b", agreement)
    assert len(first) == 4  # radar, two ASR bar charts, kappa heatmap
    for a, b in zip(first, second, strict=True):
        assert a.svg.read_bytes() == b.svg.read_bytes(), a.svg.name


def test_radar_needs_three_categories(tmp_path):
    from holisafe.scoring.metrics import leaderboard

    entry = BoardEntry(1, "hf/m", "string", leaderboard(hand_results()), 13)  # two categories
    assert category_radar([entry], tmp_path / "radar") is None
    assert not list(tmp_path.iterdir())


def test_heatmap_needs_two_judges(tmp_path):
    assert agreement_heatmap({}, tmp_path / "none", "t", "kappa") is None
    plot = agreement_heatmap({("a", "b"): 0.5, ("a", "c"): None}, tmp_path / "h", "t", "kappa")
    assert_png_and_svg(plot)
    # matplotlib writes each text of an SVG as a comment beside its glyphs: the judges' names on
    # both axes, then the nine cells row by row, then the title and the colour bar.
    texts = re.findall(r"<!-- (.*?) -->", plot.svg.read_text())
    assert texts[:6] == ["a", "b", "c", "a", "b", "c"]
    assert texts[6:15] == ["1.00", "0.50", "–", "0.50", "1.00", "–", "–", "–", "1.00"]


def test_cli_plots(tmp_path, report_store):
    result = CliRunner().invoke(
        app, ["report", "--store", str(report_store.path), "--plots", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "radar_run2.svg" in written and "agreement_kappa.png" in written
    assert "plot: " in result.stderr


def test_the_asr_legend_sits_below_the_bars_at_a_readable_size(
    tmp_path, board_and_agreement, monkeypatch
):
    from holisafe.report import plots

    entries, _ = board_and_agreement
    long_names = [replace(e, model=f"hf//work/stores/demo/models/{e.model}") for e in entries]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem, title: figures.append(fig))
    plots.asr_bars(long_names, tmp_path / "asr")
    (figure,) = figures
    figure.tight_layout()
    figure.canvas.draw()
    axes = figure.axes[0]
    legend = axes.get_legend()
    assert all(text.get_fontsize() >= 9 for text in legend.get_texts())
    below = legend.get_window_extent().y1 <= axes.get_window_extent().y0
    assert below and figure.bbox.contains(*legend.get_window_extent().p0)
