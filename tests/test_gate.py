"""Gating at the prefill (`--gate P`) on tiny Safe-VLMs of every family and head input: a gated
request decodes nothing, an ungated one decodes from the same prefill what it decodes without
the gate; eval stores the decision, the server says it, plain and streamed."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sqlite3
import sys

import httpx
import pytest
import torch

from holisafe import cli
from holisafe.core.records import GenerationSettings, ModelError, Request
from holisafe.models import ModelOptions, load_model
from holisafe.models.gating import DEFAULT_REFUSAL, GENERATE, REFUSAL_PROMPT, Gate
from holisafe.models.hf import HFModel
from holisafe.run.evaluate import evaluate
from holisafe.serve import ServeSettings, create_app, running_server
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import VGMSettings, convert_folder
from tests.datafixtures import CASES as BENCH_CASES
from tests.datafixtures import write_official
from tests.modelfixtures import no_network, picture

VARIANTS = {
    "meta_token": VGMSettings(),
    "image_mean": VGMSettings(head_input="image_mean"),
    "projector_mean": VGMSettings(head_input="projector_mean"),
    "vision": VGMSettings(meta_token_placement="vision"),
}
FAMILIES = ["llava", "qwen2_5_vl", "gemma3"]
CASES = [(f, v) for f in FAMILIES for v in VARIANTS if v != "vision"] + [("llava", "vision")]
IDS = [f"{f}-{v}" for f, v in CASES]
SETTINGS = GenerationSettings(max_new_tokens=6)
SHORT = GenerationSettings(max_new_tokens=4)
PICTURES = [
    picture(48, 40, (200, 30, 30)),
    picture(40, 48, (30, 200, 30)),
    picture(32, 32, (30, 30, 200)),
    picture(56, 40, (120, 120, 0)),
]
# different lengths, so that the batch is padded
QUERIES = ["What is in this picture?", "Hi", "Describe every object you can see in detail.", "Why?"]
REQUESTS = [Request(query=q, image=p) for q, p in zip(QUERIES, PICTURES, strict=True)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    with no_network():
        plain = {f: build_tiny_model(root / f, f, seed=1) for f in FAMILIES}
        for family, variant in CASES:
            convert_folder(str(plain[family]), str(root / f"{family}-{variant}"), VARIANTS[variant])
    return {"root": root, **plain}


@pytest.fixture(scope="module")
def models(folders):
    loaded = {}

    def load(family: str, variant: str) -> HFModel:
        if (family, variant) not in loaded:
            path = folders["root"] / f"{family}-{variant}"
            loaded[family, variant] = HFModel(f"hf/{path}", device="cpu", batch_size=8)
        return loaded[family, variant]

    return load


@contextlib.contextmanager
def head(model: HFModel, *, unsafe: bool | None = None, spread: float | None = None):
    """The head made to say what a test needs, put back afterwards: `unsafe` True/False makes
    every image score (nearly) 1 or 0; `spread` scales its last layer's weights, so that
    different images score far apart."""
    last = model.model.img_safety_head.mlp[-1]
    saved = {k: v.clone() for k, v in last.state_dict().items()}
    safe = model.safety_categories.index("safe")
    with torch.no_grad():
        if unsafe is not None:
            last.weight.zero_()
            last.bias.zero_()
            last.bias[safe] = -20.0 if unsafe else 20.0
        if spread is not None:
            last.weight *= spread
    try:
        yield
    finally:
        last.load_state_dict(saved)


@contextlib.contextmanager
def decoder_calls(model: HFModel):
    """(batch rows, tokens) of every forward pass of the language model while the block runs."""
    calls: list[tuple[int, int]] = []
    language_model = model.model.model.language_model

    def count(_module, _args, kwargs):
        calls.append(tuple(kwargs["inputs_embeds"].shape[:2]))

    hook = language_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield calls
    finally:
        hook.remove()


@contextlib.contextmanager
def gated(model: HFModel, gate: Gate):
    model.gate = gate
    try:
        yield
    finally:
        model.gate = None


@pytest.mark.parametrize(("family", "variant"), CASES, ids=IDS)
def test_a_gated_request_decodes_no_answer_tokens(models, family, variant):
    model = models(family, variant)
    with head(model, unsafe=True):
        with decoder_calls(model) as ungated_calls:
            ungated = model.generate(REQUESTS, SETTINGS)
        with gated(model, Gate(0.5)), decoder_calls(model) as gated_calls:
            responses = model.generate(REQUESTS, SETTINGS)
    assert len(ungated_calls) > 1  # without the gate the same batch decodes
    assert [rows for rows, _ in gated_calls] == [len(REQUESTS)]  # the prefill, and nothing else
    assert [r.text for r in responses] == [DEFAULT_REFUSAL] * len(REQUESTS)
    assert all(r.gated and not r.truncated for r in responses)
    for with_gate, without in zip(responses, ungated, strict=True):
        assert with_gate.safety.unsafe == pytest.approx(without.safety.unsafe, abs=1e-6)
        assert with_gate.safety.unsafe >= 0.5


@pytest.mark.parametrize(("family", "variant"), CASES, ids=IDS)
def test_ungated_rows_of_a_mixed_batch_decode_what_they_decode_without_the_gate(
    models, family, variant
):
    model = models(family, variant)
    with head(model, spread=300.0):
        ungated = model.generate(REQUESTS, SETTINGS)
        scores = sorted(r.safety.unsafe for r in ungated)
        assert scores[2] - scores[1] > 1e-4, scores  # the head tells the images apart
        gate = Gate((scores[1] + scores[2]) / 2)  # two rows gated, two decoded
        with gated(model, gate), decoder_calls(model) as calls:
            responses = model.generate(REQUESTS, SETTINGS)
    kept = [i for i, r in enumerate(ungated) if r.safety.unsafe < gate.threshold]
    assert len(kept) == 2
    assert calls[0][0] == len(REQUESTS)  # one prefill of the whole batch
    assert len(calls) > 1 and all(rows == len(kept) for rows, _ in calls[1:])
    assert all(tokens == 1 for _, tokens in calls[1:])  # no second prefill
    for i, (response, before) in enumerate(zip(responses, ungated, strict=True)):
        assert response.safety.unsafe == pytest.approx(before.safety.unsafe, abs=1e-6)
        if i in kept:
            assert not response.gated
            assert (response.text, response.truncated) == (before.text, before.truncated)
        else:
            assert response.gated and response.text == DEFAULT_REFUSAL


def test_requests_without_an_image_are_never_gated(models):
    model = models("llava", "meta_token")
    text_only = [Request(query="Hello there"), Request(query="What is two and two?")]
    plain = model.generate(text_only, SETTINGS)
    with head(model, unsafe=True), gated(model, Gate(0.01)):
        responses = model.generate([*text_only, REQUESTS[0]], SETTINGS)
    assert [r.text for r in responses[:2]] == [r.text for r in plain]
    assert [(r.gated, r.safety) for r in responses[:2]] == [(False, None), (False, None)]
    assert responses[2].gated


def test_a_gate_of_one_closes_only_on_a_certain_score_and_text_refusals_are_kept(models):
    model = models("llava", "meta_token")
    with head(model, unsafe=False), gated(model, Gate(1.0)):
        assert not any(r.gated for r in model.generate(REQUESTS[:2], SETTINGS))
    with head(model, unsafe=True), gated(model, Gate(0.3, "Not this one.")):
        assert [r.text for r in model.generate(REQUESTS[:2], SETTINGS)] == ["Not this one."] * 2


def test_a_generated_refusal_answers_the_refusal_prompt_without_the_image(models):
    model = models("qwen2_5_vl", "meta_token")
    prompts = [Request(query=REFUSAL_PROMPT.format(query=r.query)) for r in REQUESTS[:2]]
    expected = model.generate(prompts, SETTINGS)
    with head(model, unsafe=True), gated(model, Gate(0.5, GENERATE)):
        responses = model.generate(REQUESTS[:2], SETTINGS)
    assert [r.text for r in responses] == [r.text for r in expected]
    assert all(r.gated and r.safety is not None for r in responses)


@pytest.mark.parametrize("threshold", [0.0, -0.2, 1.5, float("nan")])
def test_a_gate_out_of_range_is_refused(threshold):
    with pytest.raises(ModelError, match="--gate must be above 0 and at most 1"):
        Gate(threshold)


def test_gating_needs_an_hf_safe_vlm(folders):
    with pytest.raises(ModelError, match="--gate-refusal needs --gate"):
        Gate.of(None, "No.")
    with pytest.raises(ModelError, match="has no safety head"):
        HFModel(f"hf/{folders['llava']}", device="cpu", gate=Gate(0.5))
    with pytest.raises(ModelError, match="not an hf/ model"):
        load_model("openai/gpt-4o", ModelOptions(gate=0.5))


@pytest.mark.parametrize(
    ("command", "model", "gate", "words"),
    [
        ("serve", "plain", "0.5", "--gate needs a Safe-VLM"),
        ("serve", "plain", "1.5", "--gate must be above 0 and at most 1"),
        ("eval", "plain", "0", "--gate must be above 0 and at most 1"),
        ("eval", "openai/gpt-4o", "0.5", "--gate applies to hf/ Safe-VLMs"),
    ],
)
def test_the_cli_says_what_is_wrong_with_a_gate_in_one_line(
    folders, tmp_path, monkeypatch, capsys, command, model, gate, words
):
    model = f"hf/{folders['llava']}" if model == "plain" else model
    args = ["holisafe", command, "--model", model, "--device", "cpu"]
    if command == "eval":
        bench = write_official(tmp_path / "bench")
        args += ["--bench", str(bench), "--store", str(tmp_path / "s.db")]
    else:
        args += ["--port", "0"]
    monkeypatch.setattr(sys, "argv", [*args, "--gate", gate])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and words in error
    assert len(error.strip().splitlines()) == 1, error


def test_eval_stores_the_gate_and_each_score(folders, tmp_path):
    path = folders["root"] / "llava-meta_token"
    model = HFModel(f"hf/{path}", device="cpu", gate=Gate(0.5))
    bench, store = write_official(tmp_path / "bench"), tmp_path / "runs.db"
    with head(model, unsafe=True):
        outcome = evaluate(f"hf/{path}", bench, store, settings=SHORT, model=model)
    assert outcome.generated == len(BENCH_CASES)
    with sqlite3.connect(store) as db:
        settings = json.loads(db.execute("SELECT settings FROM runs").fetchone()[0])
        rows = db.execute("SELECT text, extra FROM responses").fetchall()
    assert settings == {**SHORT.as_dict(), "gate": 0.5, "gate_refusal": DEFAULT_REFUSAL}
    for text, extra in rows:
        stored = json.loads(extra)
        assert text == DEFAULT_REFUSAL and stored["gated"] is True
        assert stored["unsafe_score"] == pytest.approx(1 - stored["safety"]["probs"]["safe"])
        assert stored["unsafe_score"] >= 0.5
    # an ungated run of the same model is another run: its answers are not the gated ones
    model.gate = None
    plain = evaluate(f"hf/{path}", bench, store, settings=SHORT, model=model)
    assert plain.run.id != outcome.run.id and plain.reused == 0
    with sqlite3.connect(store) as db:
        query = "SELECT extra FROM responses WHERE run_id = ?"
        extras = [json.loads(e) for (e,) in db.execute(query, (plain.run.id,))]
    assert extras and not any(e["gated"] for e in extras)
    assert all(0 <= e["unsafe_score"] <= 1 for e in extras)


@pytest.fixture(scope="module")
def served(folders):
    """A gating server whose head scores the first of two pictures unsafe, the second safe."""
    model = HFModel(f"hf/{folders['root'] / 'llava-meta_token'}", device="cpu", gate=Gate(0.5))
    with head(model, spread=300.0):
        scores = [r.safety.unsafe for r in model.generate(REQUESTS, SETTINGS)]
        unsafe, safe = max(range(4), key=scores.__getitem__), min(range(4), key=scores.__getitem__)
        model.gate = Gate((scores[unsafe] + scores[safe]) / 2)
        with running_server(create_app(model, ServeSettings(model_name="safe"))) as root:
            yield root, model, PICTURES[unsafe], PICTURES[safe]


def chat(root: str, image, stream: bool = False) -> httpx.Response:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hm?"}]
    body = {"model": "safe", "messages": [{"role": "user", "content": content}], "stream": stream}
    return httpx.post(f"{root}/v1/chat/completions", json=body | {"temperature": 0}, timeout=60)


def test_the_server_says_it_gated_and_gives_the_score(served):
    root, model, unsafe, safe = served
    refused, answered = chat(root, unsafe).json(), chat(root, safe).json()
    threshold = model.gate.threshold
    assert refused["choices"][0]["message"]["content"] == DEFAULT_REFUSAL
    assert refused["choices"][0]["finish_reason"] == "content_filter"
    assert refused["holisafe"]["gated"] is True and refused["holisafe"]["gate"] == threshold
    assert refused["holisafe"]["unsafe_score"] == pytest.approx(refused["safety"]["unsafe"])
    assert refused["holisafe"]["unsafe_score"] >= threshold
    assert answered["holisafe"]["gated"] is False
    assert answered["holisafe"]["unsafe_score"] < threshold
    assert answered["choices"][0]["finish_reason"] in ("stop", "length")
    assert httpx.get(f"{root}/health").json()["gate"] == threshold


def test_the_streamed_reply_says_it_too(served):
    root, _, unsafe, safe = served
    for image, was_gated in [(unsafe, True), (safe, False)]:
        reply = chat(root, image, stream=True)
        events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        whole = chat(root, image).json()
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == whole["choices"][0]["message"]["content"]
        assert chunks[-1]["holisafe"] == whole["holisafe"]
        assert chunks[-1]["holisafe"]["gated"] is was_gated
        assert "holisafe" not in chunks[0]


def test_a_server_that_does_not_gate_adds_nothing(folders):
    model = HFModel(f"hf/{folders['root'] / 'llava-meta_token'}", device="cpu")
    with running_server(create_app(model, ServeSettings(model_name="safe"))) as root:
        reply = chat(root, PICTURES[0]).json()
        assert "holisafe" not in reply and reply["safety"] is not None
        assert httpx.get(f"{root}/health").json()["gate"] is None
