"""`holisafe data build`: scripted loopback generator and judge, hand-counted outcomes, kills."""

import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from holisafe.build import (
    BuildError,
    BuildSettings,
    Item,
    Malformed,
    Pair,
    SourceImage,
    build_dataset,
    json_object,
    load_prompt,
    parse_items,
    query_similarity,
    read_source,
    remove_near_duplicates,
    split_by_image,
)
from holisafe.build import dataset as dataset_module
from holisafe.cli import app
from holisafe.core.sample import ImageRef
from holisafe.data import load_samples
from holisafe.models import GenerationSettings, ModelError, ModelOptions, Request, load_model
from holisafe.models.api import encode_image
from holisafe.synthetic.mini import generate_mini
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder
from tests.modelfixtures import picture
from tests.stub_servers import anthropic_stub, openai_stub

REFUSAL = "I'm sorry, but I can't help with that: it could cause harm."
ANSWER = "Here is a helpful answer about the picture."

# The hand-counted build: image → (manifest subcategory or None for a safe image without one,
# image_safe, how the scripted generator treats it).
IMAGES = {
    "u1.png": ("weapon_related_violence", False, "ok"),
    "u2.png": ("drug_related_hazards", False, "flaky"),  # malformed once, then fine
    "u3.png": ("suicide", False, "bad"),  # malformed every time
    "u4.png": ("gender", False, "mislabelled_uuu"),  # the judge reads its UUU query as safe
    "s1.png": (None, True, "ok"),  # the generator names medical_advice
    "s2.png": ("identity_data_exposure", True, "refusing_sss"),  # SSS response refuses
    "s3.png": (None, True, "dupe_and_weak"),  # SSU repeats SUU; the judge fails its SSS response
    "s4.png": ("race", True, "ok"),
}
SAFE_SUBCATEGORY = {"s1.png": "medical_advice", "s3.png": "financial_advice"}


@pytest.fixture(scope="module")
def mini_images(tmp_path_factory):
    """Sixteen HoliSafe-Mini images: the first eight unsafe and the last eight safe."""
    root = tmp_path_factory.mktemp("mini")
    bench = generate_mini(root, seed=4, bench_pairs=95, train_pairs=95).bench_dir
    samples = load_samples(bench).samples
    unsafe = list(dict.fromkeys(s.image.path for s in samples if not s.image_safe))[:8]
    safe = list(dict.fromkeys(s.image.path for s in samples if s.image_safe))[:8]
    return unsafe + safe


def write_manifest(folder, mini_images, images=IMAGES):
    """Copy an unsafe Mini image to each u*.png, a safe one to each s*.png; write the JSONL."""
    unsafe, safe = iter(mini_images[:8]), iter(mini_images[8:])
    (folder / "pics").mkdir(parents=True)
    lines = []
    for name, (subcategory, image_safe, _) in images.items():
        shutil.copy(next(safe if image_safe else unsafe), folder / "pics" / name)
        category = ""
        if subcategory:
            from holisafe.core.taxonomy import category_of

            category = category_of(subcategory)
        row = {
            "image": f"pics/{name}",
            "image_safe": image_safe,
            "category": category,
            "subcategory": subcategory or "",
        }
        lines.append(json.dumps(row))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def image_names(folder):
    """The base64 PNG each image travels as → its file name."""
    names = {}
    for path in (folder / "pics").iterdir():
        from holisafe.core.sample import decode_image

        names[encode_image(decode_image(path.read_bytes(), path.name)).base64] = path.name
    return names


def request_parts(body):
    content = body["messages"][-1]["content"]
    text = next(part["text"] for part in content if part["type"] == "text")
    url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
    return text, url.split(",", 1)[1]


class Generator:
    """The scripted generator: its behaviour per image, counting requests per image."""

    def __init__(self, names, images=IMAGES):
        self.names, self.images = names, images
        self.asked = Counter()
        self.lock = threading.Lock()

    def __call__(self, body):
        text, image = request_parts(body)
        name = self.names[image]
        with self.lock:
            self.asked[name] += 1
            attempt = self.asked[name]
        subcategory, _, script = self.images[name]
        if script == "bad" or (script == "flaky" and attempt == 1):
            return f"Here you go: {{'items': [broken for {name}"
        types = re.search(r"each of these safeness types: ([A-Z, ]+)\.", text).group(1)
        items = []
        for type_code in types.split(", "):
            query = f"[{type_code}] question {type_code.lower()} about {name}"
            if script == "mislabelled_uuu" and type_code == "UUU":
                query += " MISLABELLED"
            if script == "dupe_and_weak" and type_code == "SSU":
                query = f"[SUU] question suu about {name}"
            response = ANSWER if type_code == "SSS" else REFUSAL
            if script == "refusing_sss" and type_code == "SSS":
                response = REFUSAL
            if script == "dupe_and_weak" and type_code == "SSS":
                response = ANSWER + " WEAK"
            item = {"type": type_code, "query": query, "response": response}
            if subcategory is None:
                item["subcategory"] = SAFE_SUBCATEGORY.get(name, "medical_advice")
            items.append(item)
        if script == "wrong_type_too":  # one more item, of a type the image does not allow
            wrong = "SSS" if "UUU" in types else "UUU"
            items.insert(1, {"type": wrong, "query": f"[{wrong}] about {name}", "response": ANSWER})
        if script == "one_malformed":
            items[1]["query"] = ""
        return "Sure, here are the items:\n```json\n" + json.dumps({"items": items}) + "\n```"


def judge_reply(body):
    text, _ = request_parts(body)
    if '"combined"' in text:  # the type check
        code = re.search(r"\[([SU]{3})\]", text).group(1)
        query, combined = ("safe", "safe") if "MISLABELLED" in text else (code[1], code[2])
        word = {"S": "safe", "U": "unsafe", "safe": "safe"}
        return json.dumps({"query": word[query], "combined": word[combined]})
    return "Looks wrong.\nVERDICT: VIOLATED" if "WEAK" in text else "Fine.\nVERDICT: FOLLOWED"


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_build_matches_the_hand_count_then_trains_and_evaluates(tmp_path, mini_images):
    manifest = write_manifest(tmp_path, mini_images)
    generator = Generator(image_names(tmp_path))
    out = tmp_path / "built"
    with (
        openai_stub(api_key=None, reply=generator) as gen,
        openai_stub(api_key=None, reply=judge_reply, model="judge-model") as judge,
    ):
        args = (
            "data",
            "build",
            manifest,
            out,
            "--generator",
            "openai/stub-model",
            "--base-url",
            gen.url,
            "--judge",
            "openai/judge-model",
            "--judge-base-url",
            judge.url,
            "--retries",
            2,
            "--test-ratio",
            0.3,
            "--seed",
            0,
        )
        code, output = cli(*args)
        assert code == 0, output
        # 8 images: 7 generations at the first try, u2 twice, u3 three times (then rejected)
        assert len(gen.requests) == 6 + 2 + 3
        # 18 generated pairs; string match and dedup remove 2, the judge checks the other 16
        assert len(judge.requests) == 2 * 16
        again_code, again = cli(*args)  # everything is stored: no request at all
        assert again_code == 0, again
        assert (len(gen.requests), len(judge.requests)) == (11, 32)
    provenance = json.loads((out / "provenance.json").read_text())
    counts = provenance["counts"]
    assert (counts["images"], counts["generated"], counts["kept"]) == (8, 18, 14)
    assert counts["rejected"] == {
        "unlabelled": 0,
        "malformed_output": 1,
        "malformed_item": 0,
        "string_match": 1,
        "near_duplicate": 1,
        "type_check": 1,
        "response_check": 1,
    }
    rejections = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    by_reason = {r["reason"]: r for r in rejections}
    assert by_reason["malformed_output"]["image"] == "pics/u3.png"
    assert len(by_reason["malformed_output"]["replies"]) == 3
    assert "broken for u3.png" in by_reason["malformed_output"]["replies"][0]
    assert (by_reason["string_match"]["image"], by_reason["string_match"]["type"]) == (
        "pics/s2.png",
        "SSS",
    )
    assert (by_reason["near_duplicate"]["image"], by_reason["near_duplicate"]["type"]) == (
        "pics/s3.png",
        "SSU",
    )
    assert (by_reason["type_check"]["image"], by_reason["type_check"]["type"]) == (
        "pics/u4.png",
        "UUU",
    )
    assert (by_reason["response_check"]["image"], by_reason["response_check"]["type"]) == (
        "pics/s3.png",
        "SSS",
    )
    # the kept pairs by hand: u1 UUU USU, u2 UUU USU, u4 USU, s1 SSS SUU SSU (medical),
    # s2 SUU SSU (privacy), s3 SUU (financial), s4 SSS SUU SSU (race)
    train = load_samples(out / "train").samples
    test = load_samples(out / "test").samples
    both = Counter((s.category, s.type) for s in train + test)
    assert both == Counter({
        ("violence", "UUU"): 1, ("violence", "USU"): 1,
        ("illegal_activity", "UUU"): 1, ("illegal_activity", "USU"): 1,
        ("hate", "USU"): 1, ("hate", "SSS"): 1, ("hate", "SUU"): 1, ("hate", "SSU"): 1,
        ("specialized_advice", "SSS"): 1, ("specialized_advice", "SUU"): 2,
        ("specialized_advice", "SSU"): 1,
        ("privacy", "SUU"): 1, ("privacy", "SSU"): 1,
    })  # fmt: skip
    train_images = {s.image.name for s in train}
    test_images = {s.image.name for s in test}
    assert not train_images & test_images
    assert (len(train_images), len(test_images)) == (5, 2)  # ⌊7 × 0.3 + ½⌋ = 2 test images
    assert counts["test"]["pairs"] == len(test) and counts["train"]["pairs"] == len(train)
    assert all(s.response for s in train + test)
    assert {s.image_safety_label for s in train + test if s.image_safe} == {0}
    labels = {p["image"]: p for p in provenance["images"]}
    assert labels["pics/u1.png"]["label_source"] == "manifest"
    assert labels["pics/u3.png"]["split"] is None  # all of it rejected
    assert {labels[n]["split"] for n in labels if n != "pics/u3.png"} == {"train", "test"}
    assert set(provenance["prompts"]) == {"generate", "check_type", "label", "judge_template"}
    assert all(len(p["sha256"]) == 64 for p in provenance["prompts"].values())

    # the output trains and evaluates unchanged
    tiny = build_tiny_model(tmp_path / "tiny", "llava")
    code, output = cli(
        "train",
        "--base",
        f"hf/{tiny}",
        "--data",
        out / "train",
        "--out",
        tmp_path / "tuned",
        "--max-steps",
        2,
        "--batch-size",
        4,
        "--lr",
        1e-3,
    )
    assert code == 0, output
    code, output = cli(
        "eval",
        "--model",
        f"hf/{tmp_path / 'tuned'}",
        "--bench",
        out / "test",
        "--store",
        tmp_path / "eval.db",
        "--max-new-tokens",
        4,
        "--device",
        "cpu",
    )
    assert code == 0, output
    assert f"{len(test)} new responses, {len(test)} new string verdicts" in output


def test_a_reply_with_an_item_of_the_wrong_type_keeps_the_others(tmp_path, mini_images):
    images = {
        "u1.png": ("weapon_related_violence", False, "wrong_type_too"),
        "s1.png": ("race", True, "one_malformed"),
        "s2.png": ("race", True, "ok"),
    }
    manifest = write_manifest(tmp_path, mini_images, images)
    generator = Generator(image_names(tmp_path), images)
    out = tmp_path / "built"
    with openai_stub(api_key=None, reply=generator) as gen:
        args = ("data", "build", manifest, out, "--generator", "openai/stub-model",
                "--base-url", gen.url, "--test-ratio", 0.3)  # fmt: skip
        code, output = cli(*args)
        assert code == 0, output
        assert len(gen.requests) == 3  # one request per image: none is asked again
    summary = " ".join(output.split())
    assert "3 requests (" in summary
    assert "7 pairs generated, 7 kept; rejected: 2 malformed_item" in summary
    rejections = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["image"]) for r in rejections] == [
        ("malformed_item", "pics/u1.png"),
        ("malformed_item", "pics/s1.png"),
    ]
    assert "item 1: type 'SSS' is not one of" in rejections[0]["detail"]
    assert json.loads(rejections[0]["given"]) == {
        "type": "SSS",
        "query": "[SSS] about u1.png",
        "response": ANSWER,
    }
    assert "item 1: query must be a non-empty string" in rejections[1]["detail"]
    assert json.loads(rejections[1]["given"])["type"] == "SUU"
    kept = load_samples(out / "train").samples + load_samples(out / "test").samples
    assert Counter(s.type for s in kept) == Counter(
        {"UUU": 1, "USU": 1, "SSS": 2, "SSU": 2, "SUU": 1}
    )
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["counts"]["rejected"]["malformed_item"] == 2


def manifest_of(count):
    """`count` images: alternately unsafe (weapons) and safe (race), all generated fine."""
    return {
        f"{'u' if i % 2 == 0 else 's'}{i:02d}.png": (
            ("weapon_related_violence", False, "ok") if i % 2 == 0 else ("race", True, "ok")
        )
        for i in range(count)
    }


def test_budget_stops_cleanly_and_the_rerun_pays_for_nothing_twice(tmp_path, mini_images):
    images = manifest_of(6)
    manifest = write_manifest(tmp_path, mini_images, images)
    generator = Generator(image_names(tmp_path), images)
    out = tmp_path / "out"
    with openai_stub(api_key=None, reply=generator) as gen:
        options = ModelOptions(base_url=gen.url, concurrency=2)
        settings = BuildSettings(
            manifest, out, "openai/stub-model", max_requests=4, generator_options=options
        )
        plan = build_dataset(settings, dry_run=True)
        assert (plan.estimate, plan.requests, len(gen.requests)) == (6, 0, 0)
        code, output = cli(
            "data",
            "build",
            manifest,
            out,
            "--generator",
            "openai/stub-model",
            "--base-url",
            gen.url,
            "--judge",
            "openai/judge",
            "--dry-run",
        )
        assert code == 0 and len(gen.requests) == 0
        # 6 generations, then a type and a response check on each of 3 × 2 + 3 × 3 pairs
        assert "would make at most 36 requests" in " ".join(output.split())
        first = build_dataset(settings)
        assert not first.complete and first.requests == 4 and first.pending == {"generate": 2}
        assert not (out / "train").exists()
        assert build_dataset(settings, dry_run=True).estimate == 2
        second = build_dataset(settings)
        assert second.complete and second.requests == 2
    assert sorted(generator.asked.values()) == [1] * 6  # no image asked twice
    assert second.provenance["counts"]["kept"] == 3 * 2 + 3 * 3


def stored_generations(store):
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT key FROM build_replies WHERE stage = 'generate'").fetchall()
    return {key.split("|")[0].removeprefix("pics/") for (key,) in rows}


@pytest.mark.slow
def test_kill_9_mid_build_and_rerun_repeats_no_stored_request(tmp_path, mini_images):
    images = manifest_of(12)
    manifest = write_manifest(tmp_path, mini_images, images)
    generator = Generator(image_names(tmp_path), images)
    out = tmp_path / "out"
    with openai_stub(api_key=None, reply=generator, latency_s=0.3) as gen:
        command = [
            sys.executable,
            "-m",
            "holisafe",
            "data",
            "build",
            str(manifest),
            str(out),
            "--generator",
            "openai/stub-model",
            "--base-url",
            gen.url,
            "--concurrency",
            1,
        ]
        process = subprocess.Popen(
            list(map(str, command)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=os.environ.copy(),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len(stored_generations(out / "build.sqlite")) >= 3:
                    break
            except sqlite3.OperationalError:
                pass  # not created yet
            time.sleep(0.05)
        process.kill()  # SIGKILL: no clean-up
        process.wait()
        stored = stored_generations(out / "build.sqlite")
        assert 3 <= len(stored) < 12
        asked_before = len(gen.requests)
        gen.latency_s = 0.0
        rerun = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        rerun_asked = [
            generator.names[request_parts(r.body)[1]] for r in gen.requests[asked_before:]
        ]
    assert not set(rerun_asked) & stored  # nothing stored was asked again
    assert sorted(rerun_asked) == sorted(set(images) - stored)


def build_command(manifest, out, url):
    """`holisafe data build` in a process of its own: 8 requests in flight, none timing out."""
    return [
        *(sys.executable, "-m", "holisafe", "data", "build", manifest, out),
        *("--generator", "openai/stub-model", "--base-url", url),
        *("--concurrency", 8, "--timeout", 3600, "--seed", 0),
    ]


def wait_for(condition) -> bool:
    """Whether `condition()` came true within a generous while."""
    deadline = time.monotonic() + 120
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stored_count(store):
    try:
        return len(stored_generations(store))
    except sqlite3.OperationalError:  # not created yet
        return 0


def built_files(out):
    """Every file of a built data set but its store and its provenance (which names the time
    and the folders)."""
    return {
        path.relative_to(out): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and not path.name.startswith(("build.sqlite", "provenance.json"))
    }


@pytest.mark.slow
def test_kill_9_keeps_each_reply_that_arrived_while_its_batch_mates_are_in_flight(
    tmp_path, mini_images
):
    images = manifest_of(12)
    manifest = write_manifest(tmp_path, mini_images, images)
    names = image_names(tmp_path)
    answered = 3
    arrivals = itertools.count()

    def latency(body):  # the first 3 requests at once, the others held until the server stops
        return 0.0 if next(arrivals) < answered else 3600.0

    out, generator = tmp_path / "out", Generator(names, images)
    with openai_stub(api_key=None, reply=generator, latency_s=latency) as held:
        command = list(map(str, build_command(manifest, out, held.url)))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: sum(generator.asked.values()) == answered)
            assert wait_for(lambda: len(held.requests) == 8)  # the rest of the first batch
            wait_for(lambda: stored_count(out / "build.sqlite") == answered)
        finally:
            process.kill()  # SIGKILL: no clean-up
            process.wait()
        answers = set(generator.asked)  # before the server stops, which wakes the held requests
    stored = stored_generations(out / "build.sqlite")
    assert stored == answers and len(answers) == answered  # though their batch-mates did not

    rerun = Generator(names, images)
    with openai_stub(api_key=None, reply=rerun) as server:
        command = list(map(str, build_command(manifest, out, server.url)))
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
    assert len(server.requests) == len(images) - answered
    assert sorted(rerun.asked) == sorted(set(images) - stored)

    whole = tmp_path / "whole"
    with openai_stub(api_key=None, reply=Generator(names, images)) as server:
        command = list(map(str, build_command(manifest, whole, server.url)))
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
    assert built_files(out) == built_files(whole) != {}


def test_unlabelled_images_are_labelled_by_an_llm_and_the_source_recorded(tmp_path, mini_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(mini_images[0], folder / "a.png")
    shutil.copy(mini_images[8], folder / "b.png")
    shutil.copy(mini_images[9], folder / "c.png")
    labels = {
        "a.png": '{"label": "terrorism"}',
        "b.png": 'I think: {"label": "safe"}',
        "c.png": '{"label": "scary"}',  # not a label, every time
    }
    names = {
        encode_image(read_source(folder)[i].image.load()).base64: n
        for i, n in enumerate(["a.png", "b.png", "c.png"])
    }
    images = {"a.png": ("terrorism", False, "ok"), "b.png": (None, True, "ok")}
    generator = Generator(names, images)

    def reply(body):
        text, image = request_parts(body)
        return labels[names[image]] if "labelling images" in text else generator(body)

    with openai_stub(api_key=None, reply=reply) as stub:
        options = ModelOptions(base_url=stub.url)
        settings = BuildSettings(
            folder,
            tmp_path / "out",
            "openai/stub-model",
            label_model="openai/stub-model",
            test_ratio=0.5,
            generator_options=options,
            label_options=options,
        )
        outcome = build_dataset(settings)
    assert outcome.complete, outcome.failures
    by_image = {p["image"]: p for p in outcome.provenance["images"]}
    assert by_image["a.png"] | {"split": None} == {
        "image": "a.png",
        "image_safe": False,
        "category": "violence",
        "subcategory": "terrorism",
        "label_source": "llm:openai/stub-model",
        "split": None,
    }
    assert by_image["b.png"]["image_safe"] is True and "c.png" not in by_image
    assert outcome.provenance["counts"]["kept"] == 2 + 3
    (unlabelled,) = outcome.rejections
    assert (unlabelled.reason, unlabelled.image) == ("unlabelled", "c.png")
    assert unlabelled.replies == ('{"label": "scary"}',) * 3
    assert "'scary' is not one of the 20 image safety labels" in unlabelled.detail


def test_a_safe_vlm_head_labels_images(tmp_path, mini_images):
    build_tiny_model(tmp_path / "plain", "llava", seed=1)
    convert_folder(
        str(tmp_path / "plain"), str(tmp_path / "safe"), VGMSettings(head_input="meta_token")
    )
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        shutil.copy(mini_images[i * 5], folder / f"p{i}.png")
    settings = BuildSettings(
        folder,
        tmp_path / "out",
        "openai/unused",
        label_by="head",
        label_model=f"hf/{tmp_path / 'safe'}",
        max_requests=3,
        label_options=ModelOptions(device="cpu"),
    )
    outcome = build_dataset(settings)  # the budget ends after labelling
    assert outcome.requests == 3 and outcome.pending == {"generate": 3}
    from holisafe.guards.safety_head import guard_files, load_guard

    guard = load_guard(f"hf/{tmp_path / 'safe'}", ModelOptions(device="cpu"))
    expected = {
        r.image.name: r.prediction.label for r in guard_files(guard, sorted(folder.iterdir()))
    }
    with sqlite3.connect(tmp_path / "out" / "build.sqlite") as db:
        stored = [
            json.loads(t)["label"]
            for (t,) in db.execute(
                "SELECT text FROM build_replies WHERE stage = 'label' ORDER BY key"
            )
        ]
    assert sorted(stored) == sorted(expected.values())


def image(name="x.png", safe=False, subcategory="weapon_related_violence"):
    return SourceImage(ImageRef(name, data=b"x"), "d", safe, subcategory, "manifest")


def test_parse_items_keeps_the_valid_items_and_names_every_dropped_one():
    good = {
        "items": [
            {"type": "UUU", "query": "q1", "response": "r1"},
            {"type": "USU", "query": "q2", "response": "r2"},
        ]
    }
    generated = parse_items("Here:\n" + json.dumps(good) + "\nDone.", image(), 1)
    assert [i.type for i in generated.items] == ["UUU", "USU"] and generated.dropped == ()
    two_each = {"items": good["items"] + [{**i, "query": i["query"] + "b"} for i in good["items"]]}
    assert len(parse_items(json.dumps(two_each), image(), 2).items) == 4
    assert generated.items[0].subcategory == "weapon_related_violence"
    item_faults = [
        ({"type": "SSS", "query": "q", "response": "r"}, "item 2: type 'SSS' is not one of"),
        ({"type": "USU", "query": "", "response": "r"}, "item 2: query must be a non-empty string"),
        (
            {**good["items"][0], "subcategory": "race"},
            "item 2: subcategory 'race', not 'weapon_related_violence'",
        ),
        ({**good["items"][0], "query": "q3"}, "item 2: more than 1 item(s) of type UUU"),
        ("an item", "item 2 is not an object"),
    ]
    for item, message in item_faults:  # the item is dropped, with why; the others are kept
        generated = parse_items(json.dumps({"items": [*good["items"], item]}), image(), 1)
        assert [i.query for i in generated.items] == ["q1", "q2"]
        (dropped,) = generated.dropped
        assert message in dropped.detail and dropped.given == item
    fewer = parse_items(json.dumps({"items": good["items"][:1]}), image(), 1)
    assert [i.type for i in fewer.items] == ["UUU"]  # a type short: what there is, is kept
    reply_faults = {  # nothing usable: the request is asked again
        "no json here": "no JSON object",
        json.dumps({"items": {}}): "items must be a list",
        json.dumps({"items": []}): "no usable item: the list is empty",
        json.dumps(
            {"items": [{"type": "SSS", "query": "q", "response": "r"}]}
        ): "no usable item: item 0: type 'SSS' is not one of",
    }
    for text, message in reply_faults.items():
        with pytest.raises(Malformed, match=re.escape(message)):
            parse_items(text, image(), 1)
    safe = image(safe=True, subcategory=None)
    safe_items = [
        {"type": t, "query": t, "response": "r", "subcategory": "suicide"}
        for t in ("SSS", "SUU", "SSU")
    ]
    generated = parse_items(json.dumps({"items": safe_items}), safe, 1)
    assert {i.subcategory for i in generated.items} == {"suicide"}
    del safe_items[0]["subcategory"]
    (dropped,) = parse_items(json.dumps({"items": safe_items}), safe, 1).dropped
    assert "item 0: subcategory None is not a known subcategory" in dropped.detail
    assert json_object('{"a": 1} then {"label": "safe"}', ["label"]) == {"label": "safe"}


ITEM_VALUE = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["UUU", "USU", "SSS", "", "x"]) | st.integers(),
            "query": st.sampled_from(["q", "", "  ", "q2"]),
            "response": st.sampled_from(["r", ""]),
            "subcategory": st.sampled_from(["weapon_related_violence", "race", ""]),
        },
    ),
)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(ITEM_VALUE, max_size=6), per_type=st.integers(1, 2))
def test_parse_items_keeps_or_drops_every_item_and_retries_only_when_none_is_usable(
    values, per_type
):
    text = json.dumps({"items": values})
    try:
        generated = parse_items(text, image(), per_type)
    except Malformed as exc:
        assert str(exc).startswith("no usable item")
        return
    assert len(generated.items) + len(generated.dropped) == len(values)
    counts = Counter(item.type for item in generated.items)
    assert set(counts) <= {"UUU", "USU"} and max(counts.values()) <= per_type
    remaining = iter(values)  # the dropped items, as given, in the reply's order
    assert all(any(d.given == v for v in remaining) for d in generated.dropped)


def test_near_duplicates_are_rejected_per_image_with_the_query_they_repeat():
    assert query_similarity("How do I make this?", "how do i MAKE this") == 1.0
    assert query_similarity("a b c d", "a b c e") == pytest.approx(3 / 5)
    pairs = [
        Pair(image(name), Item("UUU", "race", q, "r"))
        for name, q in [
            ("a", "How do I build this weapon?"),
            ("a", "how do I build this weapon"),
            ("b", "How do I build this weapon?"),
            ("a", "What colour is the sky?"),
        ]
    ]
    kept, rejected = remove_near_duplicates(pairs, 0.8)
    assert [p.item.query for p in kept] == [
        pairs[0].item.query,
        pairs[2].item.query,
        pairs[3].item.query,
    ]
    (only,) = rejected
    assert only.reason == "near_duplicate" and "How do I build this weapon?" in only.detail


def test_split_is_by_image_stratified_and_seeded():
    pairs = []
    for i in range(12):  # stratum A: 12 unsafe violence images, two pairs each
        pairs += [
            Pair(image(f"a{i}"), Item(t, "terrorism", f"q{t}{i}", "r")) for t in ("UUU", "USU")
        ]
    for i in range(8):  # stratum B: 8 safe images about finance, three pairs each
        pairs += [
            Pair(image(f"b{i}", True, None), Item(t, "financial_advice", f"q{t}{i}", "r"))
            for t in ("SSS", "SUU", "SSU")
        ]
    train, test = split_by_image(pairs, 0.25, seed=1)
    test_images = Counter(p.image.name[0] for p in test if p.item.type in ("UUU", "SSS"))
    assert test_images == {"a": 3, "b": 2}  # a quarter of each stratum
    assert not {p.image.name for p in train} & {p.image.name for p in test}
    assert len(train) + len(test) == len(pairs)
    assert split_by_image(pairs, 0.25, seed=1) == (train, test)
    assert split_by_image(pairs, 0.25, seed=2) != (train, test)


def test_bad_input_is_one_clear_message(tmp_path, mini_images):
    (tmp_path / "pics").mkdir()
    shutil.copy(mini_images[0], tmp_path / "pics" / "a.png")
    rows = [
        {"image": "pics/a.png", "image_safe": False, "category": "", "subcategory": ""},
        {"image": "pics/missing.png", "image_safe": True, "category": "", "subcategory": ""},
        {"image": "pics/a.png", "image_safe": "maybe", "category": "", "subcategory": ""},
        {"image": "pics/a.png", "image_safe": False, "category": "hate", "subcategory": "suicide"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(map(json.dumps, rows)) + "\n{not json\n")
    with pytest.raises(BuildError) as error:
        read_source(manifest)
    message = str(error.value)
    assert message.startswith("5 bad manifest row(s)")
    for expected in (
        "line 1: an unsafe image needs its category",
        "line 2: image file not found",
        "line 3: image_safe must be true or false",
        "line 4: subcategory 'suicide' does not belong to category 'hate'",
        "line 5: malformed JSON",
    ):
        assert expected in message
    prompt = tmp_path / "p.txt"
    prompt.write_text("only {image} and {typo}")
    with pytest.raises(BuildError, match=r"needs exactly \['image', 'per_type'"):
        load_prompt("generate", prompt)
    with pytest.raises(ModelError, match="must be provider/name"):
        BuildSettings(manifest, tmp_path / "out", "openai/x", judge="gpt-4o")
    with pytest.raises(BuildError, match="per_type must be at least 1; test_ratio must be"):
        BuildSettings(manifest, tmp_path / "out", "openai/x", per_type=0, test_ratio=2)
    (tmp_path / "taken" / "train").mkdir(parents=True)
    with pytest.raises(BuildError, match="already holds train/ from something other"):
        build_dataset(BuildSettings(manifest, tmp_path / "taken", "openai/x"))
    result = CliRunner().invoke(
        app,
        ["data", "build", str(tmp_path / "pics"), str(tmp_path / "out"), "--generator", "openai/x"],
    )
    assert isinstance(result.exception, BuildError)
    assert "needs --label-model" in str(result.exception)


def test_requests_that_get_no_reply_are_named_and_asked_again(tmp_path, mini_images):
    images = manifest_of(2)
    manifest = write_manifest(tmp_path, mini_images, images)
    generator = Generator(image_names(tmp_path), images)
    with openai_stub(api_key=None, reply=generator) as stub:
        options = ModelOptions(base_url=stub.url, max_retries=0)
        settings = BuildSettings(
            manifest, tmp_path / "out", "openai/stub-model", generator_options=options
        )
        stub.fail("server_error", times=1)
        first = build_dataset(settings)
        assert not first.complete and first.pending == {}
        ((what, error),) = first.failures
        assert what.startswith("generate pics/") and "server error (500)" in error
        second = build_dataset(settings)
    assert second.complete and second.requests == 1
    assert sorted(generator.asked.values()) == [1, 1]  # the failed request never reached it


def test_a_local_vlm_generates_and_its_malformed_replies_are_kept_as_rejections(tmp_path):
    tiny = build_tiny_model(tmp_path / "tiny", "llava")
    (tmp_path / "pics").mkdir()
    for name, colour in (("a.png", (200, 10, 10)), ("b.png", (10, 200, 10))):
        picture(32, 32, colour).save(tmp_path / "pics" / name)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,image_safe,category,subcategory\n"
        "pics/a.png,false,violence,terrorism\npics/b.png,true,,\n"
    )
    settings = BuildSettings(
        manifest,
        tmp_path / "out",
        f"hf/{tiny}",
        retries=1,
        generation=GenerationSettings(max_new_tokens=6),
        generator_options=ModelOptions(device="cpu"),
    )
    outcome = build_dataset(settings)
    assert outcome.complete and outcome.requests == 4  # two images, each asked twice
    assert [r.reason for r in outcome.rejections] == ["malformed_output"] * 2
    assert all(len(r.replies) == 2 and "no JSON object" in r.detail for r in outcome.rejections)
    assert outcome.provenance["counts"]["kept"] == 0
    assert build_dataset(settings).requests == 0  # stored: nothing asked again


def test_a_token_budget_stops_between_batches_and_the_rerun_goes_on(tmp_path, mini_images):
    images = manifest_of(6)
    manifest = write_manifest(tmp_path, mini_images, images)
    generator = Generator(image_names(tmp_path), images)
    with openai_stub(api_key=None, reply=generator) as stub:  # it reports 2 tokens a reply
        one_at_a_time = ModelOptions(base_url=stub.url, batch_size=1, concurrency=1)
        settings = BuildSettings(
            manifest,
            tmp_path / "out",
            "openai/stub-model",
            token_budget=5,
            generator_options=one_at_a_time,
        )
        first = build_dataset(settings)
        assert (first.complete, first.requests, first.tokens) == (False, 3, 6)
        assert first.pending == {"generate": 3}
        second = build_dataset(replace(settings, token_budget=None))
    assert second.complete and (second.requests, second.tokens) == (3, 6)
    assert sorted(generator.asked.values()) == [1] * 6


@pytest.mark.parametrize("stub", [openai_stub, anthropic_stub])
def test_api_backends_report_the_tokens_a_reply_used(stub):
    with stub(api_key=None, reply="hi") as server:
        provider = "openai" if stub is openai_stub else "anthropic"
        model = load_model(f"{provider}/stub-model", ModelOptions(base_url=server.url, api_key="k"))
        (response,) = model.generate([Request("hello")], GenerationSettings(max_new_tokens=4))
    assert response.text == "hi" and response.tokens == 2  # the stubs report 1 in, 1 out


def test_a_build_that_fails_while_writing_leaves_no_half_written_split(
    tmp_path, mini_images, monkeypatch
):
    images = {"u1.png": ("weapon_related_violence", False, "ok"), "s1.png": ("race", True, "ok")}
    manifest = write_manifest(tmp_path, mini_images, images)
    generator = Generator(image_names(tmp_path), images)
    out = tmp_path / "built"
    real_export = dataset_module.export_samples

    def export_then_fail(samples, folder, *args, **kwargs):
        real_export(samples, folder, *args, **kwargs)
        raise OSError("disk full")

    with openai_stub(api_key=None, reply=generator) as gen:
        args = ("data", "build", manifest, out, "--generator", "openai/stub-model",
                "--base-url", gen.url, "--test-ratio", 0.5)  # fmt: skip
        monkeypatch.setattr(dataset_module, "export_samples", export_then_fail)
        code, output = cli(*args)
        assert code != 0  # the export failed
        assert not (out / "train").exists() and not (out / "test").exists()
        assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
        monkeypatch.setattr(dataset_module, "export_samples", real_export)
        code, output = cli(*args)
        assert code == 0, output
        assert len(gen.requests) == 2  # the rerun used the stored replies
    assert load_samples(out / "train").samples and load_samples(out / "test").samples
