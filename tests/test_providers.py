"""The provider registry: one spec parser, each backend's own options, lazy imports; and what
`inspect_checkpoint` tells of the tiny model folders the other tests build."""

import json
import subprocess
import sys
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from holisafe.core.checkpoint import RELEASED_HEAD_INPUT
from holisafe.core.taxonomy import IMAGE_SAFETY_LABELS
from holisafe.models import (
    PROVIDERS,
    APIOptions,
    HFOptions,
    ModelError,
    ModelOptions,
    VLLMOptions,
    inspect_checkpoint,
    load_model,
    parse_spec,
)

QUICK = settings(max_examples=300, deadline=None)


@QUICK
@given(st.text())
def test_any_string_is_a_provider_and_a_name_or_one_clear_error(spec):
    try:
        provider, name = parse_spec(spec)
    except ModelError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and repr(spec) in message
        assert all(name in message for name in PROVIDERS)
    else:
        assert PROVIDERS[provider.name] is provider and name
        assert f"{provider.name}/{name}" == spec


@QUICK
@given(st.sampled_from(list(PROVIDERS)), st.text(min_size=1))
def test_every_provider_takes_any_name_after_its_slash(provider, name):
    assert parse_spec(f"{provider}/{name}") == (PROVIDERS[provider], name)


def test_each_backend_options_field_is_a_bundle_field_with_the_same_default():
    bundle = {f.name: f.default for f in fields(ModelOptions)}
    read = set()
    for provider in PROVIDERS.values():
        own = {f.name: f.default for f in fields(provider.options)}
        assert own.items() <= bundle.items(), provider.name
        assert set(provider.refused) <= bundle.keys()
        read |= own.keys()
    assert read == bundle.keys()  # every field of the bundle reaches some backend


def test_each_backend_gets_its_own_part_of_the_bundle():
    bundle = ModelOptions(
        dtype="float16",
        device="cpu",
        batch_size=2,
        concurrency=3,
        timeout_s=4.0,
        max_retries=1,
        trust_remote_code=True,
        tensor_parallel_size=2,
        max_model_len=4096,
    )
    assert PROVIDERS["hf"].options_of(bundle) == HFOptions("float16", "cpu", 2, True)
    api = APIOptions(concurrency=3, timeout_s=4.0, max_retries=1)
    for name in ("openai", "anthropic", "google"):
        assert PROVIDERS[name].options_of(bundle) == api
    vllm = VLLMOptions(3, 4.0, 1, tensor_parallel_size=2, max_model_len=4096)
    assert PROVIDERS["vllm"].options_of(bundle) == vllm


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("hf/some/model", ModelOptions(base_url="http://127.0.0.1:9/v1"), "apply to API models"),
        ("hf/some/model", ModelOptions(api_key="k"), "apply to API models"),
        ("vllm/some/model", ModelOptions(base_url="http://127.0.0.1:9/v1"), "own server"),
        ("openai/gpt-4o", ModelOptions(head_input="meta_token"), "--head-input applies"),
        ("google/gemini", ModelOptions(head_input="image_mean"), "--head-input applies"),
    ],
)
def test_an_option_a_backend_cannot_honour_is_refused_before_it_loads(spec, options, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec, options)


def test_the_registry_imports_no_backend_until_one_is_loaded():
    backends = ("torch", "transformers", "openai", "anthropic", "google.genai", "holisafe.vgm")
    code = (
        "import sys, holisafe.models, holisafe.cli; "
        f"print([m for m in {backends!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_config_dict_tells_the_head_input_it_records():
    safety = {"model_type": "llava", "safety_categories": list(IMAGE_SAFETY_LABELS)}
    assert not inspect_checkpoint({"model_type": "llava"}).is_safe_vlm
    assert inspect_checkpoint({"model_type": "llava"}).head_input is None
    assert inspect_checkpoint(safety).head_input == RELEASED_HEAD_INPUT
    recorded = safety | {"safety_head_input": "projector_mean"}
    assert inspect_checkpoint(recorded).head_input == "projector_mean"
    for pooling, head_input in (("meta_token", "meta_token"), ("mean", "image_mean")):
        assert inspect_checkpoint(safety | {"safety_pooling": pooling}).head_input == head_input
    with pytest.raises(ModelError, match="unknown safety_pooling 'max'"):
        inspect_checkpoint(safety | {"safety_pooling": "max"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A plain tiny LLaVA, the toolkit's Safe-VLMs of it, and two released layouts."""
    from holisafe.vgm import VGMSettings, convert_folder
    from tests.modelfixtures import no_network, tiny_model_dir
    from tests.remotefixtures import released_dir

    root = tmp_path_factory.mktemp("checkpoints")
    plain = tiny_model_dir(root, "llava")
    made = {"plain": plain}
    with no_network():
        for head_input in ("meta_token", "projector_mean"):
            made[head_input] = root / head_input
            convert_folder(str(plain), str(made[head_input]), VGMSettings(head_input=head_input))
        for convention in ("safeqwen", "safellava"):
            made[convention] = released_dir(root / "released", convention)
    return made


def test_a_plain_folder_is_no_safe_vlm(folders):
    kind = inspect_checkpoint(folders["plain"])
    assert kind.model_type == "llava" and not kind.is_safe_vlm and not kind.runs_remote_code
    assert kind.head_input is None


@pytest.mark.parametrize("head_input", ["meta_token", "projector_mean"])
def test_the_toolkits_safe_vlm_records_what_its_head_reads(folders, head_input):
    from transformers import AutoConfig

    kind = inspect_checkpoint(folders[head_input])
    assert kind.is_safe_vlm and kind.head_input == kind.recorded_head_input == head_input
    assert kind.safety_categories == IMAGE_SAFETY_LABELS and not kind.runs_remote_code
    # the folder, its path as a string, its config dict and its config object agree
    config = json.loads((folders[head_input] / "config.json").read_text())
    assert inspect_checkpoint(str(folders[head_input])) == kind == inspect_checkpoint(config)
    assert inspect_checkpoint(AutoConfig.from_pretrained(folders[head_input])) == kind


@pytest.mark.parametrize(
    ("convention", "remote_class", "llava_layout"),
    [
        ("safeqwen", "modeling_safeqwen.SafeQwen2_5_VLForConditionalGeneration", False),
        ("safellava", "modeling_safellava.SafeLlavaLlamaForCausalLM", True),
    ],
)
def test_a_released_safe_vlm_runs_its_own_code(folders, convention, remote_class, llava_layout):
    kind = inspect_checkpoint(folders[convention])
    assert kind.is_safe_vlm and kind.runs_remote_code and kind.recorded_head_input is None
    assert kind.remote_class == remote_class and kind.llava_layout == llava_layout
