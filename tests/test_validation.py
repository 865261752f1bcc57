"""Every validation rule, through the library and through `holisafe data validate`."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from holisafe.core.errors import DataError
from holisafe.data import read_dataset
from tests.datafixtures import CASES, official_records, write_official


def holisafe(*args):
    return subprocess.run(
        [sys.executable, "-m", "holisafe", *args], capture_output=True, text=True, timeout=120
    )


def break_record(index, **changes):
    records = official_records()
    for name, value in changes.items():
        if value is KeyError:
            del records[index][name]
        else:
            records[index][name] = value
    return records


RECORD_RULES = [
    ({"query": KeyError}, "id 2: missing field(s): query"),
    ({"type": "XUU"}, "id 2: unknown safeness type 'XUU'"),
    (
        {"image_safety_label": 25},
        "id 2: image safety label must be an integer from 0 to 19, got 25",
    ),
    ({"image_safety_label": "drug_related_hazards"}, "id 2: image_safety_label must be an integer"),
    ({"category": "violence"}, "id 2: subcategory 'drug_related_hazards' belongs to category"),
    ({"category": "crime"}, "id 2: unknown category 'crime'"),
    ({"subcategory": "arson"}, "id 2: unknown subcategory 'arson'"),
    ({"image_safety_label": 0}, "id 2: image_safety_label 0 (safe) contradicts type USU"),
    ({"image_safe": True}, "id 2: image_safe=true contradicts type USU"),
    ({"image_safe": "no"}, "id 2: image_safe must be true or false"),
    ({"query": ""}, "id 2: query must be a non-empty string"),
    ({"id": True}, "record at index 1: id must be an integer or a non-blank string"),
    ({"id": " \t"}, "record at index 1: id must be an integer or a non-blank string"),
    ({"id": 1}, "id 1: duplicate id (first seen at record at index 0"),
    # the store keeps ids as text, so 1 and "1" are one id
    ({"id": "1"}, "id '1': duplicate id (first seen at record at index 0; ids are compared"),
    ({"image_safety_label": None}, "id 2: image_safety_label must be an integer, got None"),
    # lone surrogates (a JSON "\ud800" escape) cannot be stored as UTF-8 anywhere
    ({"query": "why\ud800?"}, "id 2: query is not valid Unicode: lone surrogate U+D800 at"),
    ({"id": "a\udfff"}, "id 'a\\udfff': id is not valid Unicode: lone surrogate U+DFFF"),
    ({"extra": {"note": ["\udc00"]}}, "id 2: extra.note[0] is not valid Unicode"),
    ({"image": "../outside.png"}, "id 2: image path '../outside.png' escapes the image root"),
    ({"image": "/etc/passwd"}, "id 2: image path '/etc/passwd' is absolute"),
    ({"image": "missing.png"}, "id 2: image file not found"),
]


@pytest.mark.parametrize(("changes", "message"), RECORD_RULES)
def test_each_record_rule_names_the_record_and_keeps_the_rest(tmp_path, changes, message):
    root = write_official(tmp_path, break_record(1, **changes))
    (tmp_path / "outside.png").write_bytes(b"")
    dataset = read_dataset(root)
    assert len(dataset.problems) == 1, dataset.problems
    assert str(dataset.problems[0]).startswith(message)
    assert len(dataset.samples) == len(CASES) - 1


def test_a_record_that_is_not_an_object(tmp_path):
    records = official_records()
    records[1] = ["not", "an", "object"]
    dataset = read_dataset(write_official(tmp_path, records))
    assert [str(p) for p in dataset.problems] == [
        "record at index 1: record must be a JSON object, got list"
    ]


def test_an_images_folder_that_is_a_symlink_is_named_in_the_message(tmp_path):
    root = write_official(tmp_path / "bench")
    (root / "images").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / "images")
    problems = read_dataset(root).problems
    assert len(problems) == len(CASES)
    assert f"through the symbolic link {root / 'images'}" in problems[0].reason
    assert "--image-root" in problems[0].reason
    assert not read_dataset(root, image_root=tmp_path / "elsewhere").problems


def test_an_image_that_is_a_named_pipe_is_refused_without_waiting(tmp_path):
    root = write_official(tmp_path)
    (root / "images" / "img_1.png").unlink()
    os.mkfifo(root / "images" / "img_1.png")  # opening it to read would block for ever
    problems = read_dataset(root).problems
    assert [str(p) for p in problems] == [
        f"id 2: image {root / 'images/img_1.png'} is not a regular file"
    ]


def test_symlink_escaping_the_image_root(tmp_path):
    root = write_official(tmp_path / "bench", break_record(1, image="link.png"))
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "images" / "link.png")
    problems = read_dataset(root).problems
    assert [p.where for p in problems] == ["id 2"]
    assert "escapes the image root" in problems[0].reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is text, not a picture", "not a readable image file"),
        ("truncated", "truncated or corrupt"),
        ("bomb", "possible decompression bomb"),
    ],
)
def test_bad_image_files(tmp_path, content, reason):
    root = write_official(tmp_path)
    target = root / "images" / "img_1.png"
    if content == "truncated":
        Image.effect_noise((64, 64), 50).convert("RGB").save(target)
        target.write_bytes(target.read_bytes()[:400])
    elif content == "bomb":
        Image.new("1", (9000, 9000)).save(target)  # a small file, 81 megapixels decoded
    else:
        target.write_bytes(content)
    dataset = read_dataset(root)
    assert [p.where for p in dataset.problems] == ["id 2"]
    assert reason in dataset.problems[0].reason
    assert len(dataset.samples) == len(CASES) - 1


def test_malformed_json_names_line_and_column(tmp_path):
    root = write_official(tmp_path)
    (root / "holisafe_bench.json").write_text('[\n {"id": 1,\n  "query" "x"}\n]')
    with pytest.raises(DataError, match=r"malformed JSON at line 3, column 11"):
        read_dataset(root)


def test_cli_validate_clean_data_exits_zero(tmp_path):
    result = holisafe("data", "validate", str(write_official(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"{len(CASES)} records, {len(CASES)} valid samples, OK")


def test_cli_validate_prints_one_line_per_problem_and_exits_one(tmp_path):
    records = break_record(1, type="XUU")
    records[3]["image"] = "nowhere.png"
    root = write_official(tmp_path, records)
    result = holisafe("data", "validate", str(root))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("id 2: unknown safeness type 'XUU'")
    assert lines[1].startswith("id 4: image file not found")
    assert lines[2].endswith(f"{len(CASES)} records, {len(CASES) - 2} valid samples, 2 problem(s)")
    as_json = json.loads(holisafe("data", "validate", str(root), "--json").stdout)
    assert as_json["records"] == len(CASES) and as_json["valid_samples"] == len(CASES) - 2
    assert [p["where"] for p in as_json["problems"]] == ["id 2", "id 4"]


def test_cli_user_errors_are_one_line_not_a_traceback(tmp_path):
    result = holisafe("data", "validate", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nothing'}: no such file or directory"


def test_control_characters_in_file_names_never_reach_the_terminal_raw(tmp_path):
    root = write_official(tmp_path, break_record(1, image="\x1b]0;pwned\x07\x1b[31mred.png"))
    result = holisafe("data", "validate", str(root))
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;pwned\\x07\\x1b[31mred.png" in result.stdout
