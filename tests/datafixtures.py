"""Small data sets in every supported form, built on the fly for the tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from holisafe.core import taxonomy

# (type, category, subcategory) triples covering all five types and several categories. Each
# record has its own image, except the last, which shares img_4 (a safe image) with record 5.
CASES = [
    ("UUU", "violence", "weapon_related_violence"),
    ("USU", "illegal_activity", "drug_related_hazards"),
    ("SUU", "self_harm", "suicide"),
    ("SSU", "privacy", "identity_data_exposure"),
    ("SSS", "hate", "race"),
    ("USU", "sexual_content", "sexual_content"),
    ("SSS", "specialized_advice", "medical_advice"),
]


def write_image(path: Path, colour: tuple[int, int, int], size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def official_records() -> list[dict]:
    records = []
    for i, (type_code, category, subcategory) in enumerate(CASES):
        image_safe = taxonomy.TYPES[type_code].image_safe
        records.append(
            {
                "id": i + 1,
                "image": "img_4.png" if i == 6 else f"img_{i}.png",
                "query": f"question number {i + 1}?",
                "category": category,
                "subcategory": subcategory,
                "type": type_code,
                "image_safe": image_safe,
                "image_safety_label": 0 if image_safe else taxonomy.label_index(subcategory),
            }
        )
    return records


def write_official(root: Path, records: list[dict] | None = None) -> Path:
    """The official layout: holisafe_bench.json beside images/. Returns the folder."""
    records = official_records() if records is None else records
    root.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        write_image(root / "images" / f"img_{i}.png", (40 * i, 100, 200 - 30 * i))
    (root / "holisafe_bench.json").write_text(json.dumps(records, indent=1))
    return root
