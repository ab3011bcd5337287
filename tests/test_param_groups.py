"""param_groups finds the planned model inside the wrappers training code puts around it."""

import copy

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

import mlp
import muprewrite
from muprewrite.errors import MuRewriteError


@pytest.fixture(scope="module")
def result():
    return muprewrite.mupify(mlp.make_model, base=32, target=128)


def lr_by_name(groups) -> dict:
    return {name: group["lr"] for group in groups for name in group["names"]}


class Parent(nn.Module):
    """A training wrapper holding the planned model as `self.model` (a LightningModule does)."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def test_wrappers_see_the_same_groups(result):
    plain = lr_by_name(result.param_groups(lr=1.0))
    assert len(set(plain.values())) > 1  # some tensors do get another LR
    wrapped = {
        "parent": Parent(result.model),
        "compiled": torch.compile(result.model),
        "parent of compiled": Parent(torch.compile(result.model)),
    }
    checkpointed = Parent(copy.deepcopy(result.model))
    apply_activation_checkpointing(checkpointed, check_fn=lambda m: isinstance(m, nn.Linear))
    wrapped["activation checkpointing"] = checkpointed
    for label, model in wrapped.items():
        groups = muprewrite.param_groups(model, result.plan, lr=1.0)
        got = {name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "").removeprefix("model."): lr
               for name, lr in lr_by_name(groups).items()}
        assert got == plain, label
        assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}, label


def test_a_parameter_outside_the_plan_is_refused(result):
    parent = Parent(result.model)
    parent.extra = nn.Linear(3, 3)
    with pytest.raises(MuRewriteError, match="extra.weight' is not in the plan"):
        muprewrite.param_groups(parent, result.plan, lr=1.0)
