"""An image's own file against a PNG re-encoding, in the API backends' request bodies.

    .venv/bin/python benchmarks/bench_image_bytes.py [--images 16] [--width 1024] [--height 768]

Writes seeded photo-like JPEGs (smooth colour gradients and blobs under sensor-like noise,
quality 90), then builds, for each image and each provider, the request body the backend sends:
as before this change (the image re-encoded as PNG, a request without its file) and now (the
JPEG file's own bytes). Prints the body sizes, the CPU time per image of building a body (the
encoding included; decoding the file is the same both ways and left out) and their ratios, and
how many images pass Anthropic's 5 MB per-image limit either way.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
from benchkit import machine_lines
from PIL import Image

from holisafe.core.records import GenerationSettings, ImageFile, Request
from holisafe.core.sample import decode_image
from holisafe.models.anthropic_api import AnthropicModel
from holisafe.models.api import ANTHROPIC_IMAGES, MB, encode_image
from holisafe.models.google_api import GoogleModel
from holisafe.models.openai_api import OpenAIModel

SETTINGS = GenerationSettings(max_new_tokens=512)
QUERY = "What is shown in this photo?"
UNREACHABLE = "http://127.0.0.1:9"  # bodies are only built, never sent


def photo_jpeg(seed: int, width: int, height: int) -> bytes:
    """A photo-like JPEG: gradients and soft blobs of colour under noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.zeros((height, width, 3))
    for channel in range(3):
        pixels[..., channel] = 255 * (rng.uniform(0.2, 0.8) + 0.3 * np.sin(rng.uniform(2, 9) * x))
        for _ in range(6):
            cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.03, 0.2)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
            pixels[..., channel] += rng.uniform(-120, 120) * blob
    pixels += rng.normal(0, 6, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def body_builders() -> dict[str, Callable[[Request], dict]]:
    openai_model = OpenAIModel("gpt-4o", api_key="unused", base_url=f"{UNREACHABLE}/v1")
    anthropic_model = AnthropicModel("claude", api_key="unused", base_url=UNREACHABLE)
    google_model = GoogleModel("gemini", api_key="unused", base_url=UNREACHABLE)
    return {
        "openai": lambda request: openai_model.chat_body(request, SETTINGS),
        "anthropic": lambda request: anthropic_model.message_params(request, SETTINGS),
        "google": lambda request: google_model.batch_request(request, SETTINGS),
    }


def measure(build: Callable[[Request], dict], requests: list[Request]) -> tuple[list[int], float]:
    """The body sizes in bytes and the median CPU seconds per body."""
    sizes, seconds = [], []
    for request in requests:
        start = time.process_time()
        body = json.dumps(build(request))
        seconds.append(time.process_time() - start)
        sizes.append(len(body.encode()))
    return sizes, statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    args = parser.parse_args()
    files = [photo_jpeg(seed, args.width, args.height) for seed in range(args.images)]
    images = [decode_image(data, f"{i}.jpg") for i, data in enumerate(files)]
    as_png = [Request(QUERY, image) for image in images]  # no file: re-encoded, as before
    as_file = [
        Request(QUERY, image, image_file=ImageFile(f"{i}.jpg", data))
        for i, (image, data) in enumerate(zip(images, files, strict=True))
    ]
    print("\n".join(machine_lines()))
    print(
        f"{args.images} seeded photo-like {args.width}x{args.height} JPEGs (quality 90), "
        f"median file {statistics.median(map(len, files)) / 1024:.0f} KiB"
    )
    print(f"{'':10} {'request body, median':>24} {'CPU per image, median':>25}")
    print(
        f"{'provider':10} {'PNG':>8} {'file':>7} {'ratio':>7} {'PNG':>9} {'file':>7} {'ratio':>7}"
    )
    for provider, build in body_builders().items():
        png_sizes, png_seconds = measure(build, as_png)
        file_sizes, file_seconds = measure(build, as_file)
        png_size, file_size = statistics.median(png_sizes), statistics.median(file_sizes)
        print(
            f"{provider:10} {png_size / MB:6.2f}MB {file_size / MB:5.2f}MB "
            f"{png_size / file_size:6.2f}x {png_seconds * 1000:7.1f}ms "
            f"{file_seconds * 1000:5.1f}ms {png_seconds / file_seconds:6.1f}x"
        )
    limit = ANTHROPIC_IMAGES.max_bytes
    over_as_png = sum(len(encode_image(image).base64) > limit for image in images)
    over_as_file = sum(-(-len(data) // 3) * 4 > limit for data in files)
    print(
        f"images over Anthropic's {limit / MB:g} MB per-image limit (in base64): as PNG "
        f"{over_as_png} of {args.images}, as the file {over_as_file} of {args.images}"
    )


if __name__ == "__main__":
    main()
