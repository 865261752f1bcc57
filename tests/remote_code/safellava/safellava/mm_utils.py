"""Prompt and image preparation in the LLaVA code base's calling convention."""

import torch
from PIL import Image


def tokenizer_image_token(prompt, tokenizer, image_token_index, return_tensors=None):
    """Each text piece around `<image>` tokenized on its own, the image marked by its index."""
    pieces = [tokenizer(piece).input_ids for piece in prompt.split("<image>")]
    ids = list(pieces[0])
    for piece in pieces[1:]:
        ids += [image_token_index, *piece[1:]]  # later pieces lose their BOS
    return torch.tensor(ids, dtype=torch.long) if return_tensors == "pt" else ids


def expand2square(image, background):
    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def process_images(images, image_processor, model_config):
    if getattr(model_config, "image_aspect_ratio", None) == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        images = [expand2square(image, background) for image in images]
    return image_processor(images, return_tensors="pt")["pixel_values"]
