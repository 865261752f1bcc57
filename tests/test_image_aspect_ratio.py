"""The memory bound holds for any image: processors resize by the short side, so an image whose
long side is over `MAX_ASPECT_RATIO` times its short side is refused before it is decoded, in
`serve`, `guard`, `guard-eval` and `eval` alike."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import holisafe
from holisafe.core.sample import MAX_ASPECT_RATIO, ImageError, check_image_size, decode_image
from holisafe.serve import ApiError, ServeLimits
from holisafe.serve.limits import read_image_url
from tests.modelfixtures import tiny_model_dir

# 16 M pixels, within the server's default per-image limit, yet 444,444 times as long as wide.
NARROW = (6, 2_666_666)
WIDE = (2_666_666, 6)


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def extreme_pngs() -> dict[tuple[int, int], bytes]:
    return {size: png_bytes(*size) for size in (NARROW, WIDE)}


@pytest.mark.parametrize("size", [NARROW, WIDE])
def test_an_extreme_aspect_ratio_is_refused_before_decoding_with_one_line(extreme_pngs, size):
    data = extreme_pngs[size]
    assert len(data) < 200 * 1024  # a tiny file
    with pytest.raises(
        ImageError, match=rf"image x\.png is {size[0]}x{size[1]}.*{MAX_ASPECT_RATIO}"
    ):
        decode_image(data, "x.png")


@pytest.mark.parametrize("size", [NARROW, WIDE])
def test_the_server_answers_413_naming_the_image_and_the_limit(extreme_pngs, size):
    url = "data:image/png;base64," + base64.b64encode(extreme_pngs[size]).decode()
    with pytest.raises(ApiError) as refused:
        read_image_url(url, "messages[0].content[0]", ServeLimits())
    assert refused.value.status == 413
    assert "messages[0].content[0]" in str(refused.value) and str(MAX_ASPECT_RATIO) in str(
        refused.value
    )


@given(st.integers(1, 4000), st.integers(1, 4000))
def test_an_image_is_refused_exactly_when_its_sides_are_too_far_apart(width, height):
    too_far_apart = max(width, height) > MAX_ASPECT_RATIO * min(width, height)
    try:
        check_image_size("x.png", width, height, max_pixels=16_000_000)
    except ImageError:
        assert too_far_apart
    else:
        assert not too_far_apart


# Serves a tiny LLaVA with the default limits, sends it each image, then answers the same images
# as `eval` does and judges them as `guard` does; prints what each said and how far the peak
# resident memory grew past what loading the model took.
MEASURE = """
import base64, resource, sys
from pathlib import Path
import httpx
from holisafe.core.records import GenerationSettings
import holisafe
from holisafe.core.sample import ImageRef, Sample
from holisafe.guards import GenerativeGuard, judge_files
from holisafe.models import ModelOptions, load_model
from holisafe.run.evaluate import _answer
from holisafe.serve import ServeLimits, ServeSettings, create_app, running_server

model_dir, *images = map(Path, sys.argv[1:])
model = load_model(f"hf/{model_dir}", ModelOptions(device="cpu", batch_size=1))
limits = ServeLimits()
print("bound", limits.memory_bound)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with running_server(create_app(model, ServeSettings(model_name="m", limits=limits))) as root:
    for path in images:
        url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "q"}]
        body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": content}]}
        reply = httpx.post(root + "/v1/chat/completions", json=body, timeout=600)
        print("serve", reply.status_code, reply.text.replace(chr(10), " "))
samples = [Sample(id=i, query="q", image=ImageRef(p.name, path=p)) for i, p in enumerate(images)]
for response in _answer(model, samples, GenerationSettings(max_new_tokens=2)):
    print("eval", response.error)
for path, verdict in judge_files(GenerativeGuard(model, "llavaguard", "q", 2), images):
    print("guard", verdict.error)
print("grown", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - loaded)
"""


def test_peak_memory_stays_within_the_printed_bound_for_extreme_aspect_ratios(
    tmp_path, extreme_pngs
):
    """The extreme images are refused everywhere; one at the ratio limit is answered."""
    at_the_limit = (6, 6 * MAX_ASPECT_RATIO)
    files = {**extreme_pngs, at_the_limit: png_bytes(*at_the_limit)}
    images = []
    for (width, height), data in files.items():
        images.append(tmp_path / f"{width}x{height}.png")
        images[-1].write_bytes(data)
    model_dir = tiny_model_dir(tmp_path, "llava")
    src = Path(holisafe.__file__).parents[1]  # this checkout's package, not another install's
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model_dir), *map(str, images)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    bound, grown = int(lines[0].removeprefix("bound ")), int(lines[-1].removeprefix("grown "))
    serve, answer, guard = (
        lines[1 + i * len(images) : 1 + (i + 1) * len(images)] for i in range(3)
    )
    refused = f"over {MAX_ASPECT_RATIO} times its short side"
    for i, (width, height) in enumerate(extreme_pngs):
        assert serve[i].startswith("serve 413") and f"is {width}x{height}:" in serve[i], serve[i]
        assert images[i].name in answer[i] and images[i].name in guard[i]
        for said in (serve[i], answer[i], guard[i]):
            assert refused in said, said
    assert serve[-1].startswith("serve 200") and answer[-1] == "eval None"
    assert refused not in guard[-1]
    assert grown < bound, f"peak memory grew by {grown:,} bytes, over the bound of {bound:,}"
