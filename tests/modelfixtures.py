"""Tiny model folders for the tests, built offline, and a guard that keeps the network shut."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from PIL import Image

from holisafe.synthetic.tiny import build_tiny_model

FAMILIES = ["llava", "qwen2_5_vl", "gemma3"]
# The image placeholder each family's processor expands to one token per image feature.
IMAGE_TOKENS = {"llava": "<image>", "qwen2_5_vl": "<|image_pad|>", "gemma3": "<image_soft_token>"}


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Hub offline mode on, and any connection beyond loopback refused."""
    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address) -> None:
        internet = sock.family in (socket.AF_INET, socket.AF_INET6)
        if internet and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test tried to reach {address!r}; tests stay offline")
        real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(socket.socket, "connect", loopback_only)
        yield


def tiny_model_dir(root: Path, family: str, seed: int = 0) -> Path:
    with no_network():
        return build_tiny_model(root / f"{family}-{seed}", family, seed=seed)


def picture(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    """An image with a colour gradient, so that different pictures give different features."""
    image = Image.new("RGB", (width, height), colour)
    for x in range(width):
        image.putpixel((x, x * height // width), (255 - colour[0], x % 256, colour[2]))
    return image
