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
from holisafe.store import AuditEntry, Store
from holisafe.store.schema import MIGRATIONS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAIN_STORE = FIXTURES / "store_main_2026-12.sqlite"  # see fixtures/README.md
TABLES = {
    "schema_version", "benches", "samples", "runs", "responses", "verdicts", "comparisons",
    "claims", "judge_batches", "judge_batch_keepers", "provenance", "build_replies",
    "audit_images",
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
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        return {
            name: db.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in TABLES & names
        }


@pytest.fixture
def main_store(tmp_path):
    """A copy of the store written by main before the migrations (opening migrates it)."""
    return Path(shutil.copy(MAIN_STORE, tmp_path / "store.sqlite"))


def test_a_store_written_before_the_migrations_opens_migrated_with_all_its_rows(main_store):
    before_version, before = layout(main_store)
    assert before_version == 0 and set(before) == TABLES - {"audit_images"}
    kept = rows(main_store)
    Store(main_store, create=False).close()
    version, columns = layout(main_store)
    Store(main_store.with_name("new.sqlite")).close()
    assert (version, columns) == layout(main_store.with_name("new.sqlite"))
    assert version == len(MIGRATIONS)
    assert rows(main_store) == kept | {"audit_images": 0}
    assert all(count for name, count in kept.items() if name != "audit_images")


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


def test_migration_4_adds_the_audit_images_to_a_store_of_migration_3(main_store):
    with closing(sqlite3.connect(main_store)) as db:  # the fixture as migration 3 left it
        for script in MIGRATIONS[1:3]:
            for statement in script.split(";"):
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        db.commit()
    kept = rows(main_store)
    with Store(main_store, create=False) as store:
        run = store.open_audit_run("served")
        entry = AuditEntry("r1", 1.0e9, "q", "ab" * 32, b"png", "answer", None, 0.1, {})
        store.save_audit(run.id, [entry])
        assert store.audit_image("ab" * 32) == b"png"
        benchmark_runs = [r for r in store.runs() if r.id != run.id]
    version, columns = layout(main_store)
    assert version == 4 == len(MIGRATIONS) and set(columns) == TABLES
    added = {"benches": 1, "samples": 1, "runs": 1, "responses": 1}
    assert rows(main_store) == {name: kept[name] + added.get(name, 0) for name in kept} | {
        "audit_images": 1
    }
    assert len(benchmark_runs) == kept["runs"]
