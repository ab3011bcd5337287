"""Sanity checks for the bundled examples and their hand-written mup twins."""
import functools
import importlib

import pytest
import torch

from mup_twins import gpt_twin, mlp_twin, mup_model

EXPECTED_OUTPUT_SHAPES = {
    "mlp": (4, 10),
    "cnn": (4, 10),
    "gpt_sdpa": (4, 16, 64),
    "gpt_manual": (4, 16, 64),
    "gpt_tied": (4, 16, 64),
    "gpt_heads": (4, 16, 64),
    "transformer_encoder": (4, 5),
}
EXAMPLES = sorted(EXPECTED_OUTPUT_SHAPES)

TWINS = {
    "mlp": mlp_twin,
    "gpt_sdpa": functools.partial(gpt_twin, attention="sdpa"),
    "gpt_manual": functools.partial(gpt_twin, attention="manual"),
}


def load(name):
    return importlib.import_module(name)


def state_shapes(model):
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_contract(name):
    example = load(name)
    assert example.__doc__ and example.__doc__.strip()
    assert example.BASE_WIDTH < example.TARGET_WIDTH
    inputs = example.example_inputs()
    assert isinstance(inputs, tuple) and inputs
    assert all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in inputs)
    assert all(torch.equal(a, b) for a, b in zip(inputs, example.example_inputs()))


@pytest.mark.parametrize("width_attr", ["BASE_WIDTH", "TARGET_WIDTH"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_forward_is_finite_with_expected_shape(name, width_attr):
    example = load(name)
    torch.manual_seed(0)
    model = example.make_model(getattr(example, width_attr))
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    output = model(*example.example_inputs())
    assert output.shape == EXPECTED_OUTPUT_SHAPES[name]
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("name", EXAMPLES)
def test_exports_on_meta_in_train_mode(name):
    example = load(name)
    with torch.device("meta"):
        model = example.make_model(example.TARGET_WIDTH)
        assert model.training
        inputs = tuple(t.to("meta") for t in example.example_inputs())
        program = torch.export.export(model, inputs, strict=False)
    (output,) = [node for node in program.graph.nodes if node.op == "output"][0].args[0]
    assert tuple(output.meta["val"].shape) == EXPECTED_OUTPUT_SHAPES[name]
    assert set(program.state_dict) == set(model.state_dict())


@pytest.mark.parametrize("width_attr", ["BASE_WIDTH", "TARGET_WIDTH"])
@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_matches_example_state_dict(name, width_attr):
    example = load(name)
    width = getattr(example, width_attr)
    with torch.device("meta"):
        example_model = example.make_model(width)
    twin = mup_model(TWINS[name], width, example.BASE_WIDTH)
    assert state_shapes(twin) == state_shapes(example_model)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_equals_example_at_base_width(name):
    example = load(name)
    torch.manual_seed(0)
    example_model = example.make_model(example.BASE_WIDTH).eval()
    twin = mup_model(TWINS[name], example.BASE_WIDTH, example.BASE_WIDTH).eval()
    twin.load_state_dict(example_model.state_dict())
    inputs = example.example_inputs()
    with torch.no_grad():
        assert torch.equal(twin(*inputs), example_model(*inputs))


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_and_example_share_init_before_set_base_shapes(name):
    example = load(name)
    torch.manual_seed(0)
    example_state = example.make_model(example.TARGET_WIDTH).state_dict()
    torch.manual_seed(0)
    twin_state = TWINS[name](example.TARGET_WIDTH).state_dict()
    for key, value in example_state.items():
        assert torch.equal(twin_state[key], value), key


def test_twins_are_muP_at_target_width():
    mlp_example, gpt_example = load("mlp"), load("gpt_sdpa")
    mlp_model = mup_model(mlp_twin, mlp_example.TARGET_WIDTH, mlp_example.BASE_WIDTH)
    gpt_model = mup_model(gpt_twin, gpt_example.TARGET_WIDTH, gpt_example.BASE_WIDTH)
    assert mlp_model.readout.width_mult() == mlp_example.TARGET_WIDTH / mlp_example.BASE_WIDTH
    assert gpt_model.lm_head.width_mult() == gpt_example.TARGET_WIDTH / gpt_example.BASE_WIDTH
    d_head_base = gpt_example.BASE_WIDTH // gpt_example.N_HEAD
    d_head = gpt_example.TARGET_WIDTH // gpt_example.N_HEAD
    assert gpt_model.blocks[0].attn.scale == pytest.approx(d_head_base**0.5 / d_head)
    assert gpt_model.blocks[0].attn.scale != pytest.approx(d_head**-0.5)


def twin_at_target(attention):
    example = load(f"gpt_{attention}")
    return mup_model(TWINS[f"gpt_{attention}"], example.TARGET_WIDTH, example.BASE_WIDTH)


def example_at_target(attention):
    example = load(f"gpt_{attention}")
    return example.make_model(example.TARGET_WIDTH)


@pytest.mark.parametrize("build", [example_at_target, twin_at_target], ids=["example", "twin"])
def test_sdpa_and_manual_attention_agree(build):
    """With the same weights, both attention paths give the same eval-mode logits at target width."""
    sdpa_model, manual_model = build("sdpa").eval(), build("manual").eval()
    manual_model.load_state_dict(sdpa_model.state_dict())
    inputs = load("gpt_sdpa").example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(manual_model(*inputs), sdpa_model(*inputs), rtol=1e-5, atol=1e-5)
