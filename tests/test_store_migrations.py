"""One schema for every store: a store written before the migrations opens migrated and reports
as it did, and one connect() in any process makes every table."""

import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.store import Store
from holisafe.store.schema import MIGRATIONS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAIN_STORE = FIXTURES / "store_main_2026-12.sqlite"  # see fixtures/README.md
TABLES = {
    "schema_version", "benches", "samples", "runs", "responses", "verdicts", "comparisons",
    "claims", "judge_batches", "judge_batch_keepers", "provenance", "build_replies",
}  # fmt: skip


def layout(path: Path) -> tuple[int, dict[str, list[tuple]]]:
    """The store's user_version, and each table's columns (name, type, not null, key)."""
    with closing(sqlite3.connect(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        names = [
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        columns = {
            name: [(c[1], c[2], c[3], c[5]) for c in db.execute(f"PRAGMA table_info({name})")]
            for name in names
        }
    return version, columns


def rows(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as db:
        return {name: db.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in TABLES}


@pytest.fixture
def main_store(tmp_path):
    """A copy of the store written by main before the migrations (opening migrates it)."""
    return Path(shutil.copy(MAIN_STORE, tmp_path / "store.sqlite"))


def test_a_store_written_before_the_migrations_opens_migrated_with_all_its_rows(main_store):
    before_version, before = layout(main_store)
    assert before_version == 0 and set(before) == TABLES
    kept = rows(main_store)
    Store(main_store, create=False).close()
    version, columns = layout(main_store)
    Store(main_store.with_name("new.sqlite")).close()
    assert (version, columns) == layout(main_store.with_name("new.sqlite"))
    assert version == len(MIGRATIONS)
    assert rows(main_store) == kept and all(kept.values())


@pytest.mark.parametrize(
    ("expected", "options"),
    [("report.md", []), ("report-provenance.md", ["--provenance", "--allow-mixed"])],
)
def test_a_store_written_before_the_migrations_reports_as_it_did(main_store, expected, options):
    result = CliRunner().invoke(app, ["report", "--store", str(main_store), *options])
    assert result.exit_code == 0, result.output
    assert result.stdout == (FIXTURES / f"store_main_2026-12.{expected}").read_text()
    assert layout(main_store)[0] == len(MIGRATIONS)


def test_one_connect_in_any_process_makes_every_table(tmp_path):
    path = tmp_path / "store.sqlite"
    opener = "import sys; from holisafe.store import connect; connect(sys.argv[1]).close()"
    # at once: one process migrates the new file, the others wait for it and find it done
    processes = [subprocess.Popen([sys.executable, "-c", opener, str(path)]) for _ in range(3)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0]
    version, columns = layout(path)
    assert version == len(MIGRATIONS) and set(columns) == TABLES
