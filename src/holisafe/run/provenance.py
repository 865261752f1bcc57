"""What produced a run: recorded each time a process works on it, checked before reporting it.

Each `evaluate` call (a first run, a resume, each worker) adds one record to the store's
`provenance` table: the versions of holisafe, torch and transformers, the model's resolved
revision (the Hub commit, or a fingerprint of a local folder), dtype, device(s), batch size and
endpoint, and the judges with their protocol; once the process is done, the images its API
model and judges re-encoded rather than sent as their own files, by reason (`reencoded_images`,
not compared between records). A run whose records differ in any of these (say,
resumed under another transformers, or answered by two servers) mixes results that may not be
comparable; `mixed` says how, and the report refuses such a run unless asked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import closing
from importlib import metadata
from pathlib import Path
from typing import Any

from holisafe.core.errors import HolisafeError
from holisafe.store import connect, transaction

PACKAGES = ("holisafe", "torch", "transformers")
# How requests are sent, not what answers them: may differ between workers of one run.
TRANSPORT = ("concurrency", "timeout_s", "max_retries")


def versions() -> dict[str, str | None]:
    """Installed versions (None: not installed), read without importing the packages."""
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def describe(model: object | None, judges: Sequence[str], judge_protocol: str) -> dict[str, Any]:
    """The record of one process's work on a run (`model` None: it answered nothing)."""
    details = dict(getattr(model, "details", {})) if model is not None else None
    if details is not None:
        details = {k: v for k, v in details.items() if k not in TRANSPORT}
    return {
        "versions": versions(),
        "model": details,
        "judges": sorted(judges),
        "judge_protocol": judge_protocol,
    }


def record(store_path: str | Path, run_id: int, provenance: dict[str, Any]) -> int:
    """Adds the record; returns its row, for `add_reencoded`."""
    with closing(connect(store_path)) as db:
        return db.execute(
            "INSERT INTO provenance VALUES (?, ?, ?)",
            (run_id, time.time(), json.dumps(provenance, sort_keys=True)),
        ).lastrowid


def reencoded_images(senders: Sequence[object]) -> dict[str, dict]:
    """What each API model among `senders` (the answering model, the judges' models; others
    are skipped) re-encoded: {spec: {reason: {"count": n, "examples": [image names]}}}."""
    found = {}
    for sender in senders:
        reencoded = getattr(sender, "reencoded", None)
        if reencoded is not None and (by_reason := reencoded.as_dict()):
            found[sender.spec] = by_reason
    return found


def add_reencoded(store_path: str | Path, row: int, found: dict[str, dict]) -> None:
    """Adds `reencoded_images` to the record in `row` (nothing when none was re-encoded)."""
    if not found:
        return
    with closing(connect(store_path)) as db, transaction(db):
        (text,) = db.execute("SELECT record FROM provenance WHERE rowid = ?", (row,)).fetchone()
        updated = json.loads(text) | {"reencoded_images": found}
        db.execute(
            "UPDATE provenance SET record = ? WHERE rowid = ?",
            (json.dumps(updated, sort_keys=True), row),
        )


def records(store_path: str | Path, run_id: int) -> list[dict[str, Any]]:
    """The run's records, oldest first, without repeats."""
    with closing(connect(store_path)) as db:
        rows = db.execute(
            "SELECT record FROM provenance WHERE run_id = ? ORDER BY recorded_at", (run_id,)
        )
        unique = list(dict.fromkeys(row[0] for row in rows))
    return [json.loads(text) for text in unique]


def mixed(found: Sequence[dict[str, Any]]) -> list[str]:
    """How the records of one run differ: `what: a / b` per differing field. Records of
    processes that answered nothing (model None) or judged nothing are not compared on that."""
    differences = []
    for field, values in _fields(found).items():
        distinct = list(dict.fromkeys(json.dumps(v, sort_keys=True) for v in values))
        if len(distinct) > 1:
            differences.append(f"{field}: {' / '.join(distinct)}")
    return differences


def _fields(found: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    # torch and transformers matter only where a local model ran
    local = any("dtype" in (item["model"] or {}) for item in found)
    fields: dict[str, list[Any]] = {}
    for item in found:
        for package, version in item["versions"].items():
            if package == "holisafe" or local:
                fields.setdefault(package, []).append(version)
        for key, value in (item["model"] or {}).items():
            fields.setdefault(f"model {key}", []).append(value)
    return fields


class MixedRunError(HolisafeError):
    """A run whose parts were produced under different conditions."""


def check_unmixed(store_path: str | Path, run_ids: Sequence[int]) -> None:
    """Raise MixedRunError naming every run whose records differ, and how."""
    problems = [
        f"run {run_id} mixes {'; '.join(differences)}"
        for run_id in run_ids
        if (differences := mixed(records(store_path, run_id)))
    ]
    if problems:
        raise MixedRunError(
            f"{'. '.join(problems)}. Its results may not be comparable: rerun it in a fresh "
            "store, or pass --allow-mixed to report it anyway"
        )


def summary(found: Sequence[dict[str, Any]]) -> str:
    """One line per record: versions, the model's details, the judges and their protocol."""
    lines = []
    for item in found:
        parts = [f"{name} {version or 'absent'}" for name, version in item["versions"].items()]
        parts += [f"{key} {value}" for key, value in (item["model"] or {}).items()]
        judges = ", ".join(item["judges"]) or "none"
        parts.append(f"judges {judges} ({item['judge_protocol']} protocol)")
        for sender, by_reason in item.get("reencoded_images", {}).items():
            counts = ", ".join(f"{reason}: {found['count']}" for reason, found in by_reason.items())
            parts.append(f"{sender} re-encoded images ({counts})")
        lines.append("; ".join(parts))
    return "\n".join(lines) or "no provenance recorded (a run made before holisafe recorded it)"
