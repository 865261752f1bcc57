"""What the tiny models of the real LLaVA-1.5, Qwen2.5-VL and Gemma 3 classes are made of: their
sizes, configs, processors and stop tokens (`holisafe.synthetic.tiny` builds them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    CLIPImageProcessorPil,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLVideoProcessor,
)

# The language model: small enough that one forward pass takes milliseconds on a CPU.
TEXT_SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 2048,
}
# Vision towers see 32-pixel squares cut into 8-pixel patches: 16 patches per image.
IMAGE_SIZE = 32
PATCH_SIZE = 8
VISION_SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
# LLaVA's tower is the one `--pretrain-vision` teaches; at width 32 it learns to name a pictogram
# on about half of held-out Mini-style images, at 64 on 70%, so it is built twice as wide.
LLAVA_VISION_SIZE = {**VISION_SIZE, "hidden_size": 64, "intermediate_size": 128}
VISION_HEADS = 4
# Gemma 3 pools the 4x4 patch grid to 2x2 soft tokens per image.
GEMMA3_IMAGE_TOKENS = 4


@dataclass(frozen=True)
class TinyFamily:
    """What a tiny model of one family is made of."""

    model_class: type[PreTrainedModel]
    config: Callable[[PreTrainedTokenizerBase], PretrainedConfig]
    processor: Callable[[PreTrainedTokenizerBase, str], ProcessorMixin]
    stop_tokens: tuple[str, ...]  # generation ends at any of these
    tokenizer: str = ""  # the tokenizer recipe, when it is not the family's name
    template: str = ""  # the chat template's family, when it is not this one


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision_size(heads_key: str, size: dict[str, int] = VISION_SIZE) -> dict[str, int]:
    return {**size, heads_key: VISION_HEADS}


def _llava_config(tokenizer: PreTrainedTokenizerBase) -> LlavaConfig:
    return LlavaConfig(
        text_config={"model_type": "llama", **TEXT_SIZE, **_token_ids(tokenizer)},
        vision_config={
            "model_type": "clip_vision_model",
            **_vision_size("num_attention_heads", LLAVA_VISION_SIZE),
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "projection_dim": 32,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        # LLaVA-1.5 reads the penultimate layer of its deep tower; a two-layer tower's last one
        vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
    )


def _llava_processor(tokenizer: PreTrainedTokenizerBase, template: str) -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    # As llava-1.5-hf: the CLIP class token is dropped ("default"), one image token per patch.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )


def _qwen2_5_vl_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config={
            **TEXT_SIZE,
            **_token_ids(tokenizer),
            "num_key_value_heads": 2,
            # Rotary frequencies split over (time, height, width); the sections sum to head_dim / 2.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [2, 3, 3],
            },
        },
        vision_config={
            **_vision_size("num_heads"),
            "depth": VISION_SIZE["num_hidden_layers"],
            "out_hidden_size": TEXT_SIZE["hidden_size"],
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 4 * PATCH_SIZE,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen2_5_vl_processor(tokenizer: PreTrainedTokenizerBase, template: str) -> Qwen2_5_VLProcessor:
    # Images keep their aspect ratio: 32x32 to 64x64 pixels, so 4 to 16 image tokens.
    patches = {"patch_size": PATCH_SIZE, "merge_size": 2, "temporal_patch_size": 2}
    pixels = {"shortest_edge": IMAGE_SIZE**2, "longest_edge": (2 * IMAGE_SIZE) ** 2}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(size=pixels, **patches),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=pixels, **patches),
        chat_template=template,
    )


def _gemma3_config(tokenizer: PreTrainedTokenizerBase) -> Gemma3Config:
    head_dim = TEXT_SIZE["hidden_size"] // TEXT_SIZE["num_attention_heads"]
    ids = tokenizer.convert_tokens_to_ids
    return Gemma3Config(
        text_config={
            **TEXT_SIZE,
            **_token_ids(tokenizer),
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "sliding_window": 64,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        vision_config={
            **_vision_size("num_attention_heads"),
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )


def _gemma3_processor(tokenizer: PreTrainedTokenizerBase, template: str) -> Gemma3Processor:
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        image_seq_length=GEMMA3_IMAGE_TOKENS,
    )


VLM_FAMILIES: dict[str, TinyFamily] = {
    "llava": TinyFamily(
        LlavaForConditionalGeneration, _llava_config, _llava_processor, stop_tokens=("</s>",)
    ),
    "qwen2_5_vl": TinyFamily(
        Qwen2_5_VLForConditionalGeneration,
        _qwen2_5_vl_config,
        _qwen2_5_vl_processor,
        stop_tokens=("<|im_end|>", "<|endoftext|>"),
    ),
    "gemma3": TinyFamily(
        Gemma3ForConditionalGeneration,
        _gemma3_config,
        _gemma3_processor,
        stop_tokens=("<end_of_turn>", "<eos>"),
    ),
}
FAMILIES = tuple(VLM_FAMILIES)
