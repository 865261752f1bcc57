"""Provenance: what produced a run is recorded, shown by the report, and a mixed run refused."""

import base64
import json
import subprocess
import sys

from PIL import Image

from holisafe.core.hub import folder_revision
from holisafe.models import ModelOptions
from holisafe.run import provenance
from holisafe.run.evaluate import evaluate
from tests.datafixtures import official_records, write_official
from tests.stub_servers import openai_stub


def report(*args):
    return subprocess.run(
        [sys.executable, "-m", "holisafe", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_run_records_its_versions_and_endpoint_and_report_shows_them(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as stub:
        options = ModelOptions(base_url=stub.url, api_key="k")
        outcome = evaluate("openai/stub-model", bench, store, options=options)
    (found,) = provenance.records(store, outcome.run.id)
    assert found["model"]["endpoint"] == stub.url
    assert found["versions"]["holisafe"] == provenance.versions()["holisafe"]
    assert (found["judges"], found["judge_protocol"]) == (["string"], "toolkit")
    shown = report("--store", store, "--provenance")
    assert shown.returncode == 0, shown.stderr
    assert f"endpoint {stub.url}" in shown.stdout and "judges string" in shown.stdout


def test_a_run_resumed_against_another_server_is_refused_unless_asked(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as first:
        first.fail("malformed", times=2)  # two samples left to answer on resume
        evaluate("openai/stub-model", bench, store, options=ModelOptions(base_url=first.url))
    with openai_stub(api_key=None) as second:
        evaluate("openai/stub-model", bench, store, options=ModelOptions(base_url=second.url))
    refused = report("--store", store)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "run 1 mixes model endpoint" in refused.stderr
    assert json.dumps(first.url) in refused.stderr and json.dumps(second.url) in refused.stderr
    assert report("--store", store, "--allow-mixed").returncode == 0


def test_a_folder_revision_follows_its_config_and_files(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    before = folder_revision(tmp_path)
    assert before == folder_revision(tmp_path)
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert folder_revision(tmp_path) != before


def test_runs_differing_only_in_transport_or_unused_torch_are_not_mixed():
    base = {"judges": ["string"], "judge_protocol": "toolkit"}
    api = {"endpoint": "http://x/v1"}
    found = [
        base | {"versions": {"holisafe": "1", "torch": None}, "model": api},
        base | {"versions": {"holisafe": "1", "torch": "2.9"}, "model": api},
        base | {"versions": {"holisafe": "1", "torch": "2.9"}, "model": None},
    ]
    assert provenance.mixed(found) == []
    local = {"dtype": "bfloat16"}
    found = [
        base | {"versions": {"holisafe": "1", "torch": "2.8"}, "model": local},
        base | {"versions": {"holisafe": "1", "torch": "2.9"}, "model": local},
    ]
    assert provenance.mixed(found) == ['torch: "2.8" / "2.9"']


def test_a_run_records_which_images_were_reencoded_and_why(tmp_path):
    records = official_records()
    records[0]["image"], records[1]["image"] = "img_0.bmp", "img_1.jpg"
    bench = write_official(tmp_path / "bench", records)
    image = Image.new("RGB", (64, 48), (10, 120, 200))
    image.save(bench / "images" / "img_0.bmp")
    image.save(bench / "images" / "img_1.jpg", quality=80)
    store = tmp_path / "runs.db"
    with openai_stub(api_key=None) as stub:
        outcome = evaluate(
            "openai/stub-model", bench, store, options=ModelOptions(base_url=stub.url)
        )
    (found,) = provenance.records(store, outcome.run.id)
    reencoded = {"format BMP": {"count": 1, "examples": ["img_0.bmp"]}}
    assert found["reencoded_images"] == {"openai/stub-model": reencoded}
    urls = [
        part["image_url"]["url"]
        for r in stub.requests
        for part in r.body["messages"][-1]["content"]
        if part["type"] == "image_url"
    ]
    jpeg = (
        "data:image/jpeg;base64,"
        + base64.b64encode((bench / "images" / "img_1.jpg").read_bytes()).decode()
    )
    assert jpeg in urls and sum(url.startswith("data:image/png") for url in urls) == len(urls) - 1
    shown = report("--store", store, "--provenance")
    assert "openai/stub-model re-encoded images (format BMP: 1)" in shown.stdout
