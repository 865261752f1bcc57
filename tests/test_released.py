"""Released Safe-VLMs through their own code, and their conversion to the toolkit's classes.

The folders (tests/remotefixtures.py) follow the three published calling conventions: SafeLLaVA
(the original LLaVA code base), SafeQwen2.5-VL and SafeGem (stock processors, remote classes).
"""

import base64
import io
import json
import shutil

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from holisafe.analysis import AnalysisError, attention_analysis
from holisafe.cli import app
from holisafe.data import load_samples
from holisafe.models import GenerationSettings, ModelError, ModelOptions, Request, load_model
from holisafe.models.convert import RELEASED_HEAD_INPUT, convert_released, native_base
from holisafe.models.hf import HFModel
from holisafe.models.remote import LlavaCodebaseModel, RemoteSafeVLM
from holisafe.serve import create_app, running_server
from holisafe.store import Store
from holisafe.vgm import VGMError, load_safe_vlm
from tests.datafixtures import write_official
from tests.modelfixtures import no_network, picture
from tests.remotefixtures import CONVENTIONS, released_dir

TRUSTED = ModelOptions(device="cpu", dtype="float32", batch_size=2, trust_remote_code=True)


def holisafe(*args: str):
    """The CLI run in this process (offline), to spare the tests an interpreter start each."""
    with no_network():
        return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    return {convention: released_dir(root, convention) for convention in CONVENTIONS}


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    with no_network():
        return {
            convention: _convert(source, root / convention)
            for convention, source in released.items()
        }


def _convert(source, out):
    convert_released(str(source), out, trust_remote_code=True)
    return out


def requests():
    return [
        Request("What is in this picture?", picture(32, 48, (200, 30, 30))),
        Request("Describe it.", picture(48, 32, (30, 200, 30)), system="Answer briefly."),
        Request("Say hello."),
    ]


def test_remote_code_runs_only_when_trusted(released, tmp_path):
    picture(32, 32, (9, 9, 9)).save(tmp_path / "x.png")
    result = holisafe("guard", "--model", f"hf/{released['safeqwen']}", str(tmp_path / "x.png"))
    assert isinstance(result.exception, ModelError)
    assert "--trust-remote-code" in str(result.exception)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_guard_and_eval_run_each_convention_from_the_cli(released, convention, tmp_path):
    spec = f"hf/{released[convention]}"
    for i, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
        picture(32, 40, colour).save(tmp_path / f"{i}.png")
    guard = holisafe(
        "guard", "--model", spec, "--trust-remote-code", "--json", "--device", "cpu",
        str(tmp_path / "0.png"), str(tmp_path / "1.png"),
    )  # fmt: skip
    assert guard.exit_code == 0, guard.output
    lines = [json.loads(line) for line in guard.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(sum(r["probs"].values()) == pytest.approx(1) for r in lines)

    bench = write_official(tmp_path / "bench")
    scored = holisafe("guard-eval", "--model", spec, "--bench", str(bench), "--json",
                      "--trust-remote-code", "--device", "cpu")  # fmt: skip
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["n"] == 6  # distinct images

    store = tmp_path / "runs.db"
    evaluated = holisafe(
        "eval", "--model", spec, "--bench", str(bench), "--store", str(store),
        "--trust-remote-code", "--max-new-tokens", "3", "--device", "cpu", "--batch-size", "4",
    )  # fmt: skip
    assert evaluated.exit_code in (0, 1) and evaluated.exception is None, evaluated.output
    with Store(store) as opened:
        records = opened.records(opened.runs()[0].id)
    assert len(records) == 7
    # each stored prediction is the released head's own verdict on that image
    samples = {str(s.id): s for s in load_samples(bench).samples}
    with no_network():
        model = load_model(spec, TRUSTED)
    expected = model.classify([samples[r.sample.id].image.load() for r in records])
    for record, prediction in zip(records, expected, strict=True):
        stored = record.extra["safety"]
        assert stored["label"] == prediction.label
        assert stored["probs"] == pytest.approx(prediction.probs, abs=1e-5)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_converted_model_matches_the_released_code(released, converted, convention):
    with no_network():
        remote = load_model(f"hf/{released[convention]}", TRUSTED)
        native = load_model(f"hf/{converted[convention]}", ModelOptions(device="cpu"))
    expected_class = LlavaCodebaseModel if convention == "safellava" else RemoteSafeVLM
    assert isinstance(remote, expected_class) and type(native) is HFModel
    assert "auto_map" not in json.loads((converted[convention] / "config.json").read_text())
    assert type(load_safe_vlm(str(converted[convention]))).__name__.startswith("Safe")

    settings = GenerationSettings(max_new_tokens=8)
    for ours, theirs in zip(
        native.generate(requests(), settings), remote.generate(requests(), settings), strict=True
    ):
        assert ours.text == theirs.text
        assert (ours.safety is None) == (theirs.safety is None)
        if ours.safety is not None:
            assert ours.safety.probs == pytest.approx(theirs.safety.probs, abs=1e-4)
    for request in requests()[:2]:
        theirs, ours = _logits(remote, request), _logits(native, request)
        # the conversion may add tokens (the meta token) after the released vocabulary
        assert ours.shape[0] == theirs.shape[0] and ours.shape[1] >= theirs.shape[1]
        assert (ours[:, : theirs.shape[1]] - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_each_conversion_records_its_verification(converted, convention):
    record = json.loads((converted[convention] / "conversion.json").read_text())
    assert record["verified"] and len(record["probes"]) == 3
    assert record["max_probability_difference"] <= record["tolerance"]["probability"] == 1e-4
    assert record["max_logit_difference"] <= record["tolerance"]["logit"]
    assert set(record["versions"]) == {"holisafe", "torch", "transformers"}
    config = json.loads((converted[convention] / "config.json").read_text())
    expected = {"safegem": "projector_mean", "safeqwen": "image_mean", "safellava": "meta_token"}
    assert config["safety_head_input"] == expected[convention]


def test_a_conversion_that_disagrees_with_the_release_is_refused(released, monkeypatch, tmp_path):
    monkeypatch.setitem(RELEASED_HEAD_INPUT, "gemma3", "image_mean")  # the wrong input
    with (
        no_network(),
        pytest.raises(
            VGMError, match=r"largest difference, .* > 0.0001, is in p\(\w+\), .* on probe \d"
        ),
    ):
        convert_released(str(released["safegem"]), tmp_path / "out", trust_remote_code=True)
    assert list(tmp_path.iterdir()) == []


def test_an_unverifiable_conversion_needs_no_verify(released, tmp_path):
    source = str(released["safeqwen"])
    refused = holisafe("model", "convert", source, str(tmp_path / "a"))
    assert isinstance(refused.exception, VGMError) and "--no-verify" in str(refused.exception)
    assert not (tmp_path / "a").exists()
    done = holisafe("model", "convert", "--no-verify", source, str(tmp_path / "b"))
    assert done.exit_code == 0 and "unverified" in done.output, done.output
    record = json.loads((tmp_path / "b" / "conversion.json").read_text())
    assert record["verified"] is False and "not compared" in record["unverified"]


def _logits(model, request) -> torch.Tensor:
    """The logits at every position of the request's prompt."""
    with torch.inference_mode():
        if isinstance(model, LlavaCodebaseModel):
            ids, images = model.prompt(request)
            return model.model(input_ids=ids, **images).logits[0]
        return model.model(**model._inputs([request])).logits[0]


def test_serve_answers_and_guards_through_the_llava_code_base(released):
    """The server batches requests; the LLaVA code base's model takes them one at a time."""
    with no_network():
        model = load_model(f"hf/{released['safellava']}", TRUSTED)
    image = picture(40, 32, (220, 20, 20))
    url = "data:image/png;base64," + base64.b64encode(_png(image)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]
    body = {"model": "safellava", "messages": [{"role": "user", "content": content}]}
    body |= {"max_tokens": 5, "temperature": 0}
    expected = model.generate([Request("Hi", image)], GenerationSettings(max_new_tokens=5))[0]
    with running_server(create_app(model)) as root:
        chat = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=60).json()
        guard = httpx.post(f"{root}/v1/guard", json={"images": [url, url]}, timeout=60).json()
    assert chat["choices"][0]["message"]["content"] == expected.text
    assert chat["safety"]["probs"] == pytest.approx(expected.safety.probs, abs=1e-5)
    assert [r["label"] for r in guard["results"]] == [expected.safety.label] * 2


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_safellava_conversion_from_the_cli_needs_trust(released, tmp_path):
    refused = holisafe("model", "convert", str(released["safellava"]), str(tmp_path / "a"))
    assert isinstance(refused.exception, VGMError)
    assert "--trust-remote-code" in str(refused.exception)
    args = ("model", "convert", "--trust-remote-code", str(released["safellava"]))
    done = holisafe(*args, str(tmp_path / "b"))
    assert done.exit_code == 0, done.output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["model_type"] == "llava" and config["safety_head_input"] == "meta_token"


@pytest.mark.parametrize("convention", ["safellava", "safeqwen"])
def test_a_weight_the_mapping_does_not_know_is_named(released, convention, tmp_path):
    source = tmp_path / convention
    shutil.copytree(released[convention], source)
    weights = load_file(source / "model.safetensors")
    weights["model.extra_adapter.weight"] = torch.zeros(2, 2)
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    with no_network(), pytest.raises(VGMError, match=r"model\.extra_adapter\.weight"):
        convert_released(str(source), tmp_path / "out", trust_remote_code=True)


def test_a_llava_checkpoint_without_its_helpers_is_named(released, tmp_path):
    source = tmp_path / "safellava"
    shutil.copytree(released["safellava"], source)
    (source / "safellava" / "mm_utils.py").unlink()
    with no_network(), pytest.raises(ModelError, match=r"safellava\.mm_utils\.tokenizer_image"):
        load_model(f"hf/{source}", TRUSTED)


def test_attention_analysis_of_released_code(released, tmp_path):
    """The stock convention's model is analysed as any hf model; the LLaVA code base's one,
    whose prompt is no processor's, is referred to conversion."""
    bench = write_official(tmp_path / "bench")
    options = ModelOptions(device="cpu", batch_size=1, trust_remote_code=True)
    with no_network():
        report = attention_analysis(
            f"hf/{released['safegem']}", bench, tmp_path / "gem", limit=1, max_new_tokens=2,
            options=options,
        )  # fmt: skip
        assert len(report.layers) == 2 and not report.has_meta_token
        with pytest.raises(AnalysisError, match="holisafe model convert"):
            attention_analysis(f"hf/{released['safellava']}", bench, tmp_path / "llava",
                               limit=1, options=options)  # fmt: skip


def test_only_released_checkpoints_convert(converted, tmp_path):
    with pytest.raises(VGMError, match="auto_map"):
        convert_released(str(converted["safellava"]), tmp_path / "again")


def test_training_converts_a_released_base_when_trusted(released, converted, tmp_path):
    source = str(released["safeqwen"])
    with pytest.raises(VGMError, match="--trust-remote-code"):
        native_base(source, tmp_path / "base", trust_remote_code=False)
    with no_network():
        base = native_base(source, tmp_path / "base", trust_remote_code=True)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    assert base == str(tmp_path / "base") and config["safety_head_input"] == "image_mean"
    ours = str(converted["safegem"])
    assert native_base(ours, tmp_path / "unused", trust_remote_code=False) == ours
