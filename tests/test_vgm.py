"""The visual guard module on tiny models of the three real families: every head input, and both
placements of the meta token (the vision placement on LLaVA)."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoProcessor
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core.taxonomy import IMAGE_SAFETY_LABELS
from holisafe.models import ModelError, ModelOptions, load_model
from holisafe.synthetic.tiny import build_tiny_model
from holisafe.vgm import (
    VGMError,
    VGMSettings,
    add_meta_tokens,
    attach_visual_guard,
    load_safe_vlm,
)

FAMILIES = ["llava", "qwen2_5_vl", "gemma3"]
# The module variants, by name: each head input, and the meta token's vision placement.
VARIANTS = {
    "meta_token": VGMSettings(),
    "image_mean": VGMSettings(head_input="image_mean"),
    "projector_mean": VGMSettings(head_input="projector_mean"),
    "vision": VGMSettings(meta_token_placement="vision"),
}
CASES = [(f, v) for f in FAMILIES for v in VARIANTS if v != "vision"] + [("llava", "vision")]
QUERIES = ["What is in this picture?", "Hi", "Describe every object you can see in detail."]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(root / family, family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="module")
def safe_models(tiny_dirs):
    """(model, processor) per (family, variant), built once for the module."""
    built = {}
    for family, variant in CASES:
        processor = AutoProcessor.from_pretrained(tiny_dirs[family])
        processor.tokenizer.padding_side = "left"
        torch.manual_seed(0)
        model = attach_visual_guard(str(tiny_dirs[family]), VARIANTS[variant], processor)
        built[family, variant] = (model.eval(), processor)
    return built


def images(n):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    return [Image.new("RGB", (48, 40), colours[i % 3]) for i in range(n)]


def encode(model, processor, queries, pictures):
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        for q in queries
    ]
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    batch = processor(text=texts, images=[[p] for p in pictures], return_tensors="pt", padding=True)
    return model.prepare_inputs(batch, processor.tokenizer)


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_forward_gives_probabilities_and_a_joint_loss(safe_models, family, variant):
    model, processor = safe_models[family, variant]
    batch = encode(model, processor, QUERIES, images(3))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    safety_labels = torch.tensor([3, -100, 0])
    model.train()
    output = model(**batch, labels=labels, safety_labels=safety_labels)
    model.eval()
    probs = output.img_safety_probs
    assert probs.shape == (3, len(IMAGE_SAFETY_LABELS))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    expected_safety = torch.nn.functional.cross_entropy(
        output.img_safety_logits[[0, 2]].float(), torch.tensor([3, 0])
    )
    torch.testing.assert_close(output.safety_loss, expected_safety)
    torch.testing.assert_close(
        output.loss, output.lm_loss + model.vgm.loss_lambda * expected_safety
    )
    model.zero_grad()
    output.loss.backward()
    head_grad = model.img_safety_head.mlp[0].weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    decoder_grads = [
        p.grad for n, p in model.named_parameters() if "layers.0" in n and "language_model" in n
    ]
    assert any(g is not None and g.abs().sum() > 0 for g in decoder_grads)
    if model.vgm.uses_meta_token:
        # the llm placement learns the token's embedding row; the vision placement replaces
        # that row's input with the projected vision-side token, which learns instead
        row = model.get_input_embeddings().weight.grad[model.vgm.meta_token_id]
        vision_side = model.vision_meta_token is not None
        assert (row.abs().sum() > 0) != vision_side
        if vision_side:
            assert model.vision_meta_token.embedding.grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_meta_token_sits_right_after_each_image(safe_models, family, variant):
    model, processor = safe_models[family, variant]
    batch = encode(model, processor, QUERIES[:2], images(2))
    ids = batch["input_ids"]
    meta = model.vgm.meta_token_id
    if not model.vgm.uses_meta_token:
        assert meta is None
        return
    anchor = model.family.anchor_token_id(model.config)
    for row in ids.tolist():
        assert row.count(meta) == 1
        at = row.index(meta)
        assert row[at - 1] == anchor and row[at + 1] != anchor
    assert (batch["attention_mask"][ids == meta] == 1).all()


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_batched_equals_single_and_generation_carries_the_prediction(safe_models, family, variant):
    model, processor = safe_models[family, variant]
    pictures = images(3)
    batch = encode(model, processor, QUERIES, pictures)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=6, do_sample=False, return_dict_in_generate=True
        )
    assert out.img_safety_probs.shape == (3, len(IMAGE_SAFETY_LABELS))
    width = batch["input_ids"].shape[1]
    for i, query in enumerate(QUERIES):
        single = encode(model, processor, [query], [pictures[i]])
        with torch.no_grad():
            alone = model.generate(
                **single, max_new_tokens=6, do_sample=False, return_dict_in_generate=True
            )
        assert (
            out.sequences[i, width:].tolist()
            == alone.sequences[0, single["input_ids"].shape[1] :].tolist()
        )
        torch.testing.assert_close(
            out.img_safety_probs[i], alone.img_safety_probs[0], atol=1e-5, rtol=1e-4
        )
        if model.vgm.meta_token_id is not None:
            assert model.vgm.meta_token_id not in out.sequences[i, width:].tolist()


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_save_and_load_round_trip_bit_exactly(safe_models, family, variant, tmp_path):
    model, processor = safe_models[family, variant]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = load_safe_vlm(str(tmp_path)).eval()
    assert again.vgm == model.vgm
    assert type(again) is type(model)
    original, loaded = model.state_dict(), again.state_dict()
    assert original.keys() == loaded.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, loaded[name]), name
    processor_again = AutoProcessor.from_pretrained(tmp_path)
    batch = encode(again, processor_again, QUERIES[:1], images(1))
    with torch.no_grad():
        torch.testing.assert_close(
            again(**batch).img_safety_probs, model(**batch).img_safety_probs, atol=0, rtol=0
        )


def released_checkpoint(source, tmp_path):
    """A checkpoint written from the published facts: base weights plus `img_safety_head.mlp.0/3`
    and the config fields, none of this project's. Returns the folder and the head's weights."""
    released = tmp_path / "released"
    released.mkdir()
    for item in source.iterdir():
        (released / item.name).write_bytes(item.read_bytes())
    config = json.loads((source / "config.json").read_text())
    hidden = AutoConfig.from_pretrained(source).get_text_config().hidden_size
    config |= {
        "safety_categories": list(IMAGE_SAFETY_LABELS),
        "num_safety_categories": 20,
        "safety_head_hidden_scale": 0.5,
        "safety_num_hidden_layers": 1,
        "safety_loss_lambda": 1.0,
        "auto_map": {"AutoModelForImageTextToText": "modeling_safe.SafeModel"},
    }
    (released / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(7)
    head = {
        "img_safety_head.mlp.0.weight": torch.randn(hidden // 2, hidden, generator=generator),
        "img_safety_head.mlp.0.bias": torch.randn(hidden // 2, generator=generator),
        "img_safety_head.mlp.3.weight": torch.randn(20, hidden // 2, generator=generator),
        "img_safety_head.mlp.3.bias": torch.randn(20, generator=generator),
    }
    weights = load_file(released / "model.safetensors") | head
    save_file(weights, released / "model.safetensors", metadata={"format": "pt"})
    return released, head


def released_head(head, pooled):
    """The format's definition, by hand: softmax(W3 · gelu(W0 · pooled + b0) + b3)."""
    inner = torch.nn.functional.gelu(
        pooled @ head["img_safety_head.mlp.0.weight"].T + head["img_safety_head.mlp.0.bias"]
    )
    return (
        inner @ head["img_safety_head.mlp.3.weight"].T + head["img_safety_head.mlp.3.bias"]
    ).softmax(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_released_checkpoint_format_loads_without_remote_code(tiny_dirs, family, tmp_path):
    """No head input recorded: the head reads the mean final state over the image tokens."""
    released, head = released_checkpoint(tiny_dirs[family], tmp_path)
    model = load_safe_vlm(str(released)).eval()
    assert model.vgm.head_input == "image_mean"
    processor = AutoProcessor.from_pretrained(released)
    processor.tokenizer.padding_side = "left"
    batch = encode(model, processor, QUERIES[:2], images(2))
    with torch.no_grad():
        probs = model(**batch).img_safety_probs
        hidden_states = model(**batch, do_safety=False, output_hidden_states=True).hidden_states[-1]
    mask = (batch["input_ids"] == model.config.image_token_id).float()
    pooled = (mask.unsqueeze(-1) * hidden_states).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(probs, released_head(head, pooled), atol=1e-5, rtol=1e-4)


def test_a_released_head_on_other_states_loads_as_asked(tiny_dirs, tmp_path):
    """A checkpoint that records no head input, loaded as reading the projector's output: the
    head gets the mean of the projected image features."""
    released, head = released_checkpoint(tiny_dirs["llava"], tmp_path)
    model = load_safe_vlm(str(released), head_input="projector_mean").eval()
    assert model.vgm.head_input == "projector_mean"
    processor = AutoProcessor.from_pretrained(released)
    processor.tokenizer.padding_side = "left"
    batch = encode(model, processor, QUERIES[:2], images(2))
    with torch.no_grad():
        probs = model(**batch).img_safety_probs
        features = model.model.get_image_features(batch["pixel_values"]).pooler_output
    pooled = torch.stack([f.mean(0) for f in features])
    torch.testing.assert_close(probs, released_head(head, pooled), atol=1e-5, rtol=1e-4)
    # saved, it records what it reads
    model.save_pretrained(tmp_path / "saved")
    assert load_safe_vlm(str(tmp_path / "saved")).vgm.head_input == "projector_mean"


def test_asking_for_another_head_input_than_recorded_is_an_error(safe_models, tmp_path):
    model, _ = safe_models["qwen2_5_vl", "image_mean"]
    model.save_pretrained(tmp_path)
    assert load_safe_vlm(str(tmp_path), head_input="image_mean").vgm.head_input == "image_mean"
    with pytest.raises(VGMError, match="records that its safety head reads 'image_mean'"):
        load_safe_vlm(str(tmp_path), head_input="projector_mean")


@pytest.mark.parametrize(
    ("variant", "pooling"), [("meta_token", "meta_token"), ("image_mean", "mean")]
)
def test_checkpoints_from_before_the_head_input_field_load_as_before(
    safe_models, variant, pooling, tmp_path
):
    """Earlier checkpoints recorded the --vgm mode as `safety_pooling`."""
    model, processor = safe_models["gemma3", variant]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["safety_head_input"], config["safety_meta_token_placement"]
    (tmp_path / "config.json").write_text(json.dumps(config | {"safety_pooling": pooling}))
    again = load_safe_vlm(str(tmp_path)).eval()
    assert again.vgm == model.vgm
    batch = encode(again, processor, QUERIES[:1], images(1))
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).img_safety_probs, model(**batch).img_safety_probs)
    with pytest.raises(VGMError, match="records"):
        load_safe_vlm(str(tmp_path), head_input="projector_mean")


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_generation_with_the_kv_cache_equals_generation_without(safe_models, family, variant):
    model, processor = safe_models[family, variant]
    batch = encode(model, processor, QUERIES[:2], images(2))
    with torch.no_grad():
        cached, uncached = (
            model.generate(
                **batch,
                max_new_tokens=6,
                do_sample=False,
                use_cache=use_cache,
                return_dict_in_generate=True,
            )
            for use_cache in (True, False)
        )
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.img_safety_probs, uncached.img_safety_probs)


def test_the_vision_side_meta_token_passes_through_encoder_and_projector(safe_models):
    """One more vision feature per image, right after the patches; the patches attend to it in
    the encoder; its projection is the language model's input at the meta token's position."""
    model, processor = safe_models["llava", "vision"]
    batch = encode(model, processor, QUERIES[:2], images(2))
    patches = (batch["input_ids"][0] == model.config.image_token_id).sum().item()
    encoder = model.model

    def features():
        with torch.no_grad():
            return torch.stack(encoder.get_image_features(batch["pixel_values"]).pooler_output)

    before = features()
    assert before.shape == (2, patches + 1, model.config.text_config.hidden_size)
    inputs = []
    hook = encoder.language_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: inputs.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    meta = batch["input_ids"] == model.vgm.meta_token_id
    torch.testing.assert_close(inputs[0][meta], before[:, -1])
    token = model.vision_meta_token.embedding
    saved = token.detach().clone()
    try:
        with torch.no_grad():
            # not a constant shift: the encoder's first layer norm would remove it
            token.add_(torch.randn(token.shape, generator=torch.Generator().manual_seed(0)))
        after = features()
    finally:
        with torch.no_grad():
            token.copy_(saved)
    assert not torch.allclose(after[:, -1], before[:, -1])
    assert not torch.allclose(after[:, :-1], before[:, :-1])  # patches attend to the token


def test_gradients_reach_the_vision_side_token_through_a_frozen_encoder(safe_models):
    model, processor = safe_models["llava", "vision"]
    batch = encode(model, processor, QUERIES[:2], images(2))
    vision = list(model.model.vision_tower.parameters())
    for parameter in vision:
        parameter.requires_grad_(False)
    try:
        output = model(**batch, safety_labels=torch.tensor([4, 0]))
        model.zero_grad()
        output.safety_loss.backward()
        assert model.vision_meta_token.embedding.grad.abs().sum() > 0
        assert all(p.grad is None for p in vision)
    finally:
        for parameter in vision:
            parameter.requires_grad_(True)
        model.zero_grad()


def test_the_vision_placement_refuses_unprepared_inputs_and_other_families(safe_models, tiny_dirs):
    model, processor = safe_models["llava", "vision"]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
            add_generation_prompt=True,
        )
    ]
    raw = processor(text=texts, images=[images(1)], return_tensors="pt")
    with pytest.raises(VGMError, match="1 image\\(s\\) but 0 safety meta token"):
        model(**raw)
    processor = AutoProcessor.from_pretrained(tiny_dirs["qwen2_5_vl"])
    vocabulary = len(processor.tokenizer)
    with pytest.raises(VGMError, match="built for LLaVA with a CLIP vision tower"):
        attach_visual_guard(str(tiny_dirs["qwen2_5_vl"]), VARIANTS["vision"], processor)
    assert len(processor.tokenizer) == vocabulary


def test_meta_token_pooling_refuses_inputs_without_the_token(safe_models):
    model, processor = safe_models["llava", "meta_token"]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
            add_generation_prompt=True,
        )
    ]
    raw = processor(text=texts, images=[images(1)], return_tensors="pt")
    with pytest.raises(VGMError, match="no safety meta token"):
        model(**raw)


def test_add_meta_tokens_repads_rows_and_masks_labels():
    anchor, meta, pad = 5, 9, 0
    batch = {
        "input_ids": torch.tensor([[0, 0, 1, 5, 5, 2], [1, 5, 3, 5, 5, 2], [0, 0, 0, 1, 2, 3]]),
        "attention_mask": torch.tensor(
            [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
        ),
        "labels": torch.tensor(
            [[-100, -100, 1, 5, 5, 2], [1, 5, 3, 5, 5, 2], [-100] * 3 + [1, 2, 3]]
        ),
    }
    out = add_meta_tokens(batch, meta_token_id=meta, anchor_token_id=anchor, pad_token_id=pad)
    assert out["input_ids"].tolist() == [
        [0, 0, 0, 1, 5, 5, 9, 2],
        [1, 5, 9, 3, 5, 5, 9, 2],
        [0, 0, 0, 0, 0, 1, 2, 3],
    ]
    assert out["attention_mask"].tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 1, 1, 1],
    ]
    assert out["labels"][1].tolist() == [1, 5, -100, 3, 5, 5, -100, 2]
    right = add_meta_tokens(
        {"input_ids": torch.tensor([[1, 5, 2], [1, 2, 0]])},
        meta_token_id=meta,
        anchor_token_id=anchor,
        pad_token_id=pad,
        padding_side="right",
    )
    assert right["input_ids"].tolist() == [[1, 5, 9, 2], [1, 2, 0, 0]]


def test_settings_are_checked(safe_models, tmp_path):
    with pytest.raises(VGMError, match="unknown safety head input 'max'"):
        VGMSettings(head_input="max")
    with pytest.raises(VGMError, match="unknown meta token placement"):
        VGMSettings(meta_token_placement="encoder")
    with pytest.raises(VGMError, match="image_mean head input has no meta token"):
        VGMSettings(head_input="image_mean", meta_token_placement="vision")
    model, processor = safe_models["llava", "image_mean"]
    model.save_pretrained(tmp_path)
    with pytest.raises(VGMError, match="already has a visual guard module"):
        attach_visual_guard(str(tmp_path), VGMSettings(), processor)


def test_model_tiny_writes_either_placement_and_refuses_a_family_without_it(tmp_path):
    from typer.testing import CliRunner

    from holisafe.cli import app

    command = ["model", "tiny", "--vgm", "meta_token", "--meta-token-placement", "vision"]
    done = CliRunner().invoke(app, [*command, str(tmp_path / "llava"), "--family", "llava"])
    assert done.exit_code == 0, done.output
    assert "meta_token (vision placement)" in done.output
    assert load_safe_vlm(str(tmp_path / "llava")).vgm.meta_token_placement == "vision"
    # a HolisafeError, which the command line's entry point prints as one line
    refused = CliRunner().invoke(app, [*command, str(tmp_path / "gemma"), "--family", "gemma3"])
    assert isinstance(refused.exception, VGMError)
    assert "built for LLaVA with a CLIP vision tower" in str(refused.exception)


def test_the_head_input_is_chosen_from_the_command_line(tiny_dirs, tmp_path):
    released, _ = released_checkpoint(tiny_dirs["llava"], tmp_path)
    image = tmp_path / "photo.png"
    images(1)[0].save(image)
    trusted = ["--trust-remote-code", "--head-input", "image_mean"]
    result = CliRunner().invoke(app, ["guard", "--model", f"hf/{released}", *trusted, str(image)])
    assert "runs its own code" in str(result.exception)  # its code decides what its head reads
    config = json.loads((released / "config.json").read_text())
    del config["auto_map"]  # the released format without its code: the toolkit's classes
    (released / "config.json").write_text(json.dumps(config))
    options = ModelOptions(device="cpu", head_input="projector_mean")
    assert load_model(f"hf/{released}", options).model.vgm.head_input == "projector_mean"
    result = CliRunner().invoke(
        app, ["guard", "--model", f"hf/{released}", "--head-input", "image_mean", str(image)]
    )
    assert result.exit_code == 0, result.output
    with pytest.raises(ModelError, match="applies to Safe-VLMs"):
        load_model(f"hf/{tiny_dirs['llava']}", options)
    with pytest.raises(ModelError, match="not API models"):
        load_model("openai/gpt-4o", options)
