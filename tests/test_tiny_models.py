"""Tiny models: real transformers classes, offline tokenizers, chat templates, the CLI."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    GemmaTokenizer,
    LlamaTokenizer,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core.records import ModelError
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.synthetic.tokenizer import RECIPES, build_tokenizer
from tests.modelfixtures import FAMILIES, IMAGE_TOKENS, no_network, picture, tiny_model_dir

MODEL_CLASSES = {
    "llava": LlavaForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "gemma3": Gemma3ForConditionalGeneration,
}
PROCESSOR_CLASSES = {
    "llava": LlavaProcessor,
    "qwen2_5_vl": Qwen2_5_VLProcessor,
    "gemma3": Gemma3Processor,
}
TOKENIZER_CLASSES = {
    "llava": LlamaTokenizer,
    "qwen2_5_vl": Qwen2Tokenizer,
    "gemma3": GemmaTokenizer,
}
# What a rendered one-image prompt must contain, in the style of the real model's template.
PROMPT_MARKS = {
    "llava": ("USER: <image>\nWhat is shown?", " ASSISTANT:"),
    "qwen2_5_vl": (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n",
        "<|im_start|>assistant\n",
    ),
    "gemma3": ("<start_of_turn>user\n<start_of_image>What is shown?<end_of_turn>\n", "model\n"),
}
END_OF_ANSWER = {"llava": "</s>", "qwen2_5_vl": "<|im_end|>", "gemma3": "<end_of_turn>"}
ANY_TEXT = "Grüße, 東京 🙂 naïve\tcafé — \x00 ✓ 42 ... <not a token> ¿qué?"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """family -> (processor, model), each built once and loaded offline."""
    cache = {}

    def load(family):
        if family not in cache:
            folder = tiny_model_dir(tmp_path_factory.mktemp("tiny"), family)
            with no_network():
                processor = AutoProcessor.from_pretrained(folder)
                model = AutoModelForImageTextToText.from_pretrained(folder)
            cache[family] = (processor, model)
        return cache[family]

    return load


def one_image_chat(image, answer=None):
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": "What is shown?"},
            ],
        }
    ]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


@pytest.mark.parametrize("family", TOKENIZER_CLASSES)
def test_tokenizer_is_the_family_class_and_deterministic(family):
    first, second = build_tokenizer(family), build_tokenizer(family)
    assert type(first) is TOKENIZER_CLASSES[family]
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert 1000 <= len(first) <= 4096


@pytest.mark.parametrize("family", TOKENIZER_CLASSES)
def test_special_tokens_are_single_tokens(family):
    tokenizer = build_tokenizer(family)
    recipe = RECIPES[family]
    specials = recipe.leading_specials + recipe.trailing_specials
    ids = [tokenizer.encode(token, add_special_tokens=False) for token in specials]
    assert all(len(token_ids) == 1 for token_ids in ids)
    assert len({token_ids[0] for token_ids in ids}) == len(specials)
    for name, token in recipe.named_tokens.items():
        assert getattr(tokenizer, name) == token


@pytest.mark.parametrize("family", TOKENIZER_CLASSES)
def test_any_text_round_trips_without_unknown_tokens(family):
    tokenizer = build_tokenizer(family)
    ids = tokenizer.encode(ANY_TEXT, add_special_tokens=False)
    if family != "qwen2_5_vl":  # Qwen2's unknown token doubles as its end-of-text token
        assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == ANY_TEXT


@pytest.mark.parametrize("family", TOKENIZER_CLASSES)
def test_tokenizer_encodes_english_compactly(family):
    tokenizer = build_tokenizer(family)
    text = (
        "Could you tell me what the woman near the window is doing with her hands? "
        "I'm sorry, but I cannot help with this request because it could be used to hurt someone."
    )
    assert len(tokenizer.encode(text, add_special_tokens=False)) * 3 < len(text)


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_offline_as_the_real_classes(loaded, family):
    processor, model = loaded(family)
    assert type(model) is MODEL_CLASSES[family]
    assert type(processor) is PROCESSOR_CLASSES[family]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    assert model.config.image_token_id == image_token_id
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tokenizer_encodes_as_the_built_one(loaded, family):
    saved = loaded(family)[0].tokenizer
    ids = saved.encode(ANY_TEXT, add_special_tokens=False)
    assert ids == build_tokenizer(family).encode(ANY_TEXT, add_special_tokens=False)
    assert saved.decode(ids) == ANY_TEXT


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_renders_the_family_format(loaded, family):
    processor, _ = loaded(family)
    prompt = processor.apply_chat_template(
        one_image_chat(picture(40, 40, (0, 0, 0))), add_generation_prompt=True
    )
    middle, end = PROMPT_MARKS[family]
    assert middle in prompt
    assert prompt.endswith(end)


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_expands_the_image_into_several_tokens_the_model_reads(loaded, family):
    processor, model = loaded(family)
    logits = []
    for colour in ((0, 0, 0), (250, 250, 250)):
        inputs = processor.apply_chat_template(
            one_image_chat(picture(64, 48, colour)),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
        assert (inputs["input_ids"] == image_token_id).sum() > 1
        with torch.inference_mode():
            logits.append(model(**inputs).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_marks_the_assistant_answer(loaded, family):
    processor, _ = loaded(family)
    answer = "I can't help with that."
    inputs = processor.apply_chat_template(
        one_image_chat(picture(32, 32, (9, 9, 9)), answer=answer),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = inputs["input_ids"][0], inputs["assistant_masks"][0]
    marked = processor.tokenizer.decode([i for i, keep in zip(ids, mask, strict=True) if keep])
    assert marked == answer + END_OF_ANSWER[family]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    weights = {
        name: load_file(tiny_model_dir(tmp_path / name, "llava", seed) / "model.safetensors")
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    }
    names = weights["a"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in names)
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_weight_matrix_starts_at_zero(loaded, family):
    _, model = loaded(family)
    zero = [
        name for name, weight in model.named_parameters() if weight.dim() >= 2 and not weight.any()
    ]
    assert zero == []


def test_cli_writes_a_loadable_model(tmp_path):
    out = tmp_path / "tiny-gemma"
    with no_network():
        result = CliRunner().invoke(
            app, ["model", "tiny", str(out), "--family", "gemma3", "--seed", "2"]
        )
        assert result.exit_code == 0, result.output
        assert f"hf/{out}" in result.output
        assert (
            type(AutoModelForImageTextToText.from_pretrained(out)) is Gemma3ForConditionalGeneration
        )


def test_cli_rejects_an_unknown_family(tmp_path):
    result = CliRunner().invoke(app, ["model", "tiny", str(tmp_path / "m"), "--family", "mistral"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ModelError)
    assert "llava, qwen2_5_vl, gemma3" in str(result.exception)


@pytest.mark.slow
def test_cli_works_in_a_fresh_offline_process(tmp_path):
    out = tmp_path / "tiny-llava"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "holisafe", "model", "tiny", str(out), "--family", "llava"]
    done = subprocess.run(
        [*command, "--vgm", "meta_token"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "LOAD REPORT" not in done.stderr  # the new safety head's missing weights are expected
    with no_network():
        assert type(AutoProcessor.from_pretrained(out)) is LlavaProcessor


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        build_tiny_model(tmp_path / "taken", "llava")
