"""Example inputs that run a multimodal model's image or audio tower: the modality tensor laid out
from the config, as many placeholder tokens per row as the model's own get_<modality>_features
fills, and a plan in which the tower's matrices are hidden; text-only inputs (and muprewrite's
fail-closed error) where the modality cannot be built."""

import pytest
import torch

pytest.importorskip("transformers")

import muprewrite  # noqa: E402
from muprewrite import hf  # noqa: E402
from muprewrite.errors import MuRewriteError  # noqa: E402

IMAGE, AUDIO = "got_ocr2", "glmasr"  # a SAM-style vision tower; a whisper-style audio tower


@pytest.fixture(scope="module")
def image():
    factory = hf.factory(IMAGE)
    return factory, hf.example_inputs(factory)


@pytest.fixture(scope="module")
def audio():
    factory = hf.factory(AUDIO)
    return factory, hf.example_inputs(factory)


def base_model(factory):
    torch.manual_seed(0)
    return factory(hf.widths(factory)[0]).eval()


def placeholders_per_row(inputs, token: int) -> list:
    return (inputs["input_ids"] == token).sum(dim=1).tolist()


def plan_roles(factory, inputs) -> dict:
    base, delta, target = hf.widths(factory)
    result = muprewrite.mupify(factory, base=base, delta=delta, target=target, example_inputs=inputs,
                               materialize=False)
    return {name: p["role"] for name, p in result.plan.to_dict()["parameters"].items()}


def test_image_inputs_hold_one_placeholder_per_image_feature(image):
    factory, inputs = image
    vision = factory.config.vision_config
    assert inputs["pixel_values"].shape == (2, vision.num_channels, vision.image_size, vision.image_size)
    with torch.no_grad():
        features = base_model(factory).get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    per_image = features.shape[:-1].numel() // 2
    assert per_image >= 1
    assert placeholders_per_row(inputs, factory.config.image_token_index) == [per_image, per_image]


def test_audio_inputs_hold_one_placeholder_per_audio_feature(audio):
    factory, inputs = audio
    clips, mel_bins, frames = inputs["input_features"].shape
    assert (clips, mel_bins) == (2, factory.config.audio_config.num_mel_bins)
    assert torch.equal(inputs["input_features_mask"], torch.ones(2, frames, dtype=torch.long))
    with torch.no_grad():
        features = base_model(factory).get_audio_features(
            input_features=inputs["input_features"], input_features_mask=inputs["input_features_mask"]).pooler_output
    per_clip = features.shape[:-1].numel() // 2
    assert per_clip > 1
    assert placeholders_per_row(inputs, factory.config.audio_token_id) == [per_clip, per_clip]
    assert inputs["input_ids"].shape[1] <= factory.config.text_config.max_position_embeddings


def test_the_vision_tower_is_planned_hidden(image):
    factory, inputs = image
    roles = plan_roles(factory, inputs)
    attention = [n for n in roles if n.startswith("model.vision_tower.layers.") and n.endswith(("qkv.weight",
                                                                                                "proj.weight"))]
    assert len(attention) == 2 * factory.config.vision_config.num_hidden_layers
    assert {roles[n] for n in attention} == {"hidden"}


def test_the_audio_tower_is_planned_hidden(audio):
    factory, inputs = audio
    roles = plan_roles(factory, inputs)
    tower = [n for n in roles if n.startswith("model.audio_tower.layers.") and n.endswith("proj.weight")]
    assert len(tower) == 4 * factory.config.audio_config.num_hidden_layers  # q, k, v, o
    assert {roles[n] for n in tower} == {"hidden"}
    assert roles["model.audio_tower.conv1.weight"] == "input"  # the mel bins do not grow


def test_example_inputs_are_deterministic_and_leave_the_global_seed_alone(image):
    factory, inputs = image
    torch.manual_seed(123)
    again = hf.example_inputs(factory)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
    assert again.keys() == inputs.keys() and all(torch.equal(again[k], inputs[k]) for k in inputs)


def test_a_modality_that_cannot_be_placed_leaves_text_only_inputs_and_the_clear_error():
    # without an audio token id the audio features have nowhere to go in input_ids
    factory = hf.factory("voxtral", fixed={"audio_token_id": None})
    inputs = hf.example_inputs(factory)
    assert set(inputs) == {"input_ids", "decoder_input_ids", "attention_mask"} and inputs["input_ids"].shape == (2, 16)
    base, delta, target = hf.widths(factory)
    with pytest.raises(MuRewriteError, match="audio_tower.* is not used by the model's forward"):
        muprewrite.mupify(factory, base=base, delta=delta, target=target, example_inputs=inputs, materialize=False)


def test_a_placeholder_count_that_changes_with_width_leaves_text_only_inputs(image, monkeypatch):
    from muprewrite.hf import modal

    factory, _ = image
    base = hf.widths(factory)[0]
    counted = modal._placeholder_count
    monkeypatch.setattr(modal, "_placeholder_count", lambda model, found, text: counted(model, found, text) + (
        modal._text_width(model) != base))
    assert set(hf.example_inputs(factory)) == {"input_ids", "attention_mask"}  # no pixel_values
