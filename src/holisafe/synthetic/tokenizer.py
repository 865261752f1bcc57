"""Tokenizers for the tiny models, trained offline on English text that the package ships.

Each family gets a BPE tokenizer of the fast tokenizer class its real checkpoints use, with the
family's special tokens. No text is unknown to them: Qwen2's tokenizer is byte-level, and the
LLaMA and Gemma tokenizers fall back to the byte tokens `<0x00>` … `<0xFF>` of their vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import GemmaTokenizer, LlamaTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

from holisafe.core import taxonomy

VOCAB_SIZE = 2048
BYTE_TOKENS = tuple(f"<0x{byte:02X}>" for byte in range(256))
PRINTABLE_ASCII = [chr(code) for code in range(33, 127)]
_BASE_TOKEN_NAMES = ("unk_token", "bos_token", "eos_token", "pad_token", "mask_token")


@dataclass(frozen=True)
class TokenizerRecipe:
    """One family's tokenizer: its class, its special tokens and where their ids go.

    `leading_specials` take the lowest ids (then the byte tokens, if any), `trailing_specials`
    the highest, as in the real vocabularies. `named_tokens` become tokenizer attributes
    (`bos_token`, `image_token`, ...); `init_kwargs` go to the class as they are.
    """

    tokenizer_class: type[PreTrainedTokenizerBase]
    leading_specials: tuple[str, ...] = ()
    trailing_specials: tuple[str, ...] = ()
    named_tokens: dict[str, str] = field(default_factory=dict)
    init_kwargs: dict[str, object] = field(default_factory=dict)

    @property
    def byte_fallback(self) -> bool:
        return self.tokenizer_class is not Qwen2Tokenizer

    @property
    def leading_tokens(self) -> tuple[str, ...]:
        return self.leading_specials + (BYTE_TOKENS if self.byte_fallback else ())


RECIPES: dict[str, TokenizerRecipe] = {
    "llava": TokenizerRecipe(
        LlamaTokenizer,
        leading_specials=("<unk>", "<s>", "</s>"),
        trailing_specials=("<image>", "<pad>"),
        named_tokens={
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "image_token": "<image>",
        },
        init_kwargs={"add_bos_token": True},
    ),
    "qwen2_5_vl": TokenizerRecipe(
        Qwen2Tokenizer,
        trailing_specials=(
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
        named_tokens={
            "unk_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    ),
    "gemma3": TokenizerRecipe(
        GemmaTokenizer,
        leading_specials=(
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<mask>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ),
        named_tokens={
            "pad_token": "<pad>",
            "eos_token": "<eos>",
            "bos_token": "<bos>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        init_kwargs={"add_bos_token": True},
    ),
    # Llama 3's byte-level vocabulary with its special tokens (Llama Guard 3 Vision).
    "mllama": TokenizerRecipe(
        Qwen2Tokenizer,
        trailing_specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
            "<|image|>",
        ),
        named_tokens={
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": "<|finetune_right_pad_id|>",
            "unk_token": "<|end_of_text|>",
            "image_token": "<|image|>",
        },
    ),
    # Llama 4's special tokens (Llama Guard 4).
    "llama4": TokenizerRecipe(
        Qwen2Tokenizer,
        trailing_specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad|>",
            "<|header_start|>",
            "<|header_end|>",
            "<|eot|>",
            "<|image_start|>",
            "<|image_end|>",
            "<|image|>",
            "<|patch|>",
            "<|tile_x_separator|>",
            "<|tile_y_separator|>",
        ),
        named_tokens={
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot|>",
            "pad_token": "<|finetune_right_pad|>",
            "unk_token": "<|end_of_text|>",
        },
    ),
    # LLaVA-OneVision on Qwen2 (LlavaGuard v1.2 OV).
    "llava_onevision": TokenizerRecipe(
        Qwen2Tokenizer,
        trailing_specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        named_tokens={
            "unk_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "image_token": "<image>",
            "video_token": "<video>",
        },
    ),
}


def build_tokenizer(family: str) -> PreTrainedTokenizerBase:
    """Train the family's tokenizer on the shipped corpus; every call gives the same tokenizer."""
    recipe = RECIPES[family]
    vocab, merges = _train_bpe(recipe)
    base = {k: v for k, v in recipe.named_tokens.items() if k in _BASE_TOKEN_NAMES}
    model_specific = {k: v for k, v in recipe.named_tokens.items() if k not in _BASE_TOKEN_NAMES}
    tokenizer = recipe.tokenizer_class(
        vocab=vocab,
        merges=merges,
        **base,
        extra_special_tokens=model_specific or None,
        **recipe.init_kwargs,
    )
    specials = recipe.leading_specials + recipe.trailing_specials
    tokenizer.add_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    return tokenizer


def corpus_lines() -> Iterator[str]:
    """The training text: the shipped English sentences, the taxonomy's names, refusal phrases."""
    resources = files("holisafe.resources")
    yield from resources.joinpath("tiny").joinpath("corpus.txt").read_text("utf-8").splitlines()
    for name in (*taxonomy.CATEGORIES, *taxonomy.SUBCATEGORIES, *taxonomy.IMAGE_SAFETY_LABELS):
        yield name
        yield name.replace("_", " ")
    phrases = json.loads(resources.joinpath("refusal_phrases.json").read_text(encoding="utf-8"))
    yield from phrases["starts_with"]
    yield from phrases["contains"]


def _train_bpe(recipe: TokenizerRecipe) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn the merges. Ids: leading tokens, alphabet and merges, trailing specials."""
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(recipe.trailing_specials),
        min_frequency=2,
        special_tokens=list(recipe.leading_tokens),
        initial_alphabet=_initial_alphabet(recipe),
        show_progress=False,
    )
    tokenizer = _training_tokenizer(recipe)
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    for token in recipe.trailing_specials:
        vocab[token] = len(vocab)
    return vocab, [tuple(pair) for pair in model["merges"]]


def _initial_alphabet(recipe: TokenizerRecipe) -> list[str]:
    """Characters that are tokens even when the corpus lacks them."""
    return PRINTABLE_ASCII if recipe.byte_fallback else pre_tokenizers.ByteLevel.alphabet()


def _training_tokenizer(recipe: TokenizerRecipe) -> Tokenizer:
    """A BPE tokenizer that splits text into words the way the family's class does.

    Qwen2's class splits words itself, so its own pipeline is used. The LLaMA and Gemma classes
    encode a text as one piece; training on words split at each "▁" (space) keeps merges inside
    words, and such merges encode a whole text as they encode its words.
    """
    pipeline = recipe.tokenizer_class().backend_tokenizer
    tokenizer = Tokenizer(models.BPE(byte_fallback=recipe.byte_fallback))
    tokenizer.normalizer = pipeline.normalizer
    if not recipe.byte_fallback:
        tokenizer.pre_tokenizer = pipeline.pre_tokenizer
    elif recipe.tokenizer_class is GemmaTokenizer:
        tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    return tokenizer
