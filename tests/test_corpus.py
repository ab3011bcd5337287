"""Acceptance tests: every corpus model (tests/corpus.py) against the muP-correct expectation,
through the plan `mupify` writes and, where a hand edit can say it, through the outputs of the
realized model compared with the SP model edited by hand at the target width."""

from __future__ import annotations

import math

import pytest
import torch

import corpus
import muprewrite
from corpus import BASE, ENTRIES, HEADS, TARGET, Entry
from muprewrite.errors import MuRewriteError

_RESULTS = {}


def compile_entry(entry: Entry, options: dict | None = None):
    """mupify's result for `entry` (cached per entry and options); raises what mupify raised."""
    options = entry.options if options is None else options
    key = (entry.name, tuple(sorted(options.items())))
    if key not in _RESULTS:
        try:
            _RESULTS[key] = muprewrite.mupify(entry.make, base=BASE, target=TARGET,
                                              example_inputs=entry.inputs(), options=options or None)
        except Exception as exc:
            _RESULTS[key] = exc
    if isinstance(_RESULTS[key], Exception):
        raise _RESULTS[key]
    return _RESULTS[key]


def by_name(name: str) -> Entry:
    return next(e for e in ENTRIES if e.name == name)


def entry_params(entries):
    marks = {"experts-grouped_mm": pytest.mark.skipif(not corpus.HAS_GROUPED_MM, reason="torch._grouped_mm missing")}
    return [pytest.param(e, id=e.name, marks=marks.get(e.name, ())) for e in entries]


PLANNED = [e for e in ENTRIES if e.refuse is None]
REFUSED = [e for e in ENTRIES if e.refuse is not None]


@pytest.mark.parametrize("entry", entry_params(PLANNED))
def test_parameters_get_their_muP_role_lr_and_trainability(entry):
    plan = compile_entry(entry).plan
    assert set(plan.parameters) == set(entry.params)
    wrong = {}
    for name, want in entry.params.items():
        got = plan.parameters[name]
        roles = want.role if isinstance(want.role, tuple) else (want.role,)
        if got.role not in roles or got.lr_mult["adam"] != pytest.approx(want.adam) or got.trainable != want.trainable:
            wrong[name] = f"got ({got.role}, adam {got.lr_mult['adam']}, trainable {got.trainable}), want {want}"
    assert not wrong, wrong


@pytest.mark.parametrize("entry", entry_params(PLANNED))
def test_use_sites_get_exactly_the_muP_edits(entry):
    plan = compile_entry(entry).plan
    got = sorted((e.kind, e.module, round(e.factor, 9)) for e in plan.edits)
    assert got == sorted((kind, module, round(factor, 9)) for kind, module, factor in entry.edits)


@pytest.mark.parametrize("entry", entry_params(REFUSED))
def test_what_muP_cannot_be_applied_to_is_refused_by_name(entry):
    with pytest.raises(MuRewriteError, match=entry.refuse):
        compile_entry(entry)


@pytest.mark.parametrize("make", corpus.UNKNOWN_OP_PARAMS, ids=lambda cls: cls.__name__)
def test_unknown_op_is_kept_in_sp_when_asked(make):
    name = corpus.UNKNOWN_OP_PARAMS[make]
    entry = by_name(f"unknown-op-{make.__name__}")
    plan = compile_entry(entry, options={"unknown_ops": "sp"}).plan
    kept = plan.parameters[name]
    assert kept.role in ("unclassified", "sp")
    assert kept.lr_mult["adam"] == 1.0 and kept.init_std["before"] == kept.init_std["after"]
    assert plan.parameters["head.weight"].role == "output"


def test_standard_attention_scale_goes_from_one_over_sqrt_d_to_sqrt_d_base_over_d():
    plan = compile_entry(by_name("attention-Attention")).plan
    [edit] = [e for e in plan.edits if e.kind == "attention_scale"]
    d, d_base = TARGET // HEADS, BASE // HEADS
    assert edit.old == pytest.approx(1 / math.sqrt(d)) and edit.new == pytest.approx(math.sqrt(d_base) / d)


# ---------------------------------------------------------------------------------------------
# The realized model against the SP model at target width with muP written in by hand.


def readout_hook(module, factor=1 / corpus.M):
    module.register_forward_pre_hook(lambda _, args: (args[0] * factor, *args[1:]))


def mup_attention_scale(attention):
    d = TARGET // HEADS
    attention.scale = math.sqrt(BASE // HEADS) / d


def attention_by_hand(model):
    mup_attention_scale(model.attn)
    readout_hook(model.head)


def functional_readout_by_hand(model):
    model.readout_scale = 1 / corpus.M


def experts_by_hand(model):
    readout_hook(model.router)
    readout_hook(model.head)


def shared_layer_by_hand(model):
    mup_attention_scale(model.layer.attn)
    readout_hook(model.head)


def tied_scaled_logits_by_hand(model):
    model.dim = BASE
    model.readout_scale = 1 / corpus.M


def buffer_scaled_readout_by_hand(model):
    model.scale.fill_(BASE ** -0.5)
    readout_hook(model.head)


HAND_EDITS = {
    **{e.name: attention_by_hand for e in PLANNED if e.name.startswith("attention-")},
    "autocast-block": functional_readout_by_hand,
    "layout-TransposedWeights": functional_readout_by_hand,
    "layout-MatrixTransposedWeights": functional_readout_by_hand,
    "layout-cat-readout-input": lambda model: readout_hook(model.head),
    "layout-cat-readout-weight": functional_readout_by_hand,
    "shared-layer-thrice": shared_layer_by_hand,
    "readout-twice": lambda model: readout_hook(model.head),
    "experts-bmm": experts_by_hand,
    "experts-einsum": experts_by_hand,
    "experts-grouped_mm": experts_by_hand,
    "capture-layerdrop": lambda model: readout_hook(model.head),
    "capture-autocast-input-device": lambda model: readout_hook(model.head),
}


def hand_edited(make, realized, edit):
    hand = make(TARGET)
    hand.load_state_dict(realized.state_dict())
    with torch.no_grad():
        edit(hand)
    return hand.eval()


def assert_same_outputs(realized, hand, inputs):
    realized.eval()
    with torch.no_grad():
        torch.testing.assert_close(realized(*inputs), hand(*inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", entry_params([by_name(n) for n in HAND_EDITS]))
def test_realized_model_equals_the_hand_edited_model(entry):
    realized = compile_entry(entry).model
    assert_same_outputs(realized, hand_edited(entry.make, realized, HAND_EDITS[entry.name]), entry.inputs())


@pytest.mark.parametrize("make, edit, readout", [
    (corpus.TiedScaledLogits, tied_scaled_logits_by_hand, "emb.weight"),
    (corpus.BufferScaledReadout, buffer_scaled_readout_by_hand, "head.weight"),
], ids=["tied-logits-times-dim**-0.5", "readout-input-times-buffer-dim**-0.5"])
def test_width_dependent_constant_at_a_readout_is_held_at_base_or_refused(make, edit, readout):
    """Either the realized logits equal the hand edit (constant at its base value, 1/m on the
    readout's input), or mupify refuses naming the readout; 1/m on top of the shrinking constant
    is never right."""
    inputs = corpus.tokens()
    try:
        result = muprewrite.mupify(make, base=BASE, target=TARGET, example_inputs=inputs)
    except MuRewriteError as refusal:
        assert readout in str(refusal)
        return
    assert_same_outputs(result.model, hand_edited(make, result.model, edit), inputs)
