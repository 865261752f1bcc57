"""Figures from stored verdicts: HoliSafe's metrics, the other benchmarks' figures, guard scores,
judge agreement and pairwise comparison."""
