"""The web page of `holisafe serve` in a real headless browser: pick an image, ask, read the
answer and the safety bars.

Needs Debian's chromium and Playwright (see tests/browser.py). With
HOLISAFE_SCREENSHOT=docs/serve_screenshot.png the test also saves a screenshot there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from holisafe.core.records import GenerationSettings, Request
from holisafe.core.sample import decode_image
from holisafe.models.hf import HFModel
from holisafe.serve import create_app, running_server
from holisafe.synthetic.mini import generate_mini
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder
from tests.browser import chromium, expect
from tests.modelfixtures import no_network

QUESTION = "What is shown in this picture?"
MAX_TOKENS = 12
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    with no_network():
        build_tiny_model(root / "plain", "llava", seed=5)
        convert_folder(str(root / "plain"), str(root / "safe"), VGMSettings())
        return HFModel(f"hf/{root / 'safe'}", device="cpu")


@pytest.fixture(scope="module")
def server(model):
    with running_server(create_app(model)) as root:
        yield root


@pytest.fixture
def page():
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.set_default_timeout(TIMEOUT_MS)
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda error: page.console_errors.append(str(error)))
        yield page


def pictogram(tmp_path: Path) -> Path:
    """One image of the HoliSafe-Mini benchmark."""
    bench = generate_mini(tmp_path / "mini", bench_pairs=95, train_pairs=95).bench_dir
    return sorted((bench / "images").iterdir())[0]


def ask(page, root: str, image: Path) -> None:
    page.goto(root)
    expect(page.locator("#model")).to_have_text("model: safe")
    page.set_input_files("#image", str(image))
    page.fill("#question", QUESTION)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.click("#send")


def test_page_answers_a_question_about_an_image_and_draws_the_safety_bars(
    page, server, model, tmp_path
):
    image = pictogram(tmp_path)
    ask(page, server, image)
    rows = page.locator("#bars .bar-row")
    expect(rows).to_have_count(5)

    settings = GenerationSettings(max_new_tokens=MAX_TOKENS, temperature=0)
    decoded = decode_image(image.read_bytes(), image.name)
    expected = model.generate([Request(QUESTION, decoded)], settings)[0]
    assert page.text_content("#answer") == expected.text
    top = expected.safety.top(5)
    assert rows.locator(".bar-label").all_text_contents() == [
        label.replace("_", " ") for label, _ in top
    ]
    assert rows.locator(".bar-value").all_text_contents() == [f"{p:.3f}" for _, p in top]
    styles = [bar.get_attribute("style") for bar in rows.locator(".bar").all()]
    widths = [float(style.removeprefix("width: ").removesuffix("%;")) for style in styles]
    assert widths == pytest.approx([100 * p for _, p in top], abs=0.051)  # shown to 0.1 %
    verdict = "safe" if expected.safety.label == "safe" else "unsafe"
    assert page.text_content("#verdict").startswith(verdict)
    assert page.is_visible("#verdict-rule")
    assert "outscores “safe”" in page.text_content("#verdict-rule")
    assert page.is_visible("#preview") and not page.is_visible("#error")
    assert page.console_errors == []
    if screenshot := os.environ.get("HOLISAFE_SCREENSHOT"):
        page.screenshot(path=screenshot, full_page=True)


def test_page_shows_the_servers_error_for_a_file_that_is_no_image(page, server, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture")
    ask(page, server, fake)
    expect(page.locator("#error")).to_contain_text("not a readable image")
    assert not page.is_visible("#result")
    assert [e for e in page.console_errors if "400" not in e] == []
