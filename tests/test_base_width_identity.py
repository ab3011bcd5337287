"""At base width the rewrite is the original, bit for bit: parameters, outputs, optimizer steps."""

import copy
import importlib

import pytest
import torch

import muprewrite

EXAMPLES = ["mlp", "cnn", "gpt_sdpa", "gpt_manual", "gpt_tied", "gpt_heads", "transformer_encoder"]


def base_width_pair(name):
    module = importlib.import_module(name)
    base = module.BASE_WIDTH
    torch.manual_seed(123)
    result = muprewrite.mupify(module.make_model, base=base, target=base, example_inputs=module.example_inputs())
    torch.manual_seed(123)
    original = module.make_model(base)
    return module, result, original


def assert_same_parameters(a, b):
    pairs = zip(a.state_dict().items(), b.state_dict().items())
    for (name_a, tensor_a), (name_b, tensor_b) in pairs:
        assert name_a == name_b
        assert torch.equal(tensor_a, tensor_b), name_a


@pytest.mark.parametrize("name", EXAMPLES)
def test_base_width_rewrite_is_the_original(name):
    module, result, original = base_width_pair(name)
    for optimizer in ("adamw", "sgd"):
        check_identity(module, result, copy.deepcopy(result.model), copy.deepcopy(original), optimizer)


def check_identity(module, result, rewritten, original, optimizer):
    assert type(rewritten) is type(original)
    assert_same_parameters(rewritten, original)
    inputs = module.example_inputs()
    for model in (rewritten, original):
        model.train()
    outputs = []
    for model in (rewritten, original):
        torch.manual_seed(7)  # same dropout masks
        outputs.append(model(*inputs))
    assert torch.equal(outputs[0], outputs[1])

    make = {"adamw": torch.optim.AdamW, "sgd": lambda p, **kw: torch.optim.SGD(p, momentum=0.9, **kw)}[optimizer]
    groups = muprewrite.param_groups(rewritten, result.plan, lr=1e-2, weight_decay=0.1, optimizer=optimizer)
    emitted = make(groups, lr=1e-2, weight_decay=0.1)
    plain = make(original.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        for model, opt in ((rewritten, emitted), (original, plain)):
            torch.manual_seed(step)
            opt.zero_grad()
            model(*inputs).float().pow(2).mean().backward()
            opt.step()
    assert_same_parameters(rewritten, original)


def test_mupify_does_not_consume_the_callers_rng():
    module = importlib.import_module("mlp")
    torch.manual_seed(5)
    muprewrite.mupify(module.make_model, base=64, target=128, example_inputs=module.example_inputs())
    after = torch.rand(3)
    torch.manual_seed(5)
    module.make_model(128)
    assert torch.equal(after, torch.rand(3))
