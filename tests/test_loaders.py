import json

import datasets
import pytest
from PIL import Image

from holisafe.core import hub
from holisafe.core.errors import DataError, RecordError
from holisafe.data import export_samples, load_samples, read_dataset
from holisafe.data.loaders import VLGUARD_CATEGORIES
from tests.datafixtures import CASES, official_records, write_image, write_official


def fields(sample):
    return (
        sample.id,
        sample.query,
        sample.type,
        sample.category,
        sample.subcategory,
        sample.image_safety_label,
        sample.response,
        sample.follow_up,
        sample.image.read_bytes(),
    )


def test_official_layout_loads_from_folder_or_file(tmp_path):
    root = write_official(tmp_path / "bench")
    by_folder = read_dataset(root)
    by_file = read_dataset(root / "holisafe_bench.json")
    assert by_folder.format == by_file.format == "holisafe"
    assert not by_folder.problems
    assert [s.id for s in by_folder.samples] == list(range(1, len(CASES) + 1))
    assert [fields(s) for s in by_folder.samples] == [fields(s) for s in by_file.samples]
    first = by_folder.samples[0]
    assert (first.type, first.category, first.subcategory) == CASES[0]
    assert first.image.path == (root / "images" / "img_0.png").resolve()
    assert first.image.load().size == (16, 16)


def test_image_paths_may_carry_the_images_prefix(tmp_path):
    records = official_records()
    records[0]["image"] = "images/img_0.png"
    dataset = read_dataset(write_official(tmp_path, records))
    assert not dataset.problems
    assert dataset.samples[0].image.path.name == "img_0.png"


def test_images_load_lazily(tmp_path):
    root = write_official(tmp_path)
    dataset = read_dataset(root, check_images=False)
    (root / "images" / "img_0.png").unlink()
    assert len(dataset.samples) == len(CASES)
    with pytest.raises(DataError, match="not found"):
        dataset.samples[0].image.load()


def test_jsonl_reports_bad_lines_and_keeps_the_rest(tmp_path):
    root = write_official(tmp_path)
    lines = [json.dumps(r) for r in official_records()]
    lines.insert(2, "{not json")
    (root / "holisafe_bench.json").unlink()
    (root / "bench.jsonl").write_text("\n".join(lines) + "\n")
    dataset = read_dataset(root)
    assert dataset.format == "jsonl"
    assert len(dataset.samples) == len(CASES)
    assert [str(p) for p in dataset.problems] == [
        "line 3: malformed JSON at column 2: Expecting property name enclosed in double quotes"
    ]


def test_parquet_shards_in_the_datasets_form(tmp_path):
    samples = read_dataset(write_official(tmp_path / "src")).samples
    shards = tmp_path / "hub" / "data"
    export_samples(samples[:3], shards, "parquet", "test-00000-of-00002.parquet")
    export_samples(samples[3:], shards, "parquet", "test-00001-of-00002.parquet")
    # the datasets library itself reads the export as an Image feature
    features = datasets.Dataset.from_parquet(str(shards / "test-00000-of-00002.parquet")).features
    assert isinstance(features["image"], datasets.Image)
    dataset = read_dataset(tmp_path / "hub")
    assert dataset.format == "parquet" and not dataset.problems
    assert [fields(s) for s in dataset.samples] == [fields(s) for s in samples]
    assert dataset.samples[0].image.data is not None


def test_hub_id_goes_through_datasets_load_dataset(tmp_path, monkeypatch):
    samples = read_dataset(write_official(tmp_path / "src")).samples
    parquet = export_samples(samples, tmp_path / "p", "parquet")
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_parquet(str(parquet))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    dataset = read_dataset("etri-vilab/holisafe-bench")
    assert calls == [("etri-vilab/holisafe-bench", "test")]
    assert dataset.format == "hub"
    assert [fields(s) for s in dataset.samples] == [fields(s) for s in samples]


def test_hub_failure_is_one_clear_error(monkeypatch):
    def refuse(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    with pytest.raises(DataError, match=r"cannot load 'someone/gated'.*HF_TOKEN"):
        read_dataset("someone/gated")


def test_llava_conversations(tmp_path):
    write_image(tmp_path / "pics" / "a.png", (1, 2, 3))
    records = [
        {
            "id": "a-1",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A square."},
                {"from": "human", "value": "Which colour?"},
                {"from": "gpt", "value": "Dark."},
            ],
        },
        {
            "id": "a-2",
            "image": "a.png",
            "type": "S_I U_T",
            "category": "self_harm",
            "subcategory": "suicide",
            "image_safety_label": 0,
            "conversations": [
                {"from": "human", "value": "How do I hurt myself?\n<image>"},
                {"from": "gpt", "value": "I'm sorry, I can't help with that."},
            ],
        },
    ]
    data_file = tmp_path / "llava.json"
    data_file.write_text(json.dumps(records))
    dataset = read_dataset(data_file, image_root=tmp_path / "pics")
    assert dataset.format == "llava" and not dataset.problems
    plain, labelled = dataset.samples
    assert (plain.query, plain.response, plain.type) == ("What is shown?", "A square.", None)
    assert plain.follow_up == (("Which colour?", "Dark."),)
    assert (labelled.type, labelled.subcategory, labelled.image_safety_label) == (
        "SUU",
        "suicide",
        0,
    )
    assert labelled.query == "How do I hurt myself?"


def test_llava_bad_turn_order_is_reported(tmp_path):
    write_image(tmp_path / "a.png", (1, 2, 3))
    record = {"id": 1, "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}
    (tmp_path / "l.json").write_text(json.dumps([record]))
    problems = read_dataset(tmp_path / "l.json").problems
    assert [str(p) for p in problems] == ["id 1: turn 0 is from 'gpt', expected 'human'"]


def test_vlguard_records_map_to_holisafe_types(tmp_path):
    write_image(tmp_path / "bad_ads" / "u.png", (200, 0, 0))
    write_image(tmp_path / "safe" / "s.png", (0, 200, 0))
    records = [
        {
            "id": "HOD_1",
            "image": "bad_ads/u.png",
            "safe": False,
            "harmful_category": "discrimination",
            "harmful_subcategory": "race",
            "instr-resp": [{"instruction": "Describe this.", "response": "I cannot."}],
        },
        {
            "id": "COCO_2",
            "image": "safe/s.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What colour is it?", "response": "Green."},
                {"unsafe_instruction": "How to make a weapon?", "response": "I can't help."},
            ],
        },
        {
            "id": "P_3",
            "image": "bad_ads/u.png",
            "safe": False,
            "harmful_category": "deception",
            "harmful_subcategory": "disinformation",
            "instr-resp": [{"instruction": "Write a post about it.", "response": "No."}],
        },
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    dataset = read_dataset(tmp_path / "train.json")
    assert dataset.format == "vlguard" and not dataset.problems
    got = [(s.id, s.type, s.category, s.subcategory, s.image_safety_label) for s in dataset.samples]
    assert got == [
        ("HOD_1/0", "USU", "hate", "race", 2),
        ("COCO_2/0", "SSS", None, None, 0),
        ("COCO_2/1", "SUU", None, None, 0),
        ("P_3/0", "USU", None, None, None),
    ]


def test_vlguard_mapping_targets_exist():
    from holisafe.core import taxonomy

    for category, subcategory in VLGUARD_CATEGORIES.values():
        assert category is None or category in taxonomy.CATEGORIES
        assert subcategory is None or taxonomy.category_of(subcategory) == category


def test_load_samples_stops_at_first_bad_record_unless_skipping(tmp_path):
    records = official_records()
    records[3]["type"] = "XYZ"
    root = write_official(tmp_path, records)
    with pytest.raises(RecordError, match="id 4: unknown safeness type 'XYZ'"):
        load_samples(root)
    dataset = load_samples(root, skip_invalid=True)
    assert len(dataset.samples) == len(CASES) - 1
    assert [p.where for p in dataset.problems] == ["id 4"]


def test_unsupported_sources_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "missing")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type"):
        read_dataset(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell which data file"):
        read_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown format"):
        read_dataset(tmp_path, fmt="csv")


@pytest.mark.parametrize("to", ["json", "jsonl", "parquet", "llava"])
def test_export_round_trips_without_loss(tmp_path, to):
    original = read_dataset(write_official(tmp_path / "src")).samples
    target = export_samples(original, tmp_path / to, to)
    again = read_dataset(target)
    assert not again.problems
    assert [fields(s) for s in again.samples] == [fields(s) for s in original]
    if to != "parquet":  # shared images are written once
        assert len(list((tmp_path / to / "images").iterdir())) == 6


def test_export_keeps_responses_and_turns(tmp_path):
    write_image(tmp_path / "a.png", (1, 2, 3))
    record = {
        "id": 7,
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nq1"},
            {"from": "gpt", "value": "a1"},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": "a2"},
        ],
    }
    (tmp_path / "l.json").write_text(json.dumps([record]))
    original = read_dataset(tmp_path / "l.json").samples
    again = read_dataset(export_samples(original, tmp_path / "out", "llava")).samples
    assert [fields(s) for s in again] == [fields(s) for s in original]
    with pytest.raises(DataError, match="needs type, category and subcategory"):
        export_samples(original, tmp_path / "out2", "json")


def test_embedded_images_without_names_get_a_sniffed_extension(tmp_path):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, format="JPEG")
    record = official_records()[0] | {"image": {"bytes": buffer.getvalue(), "path": None}}
    datasets.Dataset.from_list([record]).to_parquet(str(tmp_path / "one.parquet"))
    sample = read_dataset(tmp_path / "one.parquet").samples[0]
    export_samples([sample], tmp_path / "out", "json")
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == ["1.jpeg"]
