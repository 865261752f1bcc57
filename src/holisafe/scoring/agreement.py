"""Agreement between judges: per sample on one run, and in how they rank models.

- Per sample: two judges' verdicts on the same responses, as percent agreement and Cohen's
  kappa, over the samples both judges decided.
- Across models: Spearman's rank correlation (rho) of the models' mASR under two judges, as the
  paper reports it (string matching vs GPT-4o: 0.98), under each reading of mASR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from holisafe.scoring.metrics import MASR_READINGS, leaderboard
from holisafe.store import RunRecord, Store

PRINTED_READING = "printed"  # published figures as printed, whatever their reading


@dataclass(frozen=True)
class SampleAgreement:
    """Two judges on the same samples. `run_id` None: pooled over every run of the store."""

    run_id: int | None
    model: str | None
    judges: tuple[str, str]
    n: int  # samples both judges decided
    percent: float | None  # percent of those samples with the same verdict
    kappa: float | None


@dataclass(frozen=True)
class RankAgreement:
    """Spearman's rho of the mASR that two judges give the same models."""

    judges: tuple[str, str]
    reading: str  # a key of MASR_READINGS, or PRINTED_READING
    n: int  # models with an mASR under both judges
    rho: float | None


@dataclass(frozen=True)
class Agreement:
    """Every pair of judges in a store: per run (and pooled), and across runs."""

    samples: list[SampleAgreement]
    ranks: list[RankAgreement]


def percent_agreement(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """100 · (share of positions where a and b are equal); None for no positions."""
    a, b = _paired(a, b)
    return None if a.size == 0 else 100.0 * float(np.mean(a == b))


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two binary raters: (p_o − p_e) / (1 − p_e).

    p_o is the observed share of agreement, p_e the share expected by chance from each rater's
    own rate of True. None when undefined: no positions, or p_e = 1 (both raters gave one and
    the same answer everywhere).
    """
    a, b = _paired(a, b)
    if a.size == 0:
        return None
    observed = np.mean(a == b)
    rate_a, rate_b = np.mean(a), np.mean(b)
    expected = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    if expected == 1:
        return None
    return float((observed - expected) / (1 - expected))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1 (smallest); tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(
        np.asarray(values, float), return_inverse=True, return_counts=True
    )
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse]


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (ties shared).

    None when undefined: fewer than two pairs, or one side's values all equal.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman_rho needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    spread = np.sqrt((rx**2).sum() * (ry**2).sum())
    return None if spread == 0 else float((rx * ry).sum() / spread)


def rank_agreement(
    masr: Mapping[str, Mapping[str, float | None]], reading: str
) -> list[RankAgreement]:
    """Spearman's rho for every pair of judges, from judge → model → mASR under `reading`.

    Each pair is compared over the models that have an mASR under both judges.
    """
    agreements = []
    for first, second in combinations(masr, 2):
        models = [
            m
            for m, value in masr[first].items()
            if value is not None and masr[second].get(m) is not None
        ]
        x = [masr[first][m] for m in models]
        y = [masr[second][m] for m in models]
        agreements.append(RankAgreement((first, second), reading, len(models), spearman_rho(x, y)))
    return agreements


def sample_agreement(
    records: Sequence[RunRecord],
    judges: tuple[str, str],
    run_id: int | None = None,
    model: str | None = None,
) -> SampleAgreement:
    """Percent agreement and kappa of two judges over the records both decided."""
    pairs = [
        (r.verdicts[judges[0]].followed, r.verdicts[judges[1]].followed)
        for r in records
        if r.response is not None
        and r.response.ok
        and all(j in r.verdicts and r.verdicts[j].ok for j in judges)
    ]
    a = [first for first, _ in pairs]
    b = [second for _, second in pairs]
    return SampleAgreement(
        run_id, model, judges, len(pairs), percent_agreement(a, b), cohen_kappa(a, b)
    )


def store_agreement(store: Store, run_id: int | None = None) -> Agreement:
    """Agreement of every pair of judges in the store (or in one run).

    Per sample: each run with both judges, then all those runs pooled (when more than one).
    Across runs: Spearman's rho of the runs' mASR (each run one model), over the runs that both
    judges give an mASR, under each reading of mASR.
    """
    runs = [store.get_run(run_id)] if run_id is not None else store.runs()
    records = {run.id: store.records(run.id) for run in runs}
    judges_of = {run.id: store.judges(run.id) for run in runs}
    all_judges = sorted({judge for judges in judges_of.values() for judge in judges})
    samples = []
    for pair in combinations(all_judges, 2):
        judged = [run for run in runs if set(pair) <= set(judges_of[run.id])]
        samples += [sample_agreement(records[run.id], pair, run.id, run.model) for run in judged]
        if len(judged) > 1:
            pooled = [record for run in judged for record in records[run.id]]
            samples.append(sample_agreement(pooled, pair))
    boards = {
        judge: {
            str(run.id): leaderboard(store.results(run.id, judge))
            for run in runs
            if judge in judges_of[run.id]
        }
        for judge in all_judges
    }
    ranks = []
    for reading in MASR_READINGS:
        masr = {
            judge: {run: getattr(board, f"masr_{reading}") for run, board in by_run.items()}
            for judge, by_run in boards.items()
        }
        ranks += rank_agreement(masr, reading)
    return Agreement(samples, ranks)


def _paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"agreement needs paired verdicts, got {len(a)} and {len(b)}")
    return np.asarray(a, bool), np.asarray(b, bool)
