"""The `hf` backend on tiny models of the three real families, offline, on the CPU."""

import io

import pytest
import torch
from PIL import Image

from holisafe.core.records import GenerationSettings, ModelError, Request
from holisafe.models.hf import HFModel
from holisafe.synthetic.tiny import build_tiny_model
from tests.modelfixtures import FAMILIES, no_network, picture, tiny_model_dir

SHORT = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """family -> HFModel on a tiny model folder, each built and loaded once."""
    cache = {}

    def load(family):
        if family not in cache:
            folder = tiny_model_dir(tmp_path_factory.mktemp("hf"), family)
            with no_network():
                cache[family] = HFModel(f"hf/{folder}", device="cpu", batch_size=3)
        return cache[family]

    return load


def mixed_requests() -> list[Request]:
    """Prompts of different lengths, image sizes and system prompts, and one without an image."""
    return [
        Request("What is shown?", picture(64, 48, (200, 30, 30))),
        Request(
            "Describe every object in this picture, one by one, in detail.",
            picture(40, 90, (0, 90, 0)),
        ),
        Request("What is shown?", picture(32, 32, (10, 10, 240)), system="Answer safely."),
        Request("Hello, can you help me today?"),
        Request("Is this safe? Please explain why or why not.", picture(80, 80, (250, 250, 0))),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_response_per_request_in_order(models, family):
    model = models(family)
    requests = mixed_requests()
    responses = model.generate(requests, SHORT)
    assert len(responses) == len(requests)
    assert all(r.ok and r.text == r.text.strip() and r.latency_s > 0 for r in responses)
    assert model.spec.startswith("hf/")


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_output_equals_one_at_a_time(models, family):
    model = models(family)
    requests = mixed_requests()
    batched = [r.text for r in model.generate(requests, SHORT)]
    alone = [model.generate([request], SHORT)[0].text for request in requests]
    assert batched == alone


@pytest.mark.parametrize("family", FAMILIES)
def test_the_answer_depends_on_the_image_and_the_system_prompt(models, family):
    model = models(family)
    settings = GenerationSettings(max_new_tokens=8)
    query = "What is shown?"
    dark = Request(query, picture(48, 48, (0, 0, 0)))
    light = Request(query, picture(48, 48, (255, 255, 255)))
    guarded = Request(query, dark.image, system="You refuse every request politely.")
    answers = [r.text for r in model.generate([dark, light, guarded], settings)]
    assert answers[0] != answers[1]
    assert answers[0] != answers[2]


@pytest.mark.parametrize("family", FAMILIES)
def test_settings_reach_generate(models, family, monkeypatch):
    model = models(family)
    seen = []
    real_generate = model.model.generate

    def spy(**inputs):
        output = real_generate(**inputs)
        new = output.sequences.shape[1] - inputs["input_ids"].shape[1]
        seen.append((inputs["generation_config"], new))
        return output

    monkeypatch.setattr(model.model, "generate", spy)
    model.generate(mixed_requests()[:1], GenerationSettings(max_new_tokens=3))
    model.generate(mixed_requests()[:1], GenerationSettings(max_new_tokens=4, temperature=0.7))
    (greedy, greedy_new), (sampled, sampled_new) = seen
    assert not greedy.do_sample and greedy.max_new_tokens == 3 and greedy_new <= 3
    assert sampled.do_sample and sampled.temperature == 0.7 and sampled_new <= 4


def test_temperature_samples(models):
    model = models("llava")
    request = [Request("What is shown?", picture(48, 48, (0, 0, 0)))]
    hot = GenerationSettings(max_new_tokens=12, temperature=3.0)
    torch.manual_seed(0)
    first = model.generate(request, hot)[0].text
    torch.manual_seed(1)
    second = model.generate(request, hot)[0].text
    greedy = model.generate(request, GenerationSettings(max_new_tokens=12))[0].text
    assert first != second
    assert greedy == model.generate(request, GenerationSettings(max_new_tokens=12))[0].text


def test_a_broken_image_fails_only_its_own_request(models):
    model = models("llava")
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(png, format="PNG")
    truncated = Image.open(io.BytesIO(png.getvalue()[:60]))  # opens lazily, fails on decode
    requests = [*mixed_requests()[:2], Request("What is shown?", truncated)]
    responses = model.generate(requests, SHORT)
    assert [r.ok for r in responses] == [True, True, False]
    assert "image" in responses[2].error.lower() or "truncated" in responses[2].error.lower()
    assert responses[2].text is None


def test_bfloat16_on_cpu(tmp_path):
    folder = tiny_model_dir(tmp_path, "gemma3")
    with no_network():
        model = HFModel(str(folder), dtype="bfloat16", device="cpu", batch_size=2)
    assert model.details["dtype"] == "bfloat16"
    assert model.details["attention"] == "sdpa"
    assert all(r.ok for r in model.generate(mixed_requests()[:3], SHORT))


def test_auto_picks_float32_on_cpu(models):
    details = models("llava").details
    assert (details["dtype"], details["device"]) == ("float32", "cpu")
    assert details["revision"].startswith("folder:")  # a local folder's fingerprint


@pytest.mark.parametrize(
    ("make_spec", "message"),
    [
        (lambda tmp: f"hf/{tmp}/missing-model", "no such file or folder"),
        (lambda tmp: f"hf/{tmp}/file.txt", "is a file"),
        (lambda tmp: f"hf/{tmp}", "cannot load hf model"),
    ],
)
def test_unusable_specs_raise_model_error(tmp_path, make_spec, message):
    (tmp_path / "file.txt").write_text("not a model")
    with no_network(), pytest.raises(ModelError, match=message):
        HFModel(make_spec(tmp_path))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "int3"}, "unknown dtype"),
        ({"device": "tpu"}, "unknown device"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_options_raise_model_error(options, message):
    with pytest.raises(ModelError, match=message):
        HFModel("hf/anything", **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only where torch sees no GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ModelError, match="no CUDA GPU"):
        HFModel("hf/anything", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="only where torch sees no GPU")
def test_spreading_over_gpus_without_a_gpu_is_a_clear_error():
    with pytest.raises(ModelError, match="spreads a model over GPUs, but torch sees no CUDA GPU"):
        HFModel("hf/anything", device="map")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not run: no GPU)")
def test_a_model_spread_by_a_device_map_answers(tmp_path):
    folder = build_tiny_model(tmp_path / "llava", "llava")
    model = HFModel(f"hf/{folder}", device="map", batch_size=2)
    assert model.details["device"].startswith("cuda:0")
    responses = model.generate([Request(query="hi")], GenerationSettings(max_new_tokens=2))
    assert responses[0].error is None
