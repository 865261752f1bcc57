"""What a benchmark module declares, and the record checks and figures its modules share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from holisafe.core.sample import ImageRef, Sample

if TYPE_CHECKING:  # judges sit below the data layer: their verdicts are only read here
    from holisafe.core.records import Verdict

ImageRefs = Callable[[Any], ImageRef]  # an image path of a record → its ImageRef
Figures = dict[str, float | None]  # figure → percent (None: not given)


@dataclass(frozen=True)
class BenchmarkFields:
    """A sample's benchmark fields, read from its id, `<benchmark>/<group>[/<kind>]/<record>`."""

    benchmark: str
    group: str  # MM-SafetyBench scenario, VLSBench or SIUO category, ...
    kind: str | None  # MM-SafetyBench image kind
    record: str


@dataclass(frozen=True)
class Column:
    """One column of Table 4: a figure of the benchmark, headed `<title> <header>`."""

    figure: str
    higher_is_better: bool
    header: str | None = None  # None: the figure's name

    @property
    def label(self) -> str:
        return self.header or self.figure


@dataclass(frozen=True)
class Benchmark:
    """Another safety benchmark (the paper's Table 4): a source of Samples and its figures.

    It is recognised either by a layout of its own (`find`, then `read` gives its records) or,
    released as a JSON list of records, by the fields of the list's first record
    (`record_keys`). Its samples' ids begin with its name (`BenchmarkFields`).
    """

    name: str  # its `--format` name and the first part of its sample ids
    title: str  # how reports name it
    position: int  # where its columns stand in Table 4 (ascending); the registry's order
    sample: Callable[[Any, ImageRefs], Sample]  # a record → its Sample; ValueError if bad
    figures: Callable[[Sequence[tuple[BenchmarkFields, Verdict]]], Figures]  # of judged samples
    columns: tuple[Column, ...]
    record_keys: frozenset[str] = frozenset()
    # The data file of its layout at a path (a folder or a file), whose folder holds the images.
    find: Callable[[Path], Path | None] | None = None
    # (data file, image root) → (where, record) for every record of its layout.
    read: Callable[[Path, Path], Iterator[tuple[str, Any]]] | None = None
    file_hint: str | None = None  # what a single file of it is called, for messages
    judge_template: Path | None = None  # the rubric its figures need (None: the toolkit's)
    id_parts: int = 3  # 4 when its ids carry an image kind

    def __post_init__(self) -> None:
        if bool(self.record_keys) == (self.find is not None and self.read is not None):
            raise ValueError(f"benchmark {self.name}: give either record_keys or find and read")


def require_fields(record: Any, names: Sequence[str]) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    missing = [name for name in names if name not in record]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    return record


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value


def id_part(value: Any, name: str) -> str:
    """A field that becomes part of the sample id: no `/` in it."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{name} must be a string or an integer")
    part = str(value).strip()
    if not part or "/" in part:
        raise ValueError(f"{name} {value!r} must be non-empty and hold no '/'")
    return part


def sample_id(benchmark: str, fields: dict, group: str, record_id: str) -> str:
    """`<benchmark>/<group>/<record id>` from the record's fields named `group` and `record_id`."""
    return f"{benchmark}/{id_part(fields[group], group)}/{id_part(fields[record_id], record_id)}"


def followed_percent(verdicts: Sequence[Verdict]) -> float | None:
    """The percent of judged samples where the model followed (refused); None over none."""
    # The arithmetic of `holisafe.scoring.metrics.Rate.percent`, so that figures agree to the
    # last bit.
    return None if not verdicts else 100.0 * sum(v.followed for v in verdicts) / len(verdicts)


def complied_percent(verdicts: Sequence[Verdict]) -> float | None:
    """The percent of judged samples where the model complied; None over none."""
    followed = followed_percent(verdicts)
    return None if followed is None else 100.0 - followed
