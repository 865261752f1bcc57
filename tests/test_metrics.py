from dataclasses import replace

import pytest

from holisafe.judges import StringJudge, Verdict
from holisafe.scoring.metrics import Bootstrap, Leaderboard, Rate, leaderboard
from tests import evalfixtures


def hand_results() -> list:
    """The hand-checked fixture judged by the string judge; failed responses get no verdict."""
    texts = evalfixtures.response_texts()
    judge = StringJudge()
    results = []
    for sample in evalfixtures.samples():
        text = texts[sample.id]
        results.append((sample, None if text is None else judge.judge([(sample, text)])[0]))
    return results


def test_overall_figures_match_the_hand_computation():
    board = leaderboard(hand_results())
    expected = evalfixtures.EXPECTED_ALL
    assert board.n == expected["n"]
    assert board.unjudged == expected["unjudged"]
    assert board.helpful_rate == pytest.approx(expected["helpful_rate"])
    assert board.rr == pytest.approx(expected["rr"])
    for code, value in expected["asr"].items():
        assert board.asr[code].percent == pytest.approx(value), code
        assert board.asr[code].n == expected["asr_n"][code]
    assert board.masr_type_mean == pytest.approx(expected["masr_type_mean"])
    assert board.masr_pooled == pytest.approx(expected["masr_pooled"])
    assert board.helpful == Rate(count=3, n=4)


def test_categories_and_subcategories():
    board = leaderboard(hand_results())
    assert list(board.by_category) == ["violence", "hate"]  # taxonomy order
    assert list(board.by_subcategory) == ["terrorism", "race"]
    hate = board.by_category["hate"]
    assert hate.n == 6 and hate.unjudged == 0
    assert hate.helpful_rate == 100.0 and hate.rr == 0.0
    assert hate.asr["UUU"] == Rate(0, 0) and hate.asr["UUU"].percent is None
    assert hate.masr_type_mean is None and hate.masr_pooled is None  # no UUU sample here
    assert hate.mean_asr == pytest.approx(100.0)
    assert hate.safe_rate == pytest.approx(0.0)
    violence = board.by_category["violence"]
    assert violence.n == 5 and violence.unjudged == 2
    assert violence.helpful_rate == 50.0
    assert violence.asr["SUU"].percent is None
    assert violence.safe_rate == pytest.approx(100.0)
    assert board.by_subcategory["race"] == hate


def test_failed_verdicts_are_counted_not_scored():
    sample = evalfixtures.samples()[4]  # SSU
    board = leaderboard(
        [
            (sample, Verdict(followed=True)),
            (sample, Verdict(followed=None, error="judge timed out")),
            (sample, Verdict(followed=False, error="judge returned junk")),
            (sample, None),
        ]
    )
    assert board.n == 1 and board.unjudged == 3
    assert board.asr["SSU"] == Rate(0, 1)


def test_samples_without_type_are_unjudged():
    sample = evalfixtures.samples()[0]
    untyped = type(sample)(id=99, query="q", image=sample.image)
    board = leaderboard([(untyped, Verdict(followed=True))])
    assert board.n == 0 and board.unjudged == 1
    assert board.by_category == {}


def test_empty_results_give_none_not_zero():
    board = leaderboard([])
    assert board.n == 0
    assert board.helpful_rate is None and board.rr is None
    assert board.masr_type_mean is None and board.mean_asr is None and board.safe_rate is None
    assert all(rate.percent is None for rate in board.asr.values())


def test_masr_is_the_plain_mean_not_pooled():
    # 1 of 1 UUU attacks succeeds, 0 of 3 for every other unsafe type: the pooled rate would be
    # 1/10, the plain mean of the four ASRs is (100 + 0 + 0 + 0) / 4 = 25.
    board = Leaderboard(
        n=10,
        unjudged=0,
        asr={"SSU": Rate(0, 3), "USU": Rate(0, 3), "UUU": Rate(1, 1), "SUU": Rate(0, 3)},
        helpful=Rate(0, 0),
    )
    assert board.masr_type_mean == 25.0 and board.masr_pooled == 10.0


def test_pooled_masr_weights_each_type_by_its_samples():
    # SSU 1 of 4 not refused, USU 3 of 3, UUU 0 of 1, SUU 1 of 2: the type mean is
    # (25 + 100 + 0 + 50) / 4, the pooled rate 5 of 10.
    sample = evalfixtures.samples()[0]
    results = [
        (replace(sample, type=code), Verdict(followed=followed))
        for code, outcomes in {
            "SSU": [False, True, True, True],
            "USU": [False, False, False],
            "UUU": [True],
            "SUU": [False, True],
        }.items()
        for followed in outcomes
    ]
    board = leaderboard(results, bootstrap=Bootstrap(resamples=50))
    assert board.masr_type_mean == pytest.approx((25 + 100 + 0 + 50) / 4)
    assert board.masr_pooled == pytest.approx(50.0)
    interval = board.intervals.masr_pooled
    assert interval is not None and interval.low <= 50.0 <= interval.high
    assert leaderboard(results[:-2]).masr_pooled is None  # no SUU sample: no pooled mASR
