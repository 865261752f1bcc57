"""What every report is made of: the figures of one (run, judge) pair, and the report's error."""

from __future__ import annotations

from dataclasses import dataclass

from holisafe.core.errors import HolisafeError
from holisafe.scoring.metrics import Leaderboard


class ReportError(HolisafeError):
    """A report that cannot be made as asked (unknown format)."""


@dataclass(frozen=True)
class BoardEntry:
    """The figures of one (run, judge) pair, and what they are about."""

    run_id: int
    model: str
    judge: str
    board: Leaderboard
    samples: int  # samples in the run's benchmark
