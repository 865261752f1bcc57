"""Plain export of a Safe-VLM: stock transformers classes load it with no toolkit import and
answer exactly as the Safe-VLM does (the meta token placed by the chat template for LLaVA)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import META_TOKEN, VGMError, VGMSettings, convert_folder, load_safe_vlm
from holisafe.vgm.export import export_plain

NEW_TOKENS = 6
# Run in a fresh interpreter that never imports holisafe: what lmms-eval would do.
STOCK = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder = sys.argv[1]
processor = AutoProcessor.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder)
image = Image.new("RGB", (40, 30), (200, 30, 30))
messages = [{"role": "user", "content": [{"type": "image", "image": image},
             {"type": "text", "text": "What is shown here?"}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
with torch.inference_mode():
    out = model.generate(**inputs, max_new_tokens=int(sys.argv[2]), do_sample=False)
assert not any(name.startswith("holisafe") for name in sys.modules)
print(json.dumps({"class": type(model).__name__, "input_ids": inputs["input_ids"][0].tolist(),
                  "output": out[0].tolist()}))
"""


def safe_vlm_answer(folder) -> dict:
    """The same request answered by the Safe-VLM through the toolkit."""
    processor = AutoProcessor.from_pretrained(folder)
    model = load_safe_vlm(str(folder))
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image},
                                     {"type": "text", "text": "What is shown here?"}]}
    ]  # fmt: skip
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = model.prepare_inputs(inputs, processor.tokenizer)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return {"input_ids": inputs["input_ids"][0].tolist(), "output": out[0].tolist()}


def stock_answer(folder) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", STOCK, str(folder), str(NEW_TOKENS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("family", "head_input"), [("llava", "meta_token"), ("qwen2_5_vl", "image_mean")]
)
@pytest.mark.slow
def test_the_export_answers_as_the_safe_vlm_with_stock_classes(tmp_path, family, head_input):
    build_tiny_model(tmp_path / "plain", family, seed=2)
    convert_folder(
        str(tmp_path / "plain"), str(tmp_path / "safe"), VGMSettings(head_input=head_input)
    )
    out = export_plain(tmp_path / "safe", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert not any(key.startswith("safety_") for key in config)
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert not any(key.startswith("img_safety_head.") for key in weights.keys())  # noqa: SIM118
    stock, safe = stock_answer(out), safe_vlm_answer(tmp_path / "safe")
    assert stock["class"] == type(load_safe_vlm(str(tmp_path / "safe"))).__bases__[-1].__name__
    assert stock["input_ids"] == safe["input_ids"]
    assert stock["output"] == safe["output"]
    if head_input == "meta_token":
        meta = AutoProcessor.from_pretrained(out).tokenizer.convert_tokens_to_ids(META_TOKEN)
        assert stock["input_ids"].count(meta) == 1


def test_a_meta_token_model_of_another_family_is_refused(tmp_path):
    build_tiny_model(tmp_path / "plain", "gemma3", seed=2)
    convert_folder(str(tmp_path / "plain"), str(tmp_path / "safe"), VGMSettings("meta_token"))
    with pytest.raises(VGMError, match="cannot be exported as a plain checkpoint"):
        export_plain(tmp_path / "safe", tmp_path / "export")


def test_a_vision_side_meta_token_is_refused(tmp_path):
    build_tiny_model(tmp_path / "plain", "llava", seed=2)
    vision = VGMSettings(meta_token_placement="vision")
    convert_folder(str(tmp_path / "plain"), str(tmp_path / "safe"), vision)
    with pytest.raises(VGMError, match="enters the vision encoder"):
        export_plain(tmp_path / "safe", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_the_cli_exports(tmp_path):
    build_tiny_model(tmp_path / "plain", "llava", seed=2)
    convert_folder(
        str(tmp_path / "plain"), str(tmp_path / "safe"), VGMSettings(head_input="image_mean")
    )
    result = CliRunner().invoke(
        app, ["model", "export-plain", str(tmp_path / "safe"), str(tmp_path / "export")]
    )
    assert result.exit_code == 0, result.output
    assert "LlavaForConditionalGeneration" in result.output
    assert (tmp_path / "export" / "model.safetensors").is_file()
