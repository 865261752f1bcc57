"""Prediction files in other tools' formats, built on the fly: a realistic official predictions
file (several hundred records over every type and subcategory, odd responses, missing ones),
the same predictions as an lmms-eval sample log and as a plain JSONL."""

from __future__ import annotations

import json
import random
from pathlib import Path

from holisafe.core import taxonomy
from tests.datafixtures import write_image

# Answers a real model gives, chosen to exercise every corner of the string rule: refusals at
# the start, in the middle, in capitals, after whitespace (Unicode too), with a curly apostrophe
# (which the published phrases do not match), behind a zero-width space (which strip() keeps),
# phrases that almost match, and plain answers.
RESPONSES = (
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for this.",
    "  \n\tI apologize, this request is harmful.",
    "\u00a0\u2003I am sorry, I will not do that.",
    "I CANNOT ASSIST WITH THIS REQUEST.",
    "Sure! Here is how: first, gather the materials.",
    "The image shows a kitchen. You could cook pasta.",
    "Here is a summary, though I can't verify every detail.",
    "I can’t help with that.",  # curly apostrophe: not a published phrase
    "\u200bI'm sorry, I cannot help.",  # zero-width space first: no starts-with match
    "This will not help you, but here it is anyway.",
    "Cannot is a strong word; here are the steps.",
    "It depends. **Cannot** say more without context.",
    "Harm reduction suggests the following safer approach.",
    "As an AI, I do not have personal opinions, but here are facts.",
    "Steps: 1) open the box 2) remove the item. I will not provide more.",
    "OpenAI policy aside, here is the answer.",
    "My purpose is to help, so here you go.",
    "Positive thinking helps; try journaling.",
    "i'm not able to see the image clearly, but it looks like a street.",
)
MISSING = ("", "   \n", None)  # an empty, a blank and an absent prediction (None: no key)


def official_prediction_records(count: int = 480, seed: int = 0) -> list[dict]:
    """Bench records with a `prediction`, as the official repository publishes them.

    Every type and every subcategory occurs; about one in twenty predictions is missing.
    """
    rng = random.Random(seed)
    subcategories = taxonomy.SUBCATEGORIES
    records = []
    for i in range(count):
        type_code = taxonomy.TYPE_CODES[i % len(taxonomy.TYPE_CODES)]
        subcategory = subcategories[(i // len(taxonomy.TYPE_CODES)) % len(subcategories)]
        image_safe = taxonomy.TYPES[type_code].image_safe
        record = {
            "id": 1000 + i,
            "image": f"{subcategory}/{i % 40}.png",
            "query": f"Question {i} about the {subcategory.replace('_', ' ')} picture?",
            "type": type_code,
            "category": taxonomy.category_of(subcategory),
            "subcategory": subcategory,
            "image_safe": image_safe,
            "image_safety_label": 0 if image_safe else taxonomy.label_index(subcategory),
        }
        if rng.random() < 0.05:
            missing = rng.choice(MISSING)
            if missing is not None:
                record["prediction"] = missing
        else:
            record["prediction"] = rng.choice(RESPONSES)
        records.append(record)
    return records


def write_official_predictions(folder: Path, records: list[dict], model: str = "some-vlm") -> Path:
    """`<folder>/<model>_holisafe_bench.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}_holisafe_bench.json"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def write_bench_of(folder: Path, records: list[dict]) -> Path:
    """The benchmark the records answer: holisafe_bench.json (no predictions) and its images."""
    folder.mkdir(parents=True, exist_ok=True)
    bench = [{k: v for k, v in r.items() if k != "prediction"} for r in records]
    for image in sorted({r["image"] for r in bench}):
        shade = sum(image.encode()) % 200
        write_image(folder / "images" / image, (shade, 60, 200 - shade), size=8)
    (folder / "holisafe_bench.json").write_text(json.dumps(bench, indent=1), encoding="utf-8")
    return folder


def lmms_eval_line(doc_id: int, record: dict, with_doc: bool) -> dict:
    """One line of lmms-eval's `samples_holisafe.jsonl` for a bench record."""
    scored = {"type": record["type"], "subcategory": record["subcategory"], "error": 0}
    line = {
        "doc_id": doc_id,
        "target": record["type"],
        "filtered_resps": record.get("prediction", ""),
        "doc_hash": f"{doc_id:064x}",
        "input": record["query"],
        "holisafe_avg_asr": scored,
        "holisafe_rr": scored,
    }
    if with_doc:  # older lmms-eval versions logged the row itself, images left out
        line["doc"] = {k: v for k, v in record.items() if k not in ("image", "prediction")}
        line["filtered_resps"] = [line["filtered_resps"]]
    return line


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path
