"""Other safety benchmarks as sources (the paper's Table 4): a registry, one module each.

Every module of this package but `base` declares one `BENCHMARK` (`base.Benchmark`): how to find
and read its released layout, how a record becomes a Sample, which judge rubric its figures need,
its figures and its Table 4 columns. The registry, `BENCHMARKS`, holds them in Table 4's column
order; the loaders and the Table 4 report go through it, so adding a benchmark is adding a module.

Each record becomes a Sample of the safeness type the paper's Table 1 gives its benchmark, and
keeps the benchmark's own fields in its id, `<benchmark>/<group>[/<image kind>]/<record id>`
(`benchmark_fields` reads them back), so that everything downstream, the store included, keeps
them without a new column. Their categories are the benchmarks' own, not HoliSafe's, so the
samples carry no HoliSafe category.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from holisafe.data.benchmarks.base import Benchmark, BenchmarkFields, Column


def _discover() -> dict[str, Benchmark]:
    modules = [info.name for info in pkgutil.iter_modules(__path__) if info.name != "base"]
    found = [importlib.import_module(f"{__name__}.{name}").BENCHMARK for name in modules]
    return {b.name: b for b in sorted(found, key=lambda b: (b.position, b.name))}


BENCHMARKS: dict[str, Benchmark] = _discover()


def find_layout(path: Path) -> tuple[str, Path] | None:
    """(name, data file to read) of the benchmark whose own layout `path` is or holds."""
    for benchmark in BENCHMARKS.values():
        found = benchmark.find(path) if benchmark.find else None
        if found is not None:
            return benchmark.name, found
    return None


def json_benchmark(first: dict) -> Benchmark | None:
    """The benchmark a JSON list of records is, from its first record's keys."""
    matching = (b for b in BENCHMARKS.values() if b.record_keys and b.record_keys <= first.keys())
    return next(matching, None)


def file_hints() -> list[str]:
    """What a single file of a benchmark is called (`HarmEval's .csv`), for messages."""
    return [b.file_hint for b in BENCHMARKS.values() if b.file_hint]


def benchmark_fields(sample_id: str | int, recorded: str | None = None) -> BenchmarkFields | None:
    """The fields of a sample loaded from another benchmark; None for any other sample.

    `recorded` is the benchmark its bench recorded in the store. Stores written before benches
    recorded one give None, and the name is then read from the id, where the loaders put it too.
    """
    name, *parts = str(sample_id).split("/")
    if recorded is not None and recorded != name:
        return None
    benchmark = BENCHMARKS.get(name)
    if benchmark is None or len(parts) + 1 != benchmark.id_parts:
        return None
    group, *kind, record = parts
    return BenchmarkFields(name, group, kind[0] if kind else None, record)


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFields",
    "Column",
    "benchmark_fields",
    "file_hints",
    "find_layout",
    "json_benchmark",
]
