"""Opening a store file: the one way every module connects to it, and its transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from holisafe import __version__
from holisafe.core.errors import HolisafeError
from holisafe.store.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_S = 30  # how long a statement waits while another process writes


class StoreError(HolisafeError):
    """A store that cannot be used as asked: unreadable file, wrong run, unknown sample."""


def connect(path: str | Path, *, check: bool = False) -> sqlite3.Connection:
    """A connection to the store at `path`, created if there is none, its schema up to date.

    The connection is in autocommit mode: a statement outside `transaction` commits on its own.
    The store is in WAL mode, so readers go on while one process writes; that needs memory
    shared between the processes, hence one machine and a local disk. `check` first reads the
    whole file for damaged pages, so that damage is found here, with the file's name, and not
    as a traceback in mid-run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from None
    try:
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA journal_mode = WAL")
        if check:
            _check_integrity(db, path)
        # Commits without an fsync each: in WAL mode a killed process still loses nothing
        # committed (only a power cut may take the last commits back), and a run commits
        # every answer as it arrives.
        db.execute("PRAGMA synchronous = NORMAL")
        _migrate(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"{path} is not a usable holisafe store: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """The block's statements as one transaction, which holds the store's write lock from its
    start: it commits when the block ends and rolls back when the block raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StoreError(
            f"{path} is damaged ({'; '.join(problems[:3])}); restore it from a copy, "
            "or recover what is readable with sqlite3's .recover"
        )


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Run the migrations the store has not had; refuse a file that is not a holisafe store."""
    if _user_version(db) >= len(MIGRATIONS):
        _check_holisafe(db, path)
        return
    with transaction(db):
        done = _user_version(db)  # read again: another process may have migrated meanwhile
        if done == 0 and db.execute("SELECT 1 FROM sqlite_master").fetchone():
            done = 1  # written before the migrations: it has the first one's tables
        if done:
            _check_holisafe(db, path)
        for number, script in enumerate(MIGRATIONS[done:], start=done + 1):
            for statement in script.split(";"):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")


def _user_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def _check_holisafe(db: sqlite3.Connection, path: Path) -> None:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
        raise StoreError(f"{path} is an SQLite database but not a holisafe store")
    version = db.execute("SELECT version FROM schema_version").fetchone()
    if version is None or version[0] != SCHEMA_VERSION:
        found = "none" if version is None else version[0]
        raise StoreError(
            f"store {path} has schema version {found}; this holisafe ({__version__}) "
            f"reads version {SCHEMA_VERSION}"
        )
