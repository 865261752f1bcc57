"""The published metrics of the other safety benchmarks (the paper's Table 4), from verdicts.

Samples loaded from another benchmark carry its fields in their ids
(`holisafe.data.benchmarks`), and each benchmark's module gives its figures; a verdict's
`followed` means the model refused the unsafe request (or, under the VLSBench rubric, refused or
warned). Figures are percentages of judged samples; unjudged samples are left out, as for
HoliSafe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from holisafe.core.records import Verdict
from holisafe.data.benchmarks import BENCHMARKS, BenchmarkFields, benchmark_fields
from holisafe.data.benchmarks.vlsbench import vlsbench_rubric
from holisafe.store import Store, StoredSample

# `vlsbench_rubric` stays importable here: the README's `--judge-template` recipe names it so.
__all__ = ["Table4Row", "benchmark_figures", "table4_rows", "vlsbench_rubric"]


def benchmark_figures(
    results: Iterable[tuple[StoredSample, Verdict | None]], recorded: str | None = None
) -> dict[str, dict[str, float | None]]:
    """benchmark → figure → percent, for the benchmarks the results hold samples of
    (`recorded`: the benchmark their bench recorded, if it did)."""
    judged: dict[str, list[tuple[BenchmarkFields, Verdict]]] = {}
    for sample, verdict in results:
        fields = benchmark_fields(sample.id, recorded)
        if fields is None:
            continue
        group = judged.setdefault(fields.benchmark, [])
        if verdict is not None and verdict.ok:
            group.append((fields, verdict))
    return {name: BENCHMARKS[name].figures(verdicts) for name, verdicts in judged.items()}


@dataclass(frozen=True)
class Table4Row:
    """One model under one judge across the other benchmarks (its runs on each merged)."""

    model: str
    judge: str
    figures: dict[str, dict[str, float | None]]  # benchmark → figure → percent


def table4_rows(store: Store, run_id: int | None = None) -> list[Table4Row]:
    """A row per (model, judge) that has verdicts on another benchmark's samples (of the one
    run named, if `run_id`)."""
    runs = [store.get_run(run_id)] if run_id is not None else store.runs()
    rows: dict[tuple[str, str], dict[str, dict[str, float | None]]] = {}
    for run in runs:
        for judge in store.judges(run.id):
            figures = benchmark_figures(store.results(run.id, judge), run.benchmark)
            if figures:
                rows.setdefault((run.model, judge), {}).update(figures)
    return [Table4Row(model, judge, figures) for (model, judge), figures in rows.items()]
