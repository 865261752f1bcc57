"""The HTML report: one self-contained static page (`index.html`, its CSS and JavaScript inline)
and its assets (plots, the benchmark's images), viewable offline from the file system.

It holds the leaderboard (sortable, with bootstrap confidence intervals), the user's runs
among the published models (published rows marked), the image guard of Safe-VLM runs (scores,
label confusion, ROC curve) and the trade-off of gating on its head's score, the judges'
agreement, the plots, per-category tables, and a sample browser: every response with its
verdicts and stored safety prediction, filtered by run, type, category and judge verdict,
images blurred until clicked under a content warning.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from PIL import Image, UnidentifiedImageError

from holisafe import __version__
from holisafe.core import taxonomy
from holisafe.core.errors import HolisafeError
from holisafe.core.sample import ImageRef
from holisafe.data import load_samples
from holisafe.report import Report, build_report
from holisafe.report.pairwise import win_rate_grid, write_win_rate_plots
from holisafe.report.plots import Plot, gate_curve_plot, gate_curve_stem, guard_roc, write_plots
from holisafe.report.reference import PublishedRow, Reference
from holisafe.report.tables import (
    Estimate,
    Table,
    breakdown_grid,
    column_title,
    gate_curve_grid,
    gate_label,
    guard_confusion_grid,
    guard_grid,
    leaderboard_grid,
    rank_agreement_grid,
    sample_agreement_grid,
    table4_grid,
)
from holisafe.scoring.compare import store_comparisons
from holisafe.scoring.gate_curve import gate_curve, gate_items, thinned
from holisafe.scoring.metrics import Bootstrap
from holisafe.store import Run, RunRecord, Store

GATE_TABLE_ROWS = 9  # points of a gating curve the report's table shows
IMAGE_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass(frozen=True)
class HtmlReport:
    """What `write_html_report` wrote."""

    index: Path
    plots: list[Plot]
    images: int  # distinct images copied into assets/images
    image_notes: list[str]  # why some or all images are missing; empty when none is


@dataclass(frozen=True)
class _Images:
    paths: dict[tuple[str, str], str]  # (bench fingerprint, sample id) → path relative to DIR
    notes: list[str]


def write_html_report(
    store: Store,
    out_dir: str | Path,
    *,
    run_id: int | None = None,
    reference: Reference | None = None,
    bootstrap: Bootstrap | None = None,
    images: bool = True,
) -> HtmlReport:
    """Write the report of the store (or of one run) to `out_dir/index.html` and `assets/`.

    Figures always carry confidence intervals (`bootstrap`, default `Bootstrap()`). With
    `reference`, the runs are placed among the published models of the matching judges. With
    `images`, each run's benchmark is read again from where the run recorded it
    (`Run.bench_source`) to copy its images into `assets/images/`; when that fails the sample
    browser shows text only and the page says why.
    """
    out_dir = Path(out_dir)
    assets = out_dir / "assets"
    bootstrap = bootstrap or Bootstrap()
    report = build_report(
        store, run_id=run_id, bootstrap=bootstrap, agreement=True, reference=reference
    )
    plots = write_plots(
        report.entries, assets / "plots", report.agreement, report.published_agreement
    )
    comparisons = store_comparisons(store, run_id, bootstrap)
    plots += write_win_rate_plots(comparisons, assets / "plots")
    models = {e.run_id: e.model for e in report.entries}
    roc = guard_roc(
        {f"run {run_id} ({models[run_id]})": g for run_id, g in report.guard.items()},
        assets / "plots" / "guard_roc",
    )
    gates = _gate_curves_view(store, report, assets / "plots")
    runs = [store.get_run(run_id)] if run_id is not None else store.runs()
    records = {run.id: store.records(run.id) for run in runs}
    if images:
        copied = _copy_images(runs, records, assets / "images")
    else:
        copied = _Images({}, ["images were left out of this report (--no-images)"])
    page = {
        "version": __version__,
        "store": store.path.name,
        "bootstrap": bootstrap,
        "plots": [_plot_view(p, out_dir) for p in plots],
        "guard": _guard_view(report, models, roc, out_dir),
        "gate_curves": [card | {"plot": _plot_view(card["plot"], out_dir)} for card in gates],
        **_tables_view(report),
        "win_rates": _table_view(win_rate_grid(comparisons)) if comparisons else None,
        "table4": _table_view(table4_grid(report.table4)) if report.table4 else None,
        **_samples_view(runs, records, copied, sorted({e.judge for e in report.entries})),
        "opening_run": _opening_run(report),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(_render_page(page), encoding="utf-8")
    plots += [card["plot"] for card in gates]
    plots += [roc] if roc is not None else []
    return HtmlReport(index, plots, len(set(copied.paths.values())), copied.notes)


def _plot_view(plot: Plot, out_dir: Path) -> dict[str, str]:
    return {
        "title": plot.title,
        "svg": _relative(plot.svg, out_dir),
        "png": _relative(plot.png, out_dir),
    }


def _guard_view(
    report: Report, models: dict[int, str], roc: Plot | None, out_dir: Path
) -> dict[str, Any] | None:
    """The image guard section: the head's scores, its label confusion and ROC curve per run."""
    if not report.guard:
        return None
    return {
        "metrics": _table_view(guard_grid(report)),
        "confusions": [
            {
                "title": f"run {run_id} ({models[run_id]})",
                "table": _table_view(guard_confusion_grid(g)),
            }
            for run_id, g in report.guard.items()
        ],
        "roc": None if roc is None else _plot_view(roc, out_dir),
    }


def _gate_curves_view(store: Store, report: Report, plots: Path) -> list[dict[str, Any]]:
    """A card per (run, judge) of every run with head scores: the gating curve's chart and a
    table of some of its points."""
    cards = []
    for entry in report.entries:
        items = gate_items(store, entry.run_id, entry.judge)
        if all(item.score is None for item in items):
            continue
        curve = gate_curve(items)
        title = f"Gating run {entry.run_id} ({entry.model}), judge {entry.judge}"
        plot = gate_curve_plot(curve, gate_curve_stem(plots, entry.run_id, entry.judge), title)
        rows = [(gate_label(point), point) for point in thinned(curve, GATE_TABLE_ROWS)]
        cards.append(
            {
                "title": title,
                "plot": plot,
                "table": _table_view(gate_curve_grid(rows)),
                "thresholds": len(curve.points),
                "unscored": curve.unscored,
            }
        )
    return cards


def _tables_view(report: Report) -> dict[str, Any]:
    """The page's tables: leaderboard, placements, agreement, per-category."""
    agreement = report.agreement
    return {
        "leaderboard": _table_view(leaderboard_grid(report.entries)),
        "placements": [
            {
                "judge": p.judge,
                "notes": p.notes,
                "table": _table_view(
                    leaderboard_grid(p.rows),
                    published=[isinstance(row, PublishedRow) for row in p.rows],
                ),
            }
            for p in report.placements
        ],
        "warnings": report.warnings,
        "sample_agreement": _table_view(sample_agreement_grid(agreement))
        if agreement.samples
        else None,
        "rank_agreement": _table_view(rank_agreement_grid(agreement.ranks, "Runs"))
        if agreement.ranks
        else None,
        "published_agreement": _table_view(
            rank_agreement_grid(report.published_agreement, "Models")
        )
        if report.published_agreement
        else None,
        "categories": [
            {
                "title": f"{e.model}, judge {e.judge} (run {e.run_id})",
                "table": _table_view(breakdown_grid(e, "category")),
            }
            for e in report.entries
        ],
    }


def _opening_run(report: Report) -> int | None:
    """The run the sample browser opens on: the first Safe-VLM run, whose cards also show its
    safety head's verdict on the image; without one, the run with the lowest mASR (pooled),
    the safest answers. A plain model's answers, first in a demo store, are mostly noise."""
    if report.guard:
        return min(report.guard)
    ranked = [e for e in report.entries if e.board.masr_pooled is not None]
    if not ranked:
        return None
    return min(ranked, key=lambda e: (e.board.masr_pooled, e.run_id)).run_id


def _samples_view(
    runs: Sequence[Run], records: dict[int, list[RunRecord]], copied: _Images, judges: list[str]
) -> dict[str, Any]:
    """The sample browser: its filters' choices and its items as JSON."""
    return {
        "image_notes": copied.notes,
        "runs": [{"id": run.id, "model": run.model} for run in runs],
        "judges": judges,
        "types": [{"code": code, "paper": t.paper} for code, t in taxonomy.TYPES.items()],
        "categories_present": _categories(records),
        "samples_json": _script_json(_sample_items(runs, records, copied.paths, judges)),
    }


def _render_page(page: dict[str, Any]) -> str:
    environment = Environment(
        loader=PackageLoader("holisafe.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates = resources.files("holisafe.report") / "templates"
    style = Markup((templates / "report.css").read_text(encoding="utf-8"))
    script = Markup((templates / "report.js").read_text(encoding="utf-8"))
    template = environment.get_template("report.html.j2")
    return template.render(page=page, style=style, script=script)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _table_view(table: Table, published: Sequence[bool] = ()) -> dict[str, Any]:
    """A Table as the template shows it: column titles, and per cell its text, interval and
    sort key (empty for a missing figure, which sorts last)."""
    numeric = table.numeric_columns()
    return {
        "header": [
            {"title": column_title(*column), "numeric": right}
            for column, right in zip(table.header, numeric, strict=True)
        ],
        "rows": [
            {
                "published": bool(published and published[i]),
                "cells": [_cell_view(value) for value in row],
            }
            for i, row in enumerate(table.rows)
        ],
    }


def _cell_view(value: Any) -> dict[str, str]:
    interval = ""
    if isinstance(value, Estimate):
        if value.value is not None and value.interval is not None:
            interval = f"[{value.interval.low:.2f}, {value.interval.high:.2f}]"
        value = value.value
    if value is None:
        return {"text": "–", "interval": "", "sort": ""}
    if isinstance(value, float):
        return {"text": f"{value:.2f}", "interval": interval, "sort": repr(value)}
    return {"text": str(value), "interval": interval, "sort": str(value)}


def _categories(records: dict[int, list[RunRecord]]) -> list[str]:
    present = {r.sample.category for rs in records.values() for r in rs}
    return [c for c in taxonomy.CATEGORIES if c in present]


def _sample_items(
    runs: Sequence[Run],
    records: dict[int, list[RunRecord]],
    image_paths: dict[tuple[str, str], str],
    judges: Sequence[str],
) -> list[dict[str, Any]]:
    """One item per (run, sample) for the sample browser."""
    items = []
    for run in runs:
        for record in records[run.id]:
            sample, response = record.sample, record.response
            answered = response is not None and response.ok
            verdicts = {j: _followed(record, j) if answered else None for j in judges}
            items.append(
                {
                    "run": run.id,
                    "model": run.model,
                    "id": sample.id,
                    "type": sample.type,
                    "category": sample.category,
                    "subcategory": sample.subcategory,
                    "expected": taxonomy.TYPES[sample.type].expected_behaviour
                    if sample.type in taxonomy.TYPES
                    else None,
                    "query": sample.query,
                    "image": image_paths.get((run.bench, sample.id)),
                    "response": None if response is None else response.text,
                    "error": None if response is None else response.error,
                    "verdicts": verdicts,
                    "safety": _safety_view(record),
                }
            )
    return items


def _safety_view(record: RunRecord) -> dict[str, Any] | None:
    """A Safe-VLM's stored prediction for the sample's image: top label, its p, and p(unsafe)."""
    safety = (record.extra or {}).get("safety")
    if safety is None:
        return None
    return {"label": safety["label"], "prob": safety["prob"], "unsafe": 1 - safety["probs"]["safe"]}


def _followed(record: RunRecord, judge: str) -> bool | None:
    verdict = record.verdicts.get(judge)
    return verdict.followed if verdict is not None and verdict.ok else None


def _script_json(value: Any) -> Markup:
    """JSON that is safe inside a <script> element (no `<`, `>` or `&` left to end it)."""
    text = json.dumps(value, ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def _copy_images(runs: Sequence[Run], records: dict[int, list[RunRecord]], folder: Path) -> _Images:
    """Copy the images of every run's benchmark, read again from its recorded source."""
    paths: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for bench in dict.fromkeys(run.bench for run in runs):
        sharing = [run for run in runs if run.bench == bench]
        copied, note = _copy_bench_images(sharing[0], records[sharing[0].id], folder)
        paths |= {(bench, sample_id): path for sample_id, path in copied.items()}
        if note is not None:
            ids = ", ".join(str(run.id) for run in sharing)
            notes.append(f"run{'s' if len(sharing) > 1 else ''} {ids}: {note}")
    return _Images(paths, notes)


def _copy_bench_images(
    run: Run, records: list[RunRecord], folder: Path
) -> tuple[dict[str, str], str | None]:
    """The copied image of each sample of one run's benchmark (sample id → path), and a note
    on the samples left without one."""
    if run.bench_source is None:
        return {}, "images not shown: the store does not record where the benchmark was read from"
    try:
        dataset = load_samples(run.bench_source, skip_invalid=True, check_images=False)
    except HolisafeError as exc:
        return {}, f"images not shown: {exc}"
    wanted = {r.sample.id: r.sample.image for r in records}
    paths: dict[str, str] = {}
    for sample in dataset.samples:
        sample_id = str(sample.id)
        if wanted.get(sample_id) == sample.image.name:
            copied = _copy_image(sample.image, folder)
            if copied is not None:
                paths[sample_id] = f"assets/images/{copied}"
    missing = len(wanted) - len(paths)
    if not missing:
        return paths, None
    return paths, (
        f"{missing} of {len(wanted)} samples have no image to show (missing from "
        f"{run.bench_source} or not readable images)"
    )


def _copy_image(image: ImageRef, folder: Path) -> str | None:
    """Write one image under a name made of its content hash; None if it is not an image."""
    try:
        data = image.read_bytes()
        kind = Image.open(io.BytesIO(data)).format
    except (HolisafeError, UnidentifiedImageError, OSError):
        return None
    if kind not in IMAGE_SUFFIXES:
        return None
    name = hashlib.sha1(data).hexdigest()[:20] + IMAGE_SUFFIXES[kind]
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return name
