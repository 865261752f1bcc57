"""The registry of other safety benchmarks: each recognises its own fixture and no other's,
declares figures that match its Table 4 columns, and the columns keep the paper's order."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from holisafe.data import read_dataset
from holisafe.data.benchmarks import BENCHMARKS, benchmark_fields
from holisafe.report.tables import table4_grid
from holisafe.store import Store
from tests import test_benchmarks as released
from tests.datafixtures import write_official

# Each benchmark's fixture writer. A benchmark added later brings its own in its test module,
# tests/test_benchmark_<module>.py, as `write_fixture(root) -> Path` beside its `BENCHMARK`.
FIXTURES = {
    "vlsbench": released.write_vlsbench,
    "mm-safetybench": released.write_mmsb,
    "harmeval": released.write_harmeval,
    "siuo": released.write_siuo,
    "figstep": released.write_figstep,
}
for _path in sorted(Path(__file__).parent.glob("test_benchmark_*.py")):
    _module = importlib.import_module(f"tests.{_path.stem}")
    FIXTURES[_module.BENCHMARK.name] = _module.write_fixture


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str | None, Path]:
    """benchmark name → a folder in its released layout; None → HoliSafe's own layout."""
    root = tmp_path_factory.mktemp("registry")
    written = {name: write(root / name) for name, write in FIXTURES.items()}
    return written | {None: write_official(root / "holisafe")}


def recognised_by(path: Path) -> list[str]:
    """Every benchmark whose own check says yes to `path`, each asked alone."""
    names = [b.name for b in BENCHMARKS.values() if b.find and b.find(path)]
    for file in sorted(path.glob("*.json")):
        first = json.loads(file.read_text(encoding="utf-8"))[0]
        keys = first.keys()
        names += [b.name for b in BENCHMARKS.values() if b.record_keys and b.record_keys <= keys]
    return names


def test_every_registered_benchmark_has_a_fixture():
    assert set(FIXTURES) == set(BENCHMARKS)


@pytest.mark.parametrize("name", [*BENCHMARKS, None])
def test_a_fixture_is_recognised_by_its_own_benchmark_alone(fixtures, name):
    assert recognised_by(fixtures[name]) == ([name] if name else [])
    dataset = read_dataset(fixtures[name], check_images=False)
    assert dataset.benchmark is (BENCHMARKS[name] if name else None)
    assert dataset.format == (name or "holisafe")


def test_holisafe_own_file_wins_over_another_benchmark_layout(tmp_path):
    root = released.write_harmeval(write_official(tmp_path))  # its images reused for HarmEval
    assert read_dataset(root, check_images=False).format == "holisafe"
    assert read_dataset(root / "harmeval.csv", check_images=False).format == "harmeval"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_sample_ids_name_their_benchmark(fixtures, name):
    samples = read_dataset(fixtures[name], check_images=False).samples
    assert samples and {benchmark_fields(s.id).benchmark for s in samples} == {name}


@pytest.mark.parametrize("benchmark", BENCHMARKS.values(), ids=list(BENCHMARKS))
def test_figures_are_the_table4_columns(benchmark):
    assert list(benchmark.figures([])) == [column.figure for column in benchmark.columns]


def test_table4_columns_keep_their_order():
    """Today's columns, in today's order, whatever benchmarks are added among them."""
    today = [
        ("Model", None), ("Judge", None),
        ("VLSBench Refuse", True), ("VLSBench Warn", True), ("VLSBench Safety", True),
        ("MM-SafetyBench SD", False), ("MM-SafetyBench TYPO", False),
        ("MM-SafetyBench SD+TYPO", False), ("MM-SafetyBench Avg", False),
        ("HarmEval Unsafe", False), ("SIUO Safe", True), ("FigStep ASR", False),
    ]  # fmt: skip
    known = {name.split()[0] for name, _ in today}
    assert [column for column in table4_grid([]).header if column[0].split()[0] in known] == today
    positions = [b.position for b in BENCHMARKS.values()]
    assert positions == sorted(positions)


def test_a_store_records_each_bench_s_benchmark(fixtures, tmp_path):
    with Store(tmp_path / "runs.db") as store:
        for name, folder in fixtures.items():
            dataset = read_dataset(folder)
            run = store.open_run(
                f"model-{name}", dataset.samples, {}, benchmark=dataset.benchmark_name
            )
            assert run.benchmark == (name or "holisafe")


def test_a_recorded_benchmark_decides_whose_sample_it_is():
    fields = benchmark_fields("siuo/privacy/7")
    assert fields is not None and fields.benchmark == "siuo"
    assert benchmark_fields("siuo/privacy/7", recorded="siuo") == fields
    assert benchmark_fields("siuo/privacy/7", recorded="holisafe") is None
