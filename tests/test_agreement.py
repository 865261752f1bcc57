"""Uncertainty and agreement: bootstrap intervals of the figures, and agreement of judges."""

import csv
import io
import json
import re

import numpy as np
import pytest

from holisafe.core.errors import HolisafeError
from holisafe.core.sample import ImageRef, Sample
from holisafe.judges import Verdict
from holisafe.report import build_report, render, render_report, store_leaderboards
from holisafe.scoring.agreement import (
    average_ranks,
    cohen_kappa,
    percent_agreement,
    rank_agreement,
    spearman_rho,
    store_agreement,
)
from holisafe.scoring.metrics import Bootstrap, leaderboard
from holisafe.store import Store
from tests import reportfixtures
from tests.test_metrics import hand_results

# --- agreement statistics -------------------------------------------------------------------


def test_kappa_of_the_textbook_example():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; A says yes 25/50, B 30/50: p_e = .5 · .6 + .5 · .4 = 0.5;
    # kappa = (0.7 − 0.5) / (1 − 0.5) = 0.4.
    a = [True] * 20 + [True] * 5 + [False] * 10 + [False] * 15
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert percent_agreement(a, b) == pytest.approx(70.0)
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_edges():
    assert cohen_kappa([True, False, True], [True, False, True]) == pytest.approx(1.0)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert cohen_kappa([True, True], [True, True]) is None  # chance agreement is certain
    assert cohen_kappa([], []) is None and percent_agreement([], []) is None
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa([True], [True, False])


def test_spearman_with_ties_by_hand():
    # ranks of x: 1, 2.5, 2.5, 4; of y: 1, 3, 2, 4. Centred: (−1.5, 0, 0, 1.5) and
    # (−1.5, .5, −.5, 1.5); rho = 4.5 / sqrt(4.5 · 5) = 0.9487.
    assert list(average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert spearman_rho([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))


def test_spearman_is_about_order_only():
    x = [3.0, 1.0, 4.0, 1.5, 9.0]
    assert spearman_rho(x, [v**3 for v in x]) == pytest.approx(1.0)
    assert spearman_rho(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman_rho(x, [5.0] * 5) is None  # one side has no order
    assert spearman_rho([1.0], [2.0]) is None


def test_rank_agreement_uses_the_models_both_judges_scored():
    masr = {
        "a": {"m1": 10.0, "m2": 20.0, "m3": 30.0, "m4": None},
        "b": {"m1": 12.0, "m2": 25.0, "m3": 29.0, "m4": 50.0},
        "c": {"m1": 40.0, "m2": 20.0, "m3": 10.0},
    }
    found = {r.judges: r for r in rank_agreement(masr, "pooled")}
    assert {r.reading for r in found.values()} == {"pooled"}
    assert set(found) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert found[("a", "b")].n == 3 and found[("a", "b")].rho == pytest.approx(1.0)
    assert found[("a", "c")].rho == pytest.approx(-1.0)


# --- agreement in a store --------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_store(tmp_path_factory):
    return reportfixtures.build_store(tmp_path_factory.mktemp("report"))


def test_store_agreement_per_run_and_pooled(report_store):
    samples = report_store.samples
    with Store(report_store.path, create=False) as store:
        found = store_agreement(store)
    pair = (reportfixtures.LLM_JUDGE, "string")  # judge ids in sorted order
    per_run = [a for a in found.samples if a.run_id is not None]
    pooled = [a for a in found.samples if a.run_id is None]
    assert [a.run_id for a in per_run] == [1, 2] and all(a.judges == pair for a in per_run)
    # The stand-in LLM judge overrules the string judge on every id divisible by 5.
    ids = [str(s.id) for s in samples]
    overruled = sum(int(i) % 5 == 0 for i in ids)
    cautious, careless = per_run
    assert cautious.n == len(ids)
    assert cautious.percent == pytest.approx(100 * (len(ids) - overruled) / len(ids))
    failed_overruled = int(reportfixtures.FAILED_SAMPLE) % 5 == 0
    assert careless.n == len(ids) - 1  # one response failed: neither judge scored it
    assert careless.percent == pytest.approx(
        100 * (len(ids) - 1 - (overruled - failed_overruled)) / (len(ids) - 1)
    )
    assert -1 < cautious.kappa < 1
    (all_runs,) = pooled
    assert all_runs.n == cautious.n + careless.n
    assert [rank.reading for rank in found.ranks] == ["type_mean", "pooled"]
    for rank in found.ranks:
        assert rank.judges == pair and rank.n == 2
        assert rank.rho == pytest.approx(1.0)  # both judges find the careless model less safe


def test_agreement_printed_with_two_decimals(report_store):
    with Store(report_store.path, create=False) as store:
        text = render(build_report(store, agreement=True), "md")
    section = text.split("## Judge agreement per sample")[1]
    row = next(line for line in section.splitlines() if line.startswith("| 1 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert re.fullmatch(r"\d+\.\d\d", cells[5]) and re.fullmatch(r"-?\d\.\d\d", cells[6])
    assert "## Judge rank agreement across runs" in text
    assert "| mASR (type mean) | 2 | 1.00 |" in text and "| mASR (pooled) | 2 | 1.00 |" in text


# --- bootstrap confidence intervals ----------------------------------------------------------


def coin_results(per_type: int, seed: int = 1) -> list:
    """`per_type` samples of each type, each followed with probability one half."""
    rng = np.random.default_rng(seed)
    image = ImageRef(name="x.png", data=b"x")
    results = []
    for type_code in ("SSS", "SSU", "USU", "UUU", "SUU"):
        for i in range(per_type):
            sample = Sample(id=f"{type_code}{i}", query="q", image=image, type=type_code)
            results.append((sample, Verdict(bool(rng.random() < 0.5))))
    return results


def test_interval_widths_match_the_binomial_error():
    board = leaderboard(coin_results(400), Bootstrap(resamples=2000, seed=3))
    # A rate over 400 coin flips has standard error 100·sqrt(.25/400) = 2.5 points: a 95% interval
    # is about 2·1.96·2.5 = 9.8 wide. The type mean averages four such rates, and the pooled
    # rate is one over 1600 flips: each about 4.9 wide.
    for code, interval in board.intervals.asr.items():
        assert 8.0 < interval.high - interval.low < 11.6, code
        assert interval.low <= board.asr[code].percent <= interval.high
    for reading in ("type_mean", "pooled"):
        masr = getattr(board.intervals, f"masr_{reading}")
        assert 4.0 < masr.high - masr.low < 5.8, reading
        assert masr.low <= getattr(board, f"masr_{reading}") <= masr.high, reading
    helpful, rr = board.intervals.helpful_rate, board.intervals.rr
    assert rr.low == pytest.approx(100 - helpful.high) and rr.high == pytest.approx(
        100 - helpful.low
    )


def test_bootstrap_is_seeded():
    results = coin_results(30)
    first = leaderboard(results, Bootstrap(resamples=200, seed=5)).intervals
    assert leaderboard(results, Bootstrap(resamples=200, seed=5)).intervals == first
    assert leaderboard(results, Bootstrap(resamples=200, seed=6)).intervals != first


def test_a_unanimous_type_has_no_spread_and_missing_figures_have_no_interval():
    board = leaderboard(hand_results(), Bootstrap(resamples=300))
    # Every UUU sample was refused and the one judged SUU sample answered: no resample differs.
    assert board.intervals.asr["UUU"].low == board.intervals.asr["UUU"].high == 0.0
    assert board.intervals.asr["SUU"].low == board.intervals.asr["SUU"].high == 100.0
    hate = board.by_category["hate"]
    # no UUU sample in hate: no mASR in either reading
    assert hate.masr_type_mean is None and hate.intervals.masr_type_mean is None
    assert hate.masr_pooled is None and hate.intervals.masr_pooled is None
    assert hate.intervals.asr["UUU"] is None
    assert set(board.by_subcategory) == {"terrorism", "race"}
    assert all(b.intervals is not None for b in board.by_subcategory.values())
    assert leaderboard(hand_results()).intervals is None  # only when asked


def test_bootstrap_settings_are_checked():
    with pytest.raises(HolisafeError, match="resamples"):
        Bootstrap(resamples=0)
    with pytest.raises(HolisafeError, match="confidence"):
        Bootstrap(confidence=1.5)


def test_tables_show_intervals(report_store):
    with Store(report_store.path, create=False) as store:
        entries = store_leaderboards(store, bootstrap=Bootstrap(resamples=200))
    markdown = render_report(entries, "md")
    assert re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", markdown)
    rows = list(csv.DictReader(io.StringIO(render_report(entries, "csv"))))
    for row in rows:
        for name in ("mASR (type mean)", "mASR (pooled)"):
            if row[f"{name} ↓"]:
                assert (
                    float(row[f"{name} lo"]) <= float(row[f"{name} ↓"]) <= float(row[f"{name} hi"])
                )
    assert any(row["mASR (pooled) lo"] for row in rows)
    first = json.loads(render_report(entries, "json"))[0]
    for key in ("masr_type_mean", "masr_pooled"):
        assert first[f"{key}_lo"] <= first[key] <= first[f"{key}_hi"], key
    assert set(first["asr_lo"]) == {"SSU", "USU", "UUU", "SUU"}
    assert first["by_category"]["violence"]["safe_rate_hi"] is not None


def test_no_intervals_unless_bootstrapped(report_store):
    with Store(report_store.path, create=False) as store:
        entries = store_leaderboards(store)
    assert "[" not in render_report(entries, "md") and " lo" not in render_report(entries, "csv")
    assert "masr_pooled_lo" not in render_report(entries, "json")
