"""Encoder states for a decoder built alone (Whisper's and TrOCR's causal-LM decoders): inputs that
grow with width, so the example inputs become a function of the width."""

from __future__ import annotations

import inspect

import torch

from ..passes.capture import to_device
from .configs import _attr

STATES_LENGTH = 8  # encoder positions the decoder attends to
STATE_ARGUMENTS = ("encoder_hidden_states", "encoder_outputs")  # how a decoder's forward takes them


class WithEncoderStates:
    """`inputs(width)`: the text inputs plus encoder states of the decoder's cross-attention width."""

    def __init__(self, make_model, text_inputs: dict, argument: str, seed: int = 0):
        self.make_model, self.text_inputs, self.argument, self.seed = make_model, text_inputs, argument, seed

    def __call__(self, width: int) -> dict:
        size = state_size(self.make_model, width)
        generator = torch.Generator().manual_seed(self.seed)
        states = torch.randn(2, STATES_LENGTH, size, generator=generator)
        return {**self.text_inputs, self.argument: (states,) if self.argument == "encoder_outputs" else states}

    def __repr__(self) -> str:
        return f"WithEncoderStates({sorted(self.text_inputs)} + {self.argument}(width))"


def with_encoder_states(make_model, text_inputs: dict):
    """`WithEncoderStates` when the model is a decoder whose cross-attention runs only on encoder
    states (modules that run with them and not without), else None."""
    if make_model.task == "seq2seq-lm":
        return None
    parameters = inspect.signature(make_model.model_class.forward).parameters
    argument = next((name for name in STATE_ARGUMENTS if name in parameters), None)
    if argument is None:
        return None
    candidate = WithEncoderStates(make_model, text_inputs, argument)
    width = make_model.rule.target_hidden // 4
    try:
        without, with_states = (_modules_run(make_model, width, inputs) for inputs in (text_inputs, candidate(width)))
    except Exception:  # a forward that refuses the states: they are not what this model takes
        return None
    return candidate if with_states > without else None


def state_size(make_model, width: int) -> int:
    """The size of the encoder states the decoder at `width` attends to."""
    with torch.device("meta"):
        config = make_model(width).config
    size = _attr(config, "cross_attention_hidden_size")
    return size if isinstance(size, int) else width


def _modules_run(make_model, width: int, inputs: dict) -> set:
    """Names of the modules with parameters that one forward at `width` runs (on fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        model = make_model(width).eval()
    ran, hooks = set(), []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: ran.add(name)))
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            model(**to_device(inputs, "meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return ran
