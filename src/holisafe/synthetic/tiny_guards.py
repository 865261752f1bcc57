"""Tiny, randomly initialised models of the real classes of four generative image guards:
Llama Guard 3 Vision (`MllamaForConditionalGeneration`), Llama Guard 4
(`Llama4ForConditionalGeneration`), LlavaGuard v1.2 OV (`LlavaOnevisionForConditionalGeneration`)
and ShieldGemma 2 (`ShieldGemma2ForImageClassification`), each with its real processor class and
a chat template in the shape of the real checkpoint's. Built by `holisafe.synthetic.tiny`.
"""

from __future__ import annotations

from transformers import (
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedTokenizerBase,
    ShieldGemma2Config,
    ShieldGemma2ForImageClassification,
    ShieldGemma2Processor,
)

from holisafe.synthetic.tiny_vlms import (
    GEMMA3_IMAGE_TOKENS,
    IMAGE_SIZE,
    PATCH_SIZE,
    TEXT_SIZE,
    VISION_SIZE,
    TinyFamily,
    _gemma3_config,
    _gemma3_processor,
    _token_ids,
    _vision_size,
)

HEAD_DIM = TEXT_SIZE["hidden_size"] // TEXT_SIZE["num_attention_heads"]


def _mllama_config(tokenizer: PreTrainedTokenizerBase) -> MllamaConfig:
    return MllamaConfig(
        text_config={
            **TEXT_SIZE,
            **_token_ids(tokenizer),
            "num_key_value_heads": 2,
            "cross_attention_layers": [1],
        },
        vision_config={
            **_vision_size("attention_heads"),
            "num_global_layers": 1,
            "intermediate_layers_indices": [0],
            "vision_output_dim": 2 * VISION_SIZE["hidden_size"],  # last + one intermediate layer
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "max_num_tiles": 1,
            "supported_aspect_ratios": [[1, 1]],
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )


def _mllama_processor(tokenizer: PreTrainedTokenizerBase, template: str) -> MllamaProcessor:
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size=size, max_image_tiles=1),
        tokenizer=tokenizer,
        chat_template=template,
    )


def _llama4_config(tokenizer: PreTrainedTokenizerBase) -> Llama4Config:
    ids = tokenizer.convert_tokens_to_ids
    vision_width = VISION_SIZE["hidden_size"]
    return Llama4Config(
        # Dense, as Llama Guard 4 is: no mixture-of-experts layers.
        text_config={
            **TEXT_SIZE,
            **_token_ids(tokenizer),
            "num_key_value_heads": 2,
            "head_dim": HEAD_DIM,
            "intermediate_size_mlp": TEXT_SIZE["intermediate_size"],
            "num_local_experts": 1,
            "moe_layers": [],
        },
        vision_config={
            **_vision_size("num_attention_heads"),
            # Pixel shuffle at ratio 0.5 folds 2x2 patches into one: 4x the width.
            "intermediate_size": 4 * vision_width,
            "pixel_shuffle_ratio": 0.5,
            "projector_input_dim": 2 * vision_width,
            "projector_output_dim": 2 * vision_width,
            "vision_output_dim": 2 * vision_width,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        boi_token_index=ids("<|image_start|>"),
        eoi_token_index=ids("<|image_end|>"),
        image_token_index=ids("<|patch|>"),
    )


def _llama4_processor(tokenizer: PreTrainedTokenizerBase, template: str) -> Llama4Processor:
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return Llama4Processor(
        image_processor=Llama4ImageProcessor(size=size, max_patches=1),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        pixel_shuffle_ratio=0.5,
        chat_template=template,
    )


def _onevision_config(tokenizer: PreTrainedTokenizerBase) -> LlavaOnevisionConfig:
    ids = tokenizer.convert_tokens_to_ids
    return LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            **TEXT_SIZE,
            **_token_ids(tokenizer),
            "num_key_value_heads": 2,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            **_vision_size("num_attention_heads"),
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
    )


def _onevision_processor(
    tokenizer: PreTrainedTokenizerBase, template: str
) -> LlavaOnevisionProcessor:
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size=size, image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]]
        ),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        chat_template=template,
    )


def _shieldgemma2_config(tokenizer: PreTrainedTokenizerBase) -> ShieldGemma2Config:
    gemma3 = _gemma3_config(tokenizer)
    config = ShieldGemma2Config(
        text_config=gemma3.text_config.to_dict(),
        vision_config=gemma3.vision_config.to_dict(),
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=gemma3.boi_token_index,
        eoi_token_index=gemma3.eoi_token_index,
        image_token_index=gemma3.image_token_index,
    )
    # The answer is read from the logits of "Yes" and "No" (their first token here).
    config.yes_token_index = tokenizer("Yes", add_special_tokens=False).input_ids[0]
    config.no_token_index = tokenizer("No", add_special_tokens=False).input_ids[0]
    return config


def _shieldgemma2_processor(
    tokenizer: PreTrainedTokenizerBase, template: str
) -> ShieldGemma2Processor:
    gemma3 = _gemma3_processor(tokenizer, template)
    return ShieldGemma2Processor(
        image_processor=gemma3.image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        image_seq_length=GEMMA3_IMAGE_TOKENS,
    )


GUARD_FAMILIES: dict[str, TinyFamily] = {
    "llama_guard_3_vision": TinyFamily(
        MllamaForConditionalGeneration,
        _mllama_config,
        _mllama_processor,
        stop_tokens=("<|eot_id|>",),
        tokenizer="mllama",
    ),
    "llama_guard_4": TinyFamily(
        Llama4ForConditionalGeneration,
        _llama4_config,
        _llama4_processor,
        stop_tokens=("<|eot|>",),
        tokenizer="llama4",
    ),
    "llavaguard": TinyFamily(
        LlavaOnevisionForConditionalGeneration,
        _onevision_config,
        _onevision_processor,
        stop_tokens=("<|im_end|>",),
        tokenizer="llava_onevision",
    ),
    "shieldgemma2": TinyFamily(
        ShieldGemma2ForImageClassification,
        _shieldgemma2_config,
        _shieldgemma2_processor,
        stop_tokens=("<end_of_turn>",),
        tokenizer="gemma3",
        template="gemma3",
    ),
}
