"""Model folders in the released Safe-VLMs' remote-code layouts, built offline from tiny models.

Each folder holds a modeling file of its own (`tests/remote_code/`), an `auto_map` in its
config and the released safety fields; SafeLLaVA's is in the original LLaVA code base's layout
with its CLIP vision tower in a folder of its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoTokenizer, CLIPImageProcessor

from holisafe.core.taxonomy import IMAGE_SAFETY_LABELS
from tests.modelfixtures import tiny_model_dir

CODE = Path(__file__).parent / "remote_code"
SAFETY_FIELDS = {
    "safety_categories": list(IMAGE_SAFETY_LABELS),
    "num_safety_categories": len(IMAGE_SAFETY_LABELS),
    "safety_head_hidden_scale": 0.5,
    "safety_num_hidden_layers": 1,
    "safety_loss_lambda": 1.0,
}
CONVENTIONS = ("safellava", "safeqwen", "safegem")


def released_dir(root: Path, convention: str, seed: int = 0) -> Path:
    """A folder of the released `convention`: safellava, safeqwen or safegem."""
    builders = {"safellava": _safellava, "safeqwen": _safeqwen, "safegem": _safegem}
    return builders[convention](root / convention, tiny_model_dir(root, _FAMILY[convention], seed))


_FAMILY = {"safellava": "llava", "safeqwen": "qwen2_5_vl", "safegem": "gemma3"}


def _head(width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    inner = width // 2
    shapes = {"mlp.0.weight": (inner, width), "mlp.0.bias": (inner,)}
    shapes |= {"mlp.3.weight": (len(IMAGE_SAFETY_LABELS), inner)}
    shapes |= {"mlp.3.bias": (len(IMAGE_SAFETY_LABELS),)}
    return {
        f"img_safety_head.{k}": torch.randn(s, generator=generator) * 0.5 for k, s in shapes.items()
    }


def _safeqwen(out: Path, plain: Path) -> Path:
    return _stock_layout(out, plain, "modeling_safeqwen", "AutoModelForVision2Seq")


def _safegem(out: Path, plain: Path) -> Path:
    return _stock_layout(out, plain, "modeling_safegem", "AutoModel")


def _stock_layout(out: Path, plain: Path, module: str, auto_class: str) -> Path:
    """The stock family's folder, plus the head's weights, the safety fields and remote code."""
    shutil.copytree(plain, out)
    source = CODE / module.removeprefix("modeling_") / f"{module}.py"
    shutil.copy(source, out)
    class_name = {"modeling_safeqwen": "SafeQwen2_5_VLForConditionalGeneration"}.get(
        module, "SafeGemForConditionalGeneration"
    )
    config = json.loads((out / "config.json").read_text())
    config |= SAFETY_FIELDS | {
        "architectures": [class_name],
        "auto_map": {auto_class: f"{module}.{class_name}"},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    weights = load_file(out / "model.safetensors")
    width = config["text_config"]["hidden_size"]
    weights |= _head(width, torch.Generator().manual_seed(1))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _safellava(out: Path, plain: Path) -> Path:
    """The tiny LLaVA rewritten in the original LLaVA layout, with its CLIP tower apart."""
    model = AutoModelForImageTextToText.from_pretrained(plain, dtype=torch.float32)
    tower = out.parent / "clip-tower"
    model.model.vision_tower.save_pretrained(tower)
    config = model.config
    size = config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size).save_pretrained(tower)
    out.mkdir()
    shutil.copytree(CODE / "safellava", out, dirs_exist_ok=True)
    AutoTokenizer.from_pretrained(plain).save_pretrained(out)
    shutil.copy(plain / "generation_config.json", out)
    weights = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.language_model."):
            weights["model." + key.removeprefix("model.language_model.")] = value
        elif key.startswith("model.multi_modal_projector.linear_"):
            layer = {"1": "0", "2": "2"}[key.split("linear_")[1][0]]
            weights[f"model.mm_projector.{layer}.{key.rsplit('.', 1)[1]}"] = value
        elif key == "lm_head.weight":
            weights[key] = value
    generator = torch.Generator().manual_seed(1)
    width = config.text_config.hidden_size
    weights |= _head(width, generator)
    weights["model.safety_meta_token"] = torch.randn(1, width, generator=generator) * 0.02
    save_file(
        {k: v.contiguous() for k, v in weights.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    text = config.text_config.to_dict()
    for key in ("architectures", "model_type", "auto_map", "dtype", "transformers_version"):
        text.pop(key, None)
    layout = {
        "architectures": ["SafeLlavaLlamaForCausalLM"],
        "model_type": "safe_llava_llama",
        "auto_map": {
            "AutoConfig": "modeling_safellava.SafeLlavaConfig",
            "AutoModelForCausalLM": "modeling_safellava.SafeLlavaLlamaForCausalLM",
        },
        "mm_vision_tower": str(tower),
        "mm_hidden_size": config.vision_config.hidden_size,
        "mm_vision_select_layer": config.vision_feature_layer,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
    }
    (out / "config.json").write_text(json.dumps(text | layout | SAFETY_FIELDS, indent=1))
    return out
