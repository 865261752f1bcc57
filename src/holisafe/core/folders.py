"""Output folders that are whole or absent: written beside their place, moved in when complete."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from holisafe.core.errors import HolisafeError


class FolderExistsError(HolisafeError):
    """An output folder is there already and the command was not told to replace it."""


def refuse_existing(target: Path, overwrite: bool) -> None:
    """Raise unless `target` is absent, an empty folder, or `overwrite` allows replacing it."""
    if overwrite or not target.exists():
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    raise FolderExistsError(f"{target} already exists; pass --overwrite to replace it")


@contextmanager
def new_folder(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """An empty folder beside `target` to write into; when the block completes it replaces
    `target`, and when the block fails it is removed, so `target` is never left half-made.

    An existing `target` (other than an empty folder) is replaced only with `overwrite`.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _move_into_place(partial, target)


def _move_into_place(partial: Path, target: Path) -> None:
    """Rename `partial` to `target`; the old `target` goes only once the new one is there."""
    if not target.exists() and not target.is_symlink():
        partial.rename(target)
        return
    old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
    target.rename(old)
    partial.rename(target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
