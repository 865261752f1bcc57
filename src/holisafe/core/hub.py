"""Where a named model or data set lives: a local folder or file, or the Hugging Face Hub.

The rules (the README states them too):
- a name that exists on disk is local;
- a name that starts with `.`, `/` or `~`, or has more than one `/`, is a path, never a Hub id;
- otherwise `name` or `owner/name` (letters, digits, `-`, `_`, `.`, as the Hub spells ids) is
  a Hub id. Before anything is downloaded the Hub is asked, with a short timeout, whether it
  answers (once per process: a model's load reads several files); when it does not (or
  `HF_HUB_OFFLINE` is set) the id is served from the local cache or refused at once, instead
  of after minutes of retries.

A local model folder's revision, for provenance, is a fingerprint of its files
(`folder_revision`).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import httpx
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id

from holisafe.core.errors import HolisafeError

PROBE_TIMEOUT_S = 5.0


class HubError(HolisafeError):
    """A named model or data set that is neither on disk nor obtainable from the Hub."""


def is_hub_id(name: str) -> bool:
    """Whether `name` is spelled as a Hub id (`name` or `owner/name`) rather than as a path."""
    if name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def local_or_hub(
    name: str,
    what: str,
    *,
    repo_type: str = "model",
    folder: bool = True,
    error: type[HolisafeError] = HubError,
) -> str:
    """The local path `name` names (absolute), or a Hub id (or its cached copy) to load it from.

    `what` names the thing in messages ("hf model", "benchmark", ...). With `folder`, a local
    file is refused (models are folders). Raises `error` saying what to do next.
    """
    path = Path(name).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise error(f"{what} {name!r} is a file; give its folder")
        return str(path.resolve())
    if not is_hub_id(name):
        raise error(f"{what} {name!r}: no such file or folder")
    return _from_hub(name, what, repo_type, error)


def _from_hub(repo_id: str, what: str, repo_type: str, error: type[HolisafeError]) -> str:
    """`repo_id` when the Hub answers, else the path of its cached snapshot."""
    problem = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable()
    if problem is None:
        return repo_id
    try:
        return snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
    except LocalEntryNotFoundError:
        raise error(
            f"{what} {repo_id!r}: there is no such local folder, and it cannot be fetched from "
            f"the Hugging Face Hub ({problem}) nor found in the cache {constants.HF_HUB_CACHE}. "
            "Give a local folder, connect to the network, or download it where there is one "
            "and copy the cache here (with HF_HUB_OFFLINE=1 only the cache is used)"
        ) from None


def hub_unreachable() -> str | None:
    """Why the Hub endpoint does not answer (None when it does), found out within seconds."""
    return _probe(constants.ENDPOINT)


@functools.cache
def _probe(endpoint: str) -> str | None:
    try:
        httpx.head(endpoint, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{endpoint} does not answer: {type(exc).__name__}: {exc}"
    return None


def folder_revision(folder: str | Path) -> str:
    """A fingerprint of a model folder: its files' names and sizes and its JSON files' text
    (config, tokenizer, weight index); weights are not read, which would take minutes."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return f"folder:{digest.hexdigest()[:16]}"
