"""Released Safe-VLM checkpoints converted to the toolkit's own Safe-VLM classes.

The output folder loads with `load_safe_vlm` (and as `hf/OUT`) without remote code:

- SafeQwen2.5-VL, SafeGem (stock family layout): the config without `auto_map`, with the head
  reading what the release's head reads (`RELEASED_HEAD_INPUT`: SafeQwen2.5-VL the mean
  final-layer state over the image tokens, `image_mean`; SafeGem the mean of the projector's
  output, `projector_mean`), and the weights as they are, the head's included;
- SafeLLaVA (the original LLaVA code base's layout): the weights renamed to transformers'
  `LlavaForConditionalGeneration` layout (as transformers' own LLaVA conversion script maps
  them: `mm_projector.0/2` to the projector's `linear_1/2`, the LLaMA model under the language
  model), the separately loaded CLIP tower put inside, the safety meta token made a token of
  the tokenizer whose embedding is the checkpoint's, and a processor whose chat template
  renders the checkpoint's own `llava_v1` prompt.

Every weight of the checkpoint must be placed: one the mapping does not know is an error.

What each released head reads is known only second-hand, so a conversion proves itself: the
release's own code and the converted model run, in float32 on the CPU, on seeded synthetic
images (`PROBE_SIZES`) with a short query, and the conversion is refused (its folder removed) when a
safety probability differs by more than `PROBABILITY_TOLERANCE` (1e-4, absolute) or a logit of
the first generated token by more than `LOGIT_TOLERANCE` (1e-3, absolute). The comparison is
recorded in the folder's `conversion.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
)

from holisafe.core.checkpoint import inspect_checkpoint
from holisafe.core.folders import new_folder, refuse_existing
from holisafe.core.records import Request
from holisafe.models.hf import HFModel
from holisafe.models.remote import (
    LLAVA_PACKAGE,
    LLAVA_TEMPLATE,
    LlavaCodebaseModel,
    llava_codebase,
    load_released,
    local_folder,
    remote_code_of,
)
from holisafe.vgm.config import META_TOKEN, VGMError, VGMSettings
from holisafe.vgm.model import SAFE_CLASSES, SafeLlavaForConditionalGeneration

# Original LLaVA weight names → transformers' LLaVA, first matching prefix wins.
LLAVA_KEY_MAP = (
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.", "model.vision_tower."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
    ("img_safety_head.", "img_safety_head."),
)
META_TOKEN_WEIGHT = "model.safety_meta_token"
# LLaVA's `mm_vision_select_feature` → transformers' `vision_feature_select_strategy`.
SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
SAFETY_KEYS = ("safety_categories", "num_safety_categories", "safety_head_hidden_scale")
SAFETY_KEYS += ("safety_num_hidden_layers", "safety_loss_lambda")
IMAGE_PROCESSOR_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)  # fmt: skip
SENTINEL = "\x00query\x00"
UNVERIFIED = (
    "the converted model's safety probabilities and first-token logits were not compared with "
    "the release's own code (--no-verify)"
)
# What each released family's head reads (HOLISAFE.md §6).
RELEASED_HEAD_INPUT = {"qwen2_5_vl": "image_mean", "gemma3": "projector_mean"}
PROBE_SIZES = ((48, 32), (32, 48), (40, 40))  # width, height
PROBE_SEED = 0
PROBE_QUERY = "What does this picture show?"
PROBABILITY_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3


def convert_released(
    source: str,
    out: str | Path,
    *,
    trust_remote_code: bool = False,
    verify: bool = True,
    overwrite: bool = False,
) -> str:
    """Convert the released checkpoint `source` (folder or Hub id) into the folder `out`;
    returns the family it now loads as.

    Verifying the conversion (see the module's docstring) runs the checkpoint's own code, and so
    needs `trust_remote_code`; without it only `verify=False` converts, recorded as unverified.
    The LLaVA layout's conversion itself runs that code too (to read its prompt template and
    check that the converted processor tokenizes prompts as that code does). `out` is written
    whole or not at all; an existing one is replaced only with `overwrite`.
    """
    refuse_existing(Path(out), overwrite)
    folder = local_folder(source)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kind = inspect_checkpoint(config)
    if not kind.runs_remote_code:
        raise VGMError(
            f"{source} is no released Safe-VLM (its config needs safety_categories and an "
            "auto_map to the checkpoint's own code); a folder without auto_map already loads "
            "without remote code"
        )
    if kind.llava_layout and not trust_remote_code:
        raise VGMError(
            f"{source} is in the LLaVA code base's layout: converting it runs the "
            f"{LLAVA_PACKAGE} package shipped with it; pass --trust-remote-code"
        )
    if not kind.llava_layout and kind.model_type not in RELEASED_HEAD_INPUT:
        raise VGMError(
            f"{source}: model_type {kind.model_type!r} is neither the LLaVA code "
            f"base's layout nor one of {', '.join(RELEASED_HEAD_INPUT)}"
        )
    if verify and not trust_remote_code:
        raise VGMError(
            f"{source}: a conversion is verified against the release's own code, which runs "
            "only with --trust-remote-code; pass it, or --no-verify to convert unverified"
        )
    family = "llava" if kind.llava_layout else kind.model_type
    with new_folder(out, overwrite) as building:
        if kind.llava_layout:
            _convert_llava(folder, building, config)
        else:
            _convert_stock(folder, building, RELEASED_HEAD_INPUT[family])
        record = {"source": source, "family": family, "versions": _versions()}
        unverified = {"verified": False, "unverified": UNVERIFIED}
        record |= _verify(source, folder, building) if verify else unverified
        text = json.dumps(record, indent=1) + "\n"
        (building / "conversion.json").write_text(text, encoding="utf-8")
    return family


def native_base(source: str, scratch: Path, *, trust_remote_code: bool) -> str:
    """`source` itself, or, for a released checkpoint that runs remote code, its conversion
    in `scratch` (kept, so that a resumed run reuses it)."""
    code = remote_code_of(source)
    if code is None:
        return source
    if not trust_remote_code:
        raise VGMError(
            f"{source} is a released checkpoint that runs its own code ({code.remote_class}); pass "
            "--trust-remote-code to convert it to the toolkit's classes first"
        )
    if not (scratch / "config.json").exists():
        convert_released(source, scratch, trust_remote_code=True)
    return str(scratch)


def _convert_stock(folder: Path, out: Path, head_input: str) -> None:
    # the stock class; the safety fields ride along
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    for name in ("auto_map", "safety_pooling", "safety_head_input"):
        if hasattr(config, name):
            delattr(config, name)
    released = VGMSettings.from_config(config)
    settings = VGMSettings(**{**released.__dict__, "head_input": head_input})
    for name, value in settings.config_fields().items():
        setattr(config, name, value)
    model_class = SAFE_CLASSES[config.model_type]
    config.architectures = [model_class.__name__]
    model, info = model_class.from_pretrained(
        folder, config=config, dtype="auto", output_loading_info=True, trust_remote_code=False
    )
    _check_loading(folder, info)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(folder, trust_remote_code=False).save_pretrained(out)


def _verify(source: str, folder: Path, out: Path) -> dict:
    """The release's own code and the converted model in `out` on the probes: their largest
    differences, or a VGMError naming the largest one beyond the tolerance."""
    probes = _probe_requests()
    released = load_released(str(folder), dtype="float32", device="cpu", batch_size=1,
                             trust_remote_code=True, head_input=None)  # fmt: skip
    categories = released.safety_categories
    theirs = [_probe(released, probe) for probe in probes]
    del released  # one model in memory at a time
    converted = HFModel(str(out), dtype="float32", device="cpu", batch_size=1)
    ours = [_probe(converted, probe) for probe in probes]
    rows = []
    for probe, (their_probs, their_logits), (our_probs, our_logits) in zip(
        probes, theirs, ours, strict=True
    ):
        # the conversion may add tokens (the meta token) after the released vocabulary
        probs_gap = (our_probs - their_probs).abs()
        logits_gap = (our_logits[: len(their_logits)] - their_logits).abs()
        category, token = int(probs_gap.argmax()), int(logits_gap.argmax())
        rows.append({
            "image_size": list(probe.image.size),
            "max_probability_difference": float(probs_gap[category]),
            "at_category": categories[category],
            "released_probability": float(their_probs[category]),
            "converted_probability": float(our_probs[category]),
            "max_logit_difference": float(logits_gap[token]),
            "at_token_id": token,
        })  # fmt: skip
    for key, tolerance in (
        ("max_probability_difference", PROBABILITY_TOLERANCE),
        ("max_logit_difference", LOGIT_TOLERANCE),
    ):
        worst = max(range(len(rows)), key=lambda i: rows[i][key])
        row = rows[worst]
        if row[key] > tolerance:
            what = (
                f"p({row['at_category']}), {row['converted_probability']:.4g} converted and "
                f"{row['released_probability']:.4g} through the release's own code"
                if key == "max_probability_difference"
                else f"the first generated token's logit of token {row['at_token_id']}"
            )
            raise VGMError(
                f"cannot convert {source}: the converted model disagrees with the release's own "
                f"code; the largest difference, {row[key]:.3g} > {tolerance:g}, is in {what}, on "
                f"probe {worst} ({'×'.join(map(str, row['image_size']))} image); nothing written"
            )
    return {
        "verified": True,
        "tolerance": {"probability": PROBABILITY_TOLERANCE, "logit": LOGIT_TOLERANCE},
        "device": "cpu",
        "dtype": "float32",
        "query": PROBE_QUERY,
        "seed": PROBE_SEED,
        "max_probability_difference": max(r["max_probability_difference"] for r in rows),
        "max_logit_difference": max(r["max_logit_difference"] for r in rows),
        "probes": rows,
    }


def _probe_requests() -> list[Request]:
    """Small seeded pictures (colour gradients under noise), each with the probe query."""
    generator = np.random.default_rng(PROBE_SEED)
    requests = []
    for width, height in PROBE_SIZES:
        y, x = np.mgrid[0:height, 0:width]
        tint = np.full((height, width), generator.uniform(0, 255))
        gradient = np.stack([x * 255 / width, y * 255 / height, tint], axis=-1)
        pixels = gradient + generator.normal(0, 40, (height, width, 3))
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        requests.append(Request(PROBE_QUERY, image))
    return requests


def _probe(model: HFModel | LlavaCodebaseModel, request: Request):
    """The safety probabilities and the first generated token's logits for `request`."""
    with torch.inference_mode():
        if isinstance(model, LlavaCodebaseModel):
            ids, images = model.prompt(request)
            output = model.model(input_ids=ids, do_safety=True, **images)
        else:
            output = model.model(**model._inputs([request]), do_safety=True)
    return output.img_safety_probs[0].float(), output.logits[0, -1].float()


def _versions() -> dict[str, str]:
    return {package: metadata.version(package) for package in ("holisafe", "torch", "transformers")}


def _check_loading(folder: Path, info: Mapping) -> None:
    problems = {
        "weights the toolkit's class does not know": info.get("unexpected_keys"),
        "weights the checkpoint lacks": info.get("missing_keys"),
        "weights of another shape": info.get("mismatched_keys"),
    }
    found = [f"{what}: {', '.join(map(str, keys))}" for what, keys in problems.items() if keys]
    if found:
        raise VGMError(f"cannot convert {folder}; " + "; ".join(found))


def _convert_llava(folder: Path, out: Path, layout: dict) -> None:
    if layout.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise VGMError(
            f"{folder}: projector {layout['mm_projector_type']!r}; transformers' LLaVA has the "
            "two-layer GELU one (mlp2x_gelu)"
        )
    weights = _read_weights(folder)
    tower = layout["mm_vision_tower"]
    with llava_codebase(folder):  # the tokenizer reads the config, and so the config's code
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    added_image_token = "<image>" not in tokenizer.get_vocab()
    if added_image_token:
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    meta_token = weights.pop(META_TOKEN_WEIGHT, None)
    if meta_token is not None:
        tokenizer.add_tokens([META_TOKEN], special_tokens=True)
    config = _llava_config(layout, tower, tokenizer, meta_token is not None)
    mapped = _map_llava_weights(folder, weights, _tower_weights(tower, weights))
    vocab = config.text_config.vocab_size
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        mapped[name] = _grow_rows(mapped[name], vocab)
    if meta_token is not None:
        embed = mapped["model.language_model.embed_tokens.weight"]
        embed[config.safety_meta_token_id] = meta_token.reshape(-1).to(embed.dtype)
    _check_llava_weights(folder, config, mapped)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in mapped.items()}, out / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    generation = _generation_config(folder)
    if added_image_token:  # its output row is zeros: never to be generated
        suppressed = generation.suppress_tokens or []
        generation.suppress_tokens = [*suppressed, config.image_token_id]
    generation.save_pretrained(out)
    processor = _llava_processor(folder, layout, tokenizer, config)
    processor.save_pretrained(out)


def _generation_config(folder: Path) -> GenerationConfig:
    if (folder / "generation_config.json").exists():
        return GenerationConfig.from_pretrained(folder)  # plain data: no code to run
    return GenerationConfig()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights |= load_file(path)
    if not weights:
        for path in sorted(folder.glob("pytorch_model*.bin")):
            weights |= torch.load(path, map_location="cpu", weights_only=True)
    if not weights:
        raise VGMError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return weights


def _tower_weights(tower: str, weights: Mapping) -> dict[str, torch.Tensor]:
    """The CLIP tower's weights under the checkpoint's names, when it does not carry them."""
    if any(k.startswith("model.vision_tower.") for k in weights):
        return {}
    model = transformers.CLIPVisionModel.from_pretrained(
        tower, dtype="auto", trust_remote_code=False
    )
    return {f"model.vision_tower.vision_tower.{k}": v for k, v in model.state_dict().items()}


def _map_llava_weights(folder: Path, weights: Mapping, tower: Mapping) -> dict[str, torch.Tensor]:
    mapped, unknown = {}, []
    for key, value in {**weights, **tower}.items():
        targets = [new + key[len(old) :] for old, new in LLAVA_KEY_MAP if key.startswith(old)]
        if not targets:
            unknown.append(key)
        else:
            mapped[targets[0]] = value
    if unknown:
        raise VGMError(
            f"cannot convert {folder}: the LLaVA mapping does not know the weights "
            + ", ".join(sorted(unknown))
        )
    return mapped


def _grow_rows(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """The matrix with zero rows added for the tokens the conversion adds."""
    if len(matrix) >= rows:
        return matrix.clone()
    return torch.cat([matrix, matrix.new_zeros(rows - len(matrix), *matrix.shape[1:])])


def _check_llava_weights(folder: Path, config, mapped: Mapping) -> None:
    with torch.device("meta"):
        expected = SafeLlavaForConditionalGeneration(config).state_dict()
    _check_loading(
        folder,
        {
            "unexpected_keys": [k for k in mapped if k not in expected],
            "missing_keys": [k for k in expected if k not in mapped],
            "mismatched_keys": [
                k for k in mapped if k in expected and mapped[k].shape != expected[k].shape
            ],
        },
    )


def _llava_config(layout: dict, tower: str, tokenizer, with_meta_token: bool):
    text = {
        k: v
        for k, v in layout.items()
        if not k.startswith("mm_")
        and k not in SAFETY_KEYS
        and k not in ("auto_map", "architectures", "model_type", "image_aspect_ratio")
    }
    text["vocab_size"] = max(len(tokenizer), layout["vocab_size"])
    vision = AutoConfig.from_pretrained(tower, trust_remote_code=False)
    vision = getattr(vision, "vision_config", vision)
    try:
        strategy = SELECT_STRATEGY[layout.get("mm_vision_select_feature", "patch")]
    except KeyError:
        raise VGMError(
            f"mm_vision_select_feature {layout['mm_vision_select_feature']!r}; "
            f"expected one of {', '.join(SELECT_STRATEGY)}"
        ) from None
    config = transformers.LlavaConfig(
        text_config={**text, "model_type": "llama"},
        vision_config=vision.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=layout.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
    )
    meta_token_id = tokenizer.convert_tokens_to_ids(META_TOKEN) if with_meta_token else None
    settings = VGMSettings(
        head_input="meta_token" if with_meta_token else "image_mean",
        categories=tuple(layout["safety_categories"]),
        hidden_scale=float(layout.get("safety_head_hidden_scale", 0.5)),
        num_hidden_layers=int(layout.get("safety_num_hidden_layers", 1)),
        loss_lambda=float(layout.get("safety_loss_lambda", 1.0)),
        meta_token_id=meta_token_id,
    )
    for name, value in settings.config_fields().items():
        setattr(config, name, value)
    config.architectures = [SafeLlavaForConditionalGeneration.__name__]
    return config


def _llava_processor(folder: Path, layout: dict, tokenizer, config):
    """LLaVA's processor: the tower's image settings (padded to a square when the checkpoint
    pads), and a chat template rendering the checkpoint's own prompt."""
    tower_processor = AutoImageProcessor.from_pretrained(
        layout["mm_vision_tower"], trust_remote_code=False
    )
    settings = {k: v for k, v in tower_processor.to_dict().items() if k in IMAGE_PROCESSOR_KEYS}
    pil = type(tower_processor).__name__.endswith("Pil")
    image_class = transformers.LlavaImageProcessorPil if pil else transformers.LlavaImageProcessor
    pad = layout.get("image_aspect_ratio") == "pad"
    image_processor = image_class(**settings, do_pad=pad)
    with llava_codebase(folder) as code:
        before, between, after = _prompt_parts(code)
        for separator in (between, between.replace("\n", " \n", 1)):
            processor = transformers.LlavaProcessor(
                image_processor=image_processor,
                tokenizer=tokenizer,
                patch_size=config.vision_config.patch_size,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
                num_additional_image_tokens=1,
                chat_template=_chat_template(before, code.DEFAULT_IMAGE_TOKEN + separator, after),
            )
            if _same_prompt_tokens(processor, code, config):
                return processor
    raise VGMError(
        f"cannot convert {folder}: its tokenizer does not give the checkpoint's own prompt "
        "tokens through transformers' LLaVA processor"
    )


def _prompt_parts(code) -> tuple[str, str, str]:
    """The checkpoint's `llava_v1` prompt around an image and a query: before, between, after."""
    image_token = code.DEFAULT_IMAGE_TOKEN
    with_image = _render(code, f"{image_token}\n{SENTINEL}")
    text_only = _render(code, SENTINEL)
    before, rest = with_image.split(image_token, 1)
    between, after = rest.split(SENTINEL, 1)
    if text_only != before + SENTINEL + after:
        raise VGMError(f"the {LLAVA_TEMPLATE!r} template is not a plain prefix and suffix")
    return before, between, after


def _render(code, query: str) -> str:
    conversation = code.conv_templates[LLAVA_TEMPLATE].copy()
    conversation.append_message(conversation.roles[0], query)
    conversation.append_message(conversation.roles[1], None)
    return conversation.get_prompt()


def _chat_template(before: str, image: str, after: str) -> str:
    """One user turn: `before`, the image part per image, the text, `after` as the generation
    prompt. A system message is refused, so callers put a system prompt into the query."""
    return (
        "{%- if messages | length != 1 or messages[0].role != 'user' -%}"
        "{{- raise_exception('this model takes one user message') -}}{%- endif -%}"
        f"{{{{- {json.dumps(before)} -}}}}"
        "{%- for part in messages[0].content if part.type == 'image' -%}"
        f"{{{{- {json.dumps(image)} -}}}}"
        "{%- endfor -%}"
        "{%- for part in messages[0].content if part.type == 'text' -%}"
        "{{- part.text -}}{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {json.dumps(after)} -}}}}{{%- endif -%}}"
    )


def _same_prompt_tokens(processor, code, config) -> bool:
    """Whether the processor tokenizes a probe request as the checkpoint's code does."""
    query = "Is this picture safe to share?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    size = config.vision_config.image_size
    ids = processor(text=text, images=Image.new("RGB", (size, size))).input_ids[0]
    image_id = config.image_token_id
    collapsed = [
        code.IMAGE_TOKEN_INDEX if t == image_id else t
        for i, t in enumerate(ids)
        if not (t == image_id and i and ids[i - 1] == image_id)
    ]
    expected = code.tokenizer_image_token(
        _render(code, f"{code.DEFAULT_IMAGE_TOKEN}\n{query}"),
        processor.tokenizer,
        code.IMAGE_TOKEN_INDEX,
    )
    return collapsed == list(expected)
