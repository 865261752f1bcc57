"""Counts of a data set: by type, category, subcategory, and the type x category table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from holisafe.core import taxonomy
from holisafe.core.sample import Sample

UNKNOWN = "unknown"


def _ordered(counter: Counter, order: Sequence[str]) -> dict[str, int]:
    known = {name: counter[name] for name in order if counter[name]}
    extra = {
        name: n
        for name, n in sorted(counter.items(), key=lambda kv: str(kv[0]))
        if name not in known
    }
    return known | extra


def dataset_stats(samples: Sequence[Sample]) -> dict:
    """Sample and image counts, per type, category, subcategory and type x category.

    Missing values (training data without HoliSafe fields) count under `unknown`.
    `missing_images` names the image files that do not exist (looked up, never decoded).
    """
    by_type = Counter(s.type or UNKNOWN for s in samples)
    by_category = Counter(s.category or UNKNOWN for s in samples)
    by_subcategory = Counter(s.subcategory or UNKNOWN for s in samples)
    table: dict[str, Counter] = {}
    for s in samples:
        table.setdefault(s.category or UNKNOWN, Counter())[s.type or UNKNOWN] += 1
    return {
        "samples": len(samples),
        "images": len({s.image.key for s in samples}),
        "missing_images": sorted(
            {s.image.name for s in samples if s.image.path and not s.image.path.is_file()}
        ),
        "by_type": _ordered(by_type, taxonomy.TYPE_CODES),
        "by_category": _ordered(by_category, tuple(taxonomy.CATEGORIES)),
        "by_subcategory": _ordered(by_subcategory, taxonomy.SUBCATEGORIES),
        "by_type_category": {
            category: _ordered(table[category], taxonomy.TYPE_CODES)
            for category in _ordered(by_category, tuple(taxonomy.CATEGORIES))
        },
    }


def plot_type_category(stats: dict, out: str | Path) -> Path:
    """A stacked bar chart of samples per category, stacked by type (the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = stats["by_type_category"]
    categories = list(table)
    types = [t for t in (*taxonomy.TYPE_CODES, UNKNOWN) if any(t in row for row in table.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(categories)), 4.5))
    bottom = [0] * len(categories)
    for type_code in types:
        counts = [table[c].get(type_code, 0) for c in categories]
        label = taxonomy.TYPES[type_code].paper if type_code in taxonomy.TYPES else type_code
        ax.bar(categories, counts, bottom=bottom, label=f"{type_code} ({label})")
        bottom = [b + n for b, n in zip(bottom, counts, strict=True)]
    ax.set_ylabel("samples")
    ax.set_title(f"{stats['samples']} samples over {stats['images']} images")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
