"""Hugging Face models (built from configs by muprewrite.hf, nothing downloaded) through the pipeline.

Every family is compiled once at base 32 -> target 128 (m = 4) and shared by the tests below,
which only ever work on deep copies of the result's model.
"""

import copy
import functools
import json
import math
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import muprewrite  # noqa: E402
import muprewrite.hf as hf  # noqa: E402
from muprewrite.cli import EXIT_USER_ERROR, main  # noqa: E402
from muprewrite.report import Report  # noqa: E402

NAMES = ["gpt2", "llama", "bert", "t5", "vit"]
CAUSAL = ["gpt2", "llama"]
BASE, TARGET = 32, 128
M = TARGET / BASE
SEED = 1234
# The module that reads the last hidden state out to logits, and whether its weight is tied to
# the input embedding.
READOUT = {"gpt2": "lm_head", "llama": "lm_head", "bert": "cls.predictions.decoder", "t5": "lm_head",
           "vit": "classifier"}
TIED = {"gpt2", "bert", "t5"}
# Coordinate check: Adam LR in the regime where 3 steps of SP visibly grow the logits with width.
COORD_LR = {"gpt2": 5e-3, "llama": 3e-3}


@functools.cache
def mupified(name):
    """The shared result (verified at delta width inside mupify). Never train its model in place."""
    torch.manual_seed(SEED)
    return muprewrite.mupify(hf.factory(name), base=BASE, target=TARGET, example_inputs=hf.example_inputs(name))


def fresh_copy(name):
    return copy.deepcopy(mupified(name).model)


def logits(model, name, **extra):
    return model(**hf.example_inputs(name), **extra).logits


def sp_twin(name, model):
    """The same HF class at the target width, with `model`'s weights and no muprewrite edits."""
    twin = hf.factory(name)(TARGET)
    twin.load_state_dict(model.state_dict())
    return twin


def attention_modules(model):
    """Every HF attention module: they all carry the logit scale as a float `scaling`."""
    return {path: module for path, module in model.named_modules() if isinstance(getattr(module, "scaling", None), float)}


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def scale_input(factor):
    def hook(module, args):
        return (args[0] * factor, *args[1:])
    return hook


# 1. ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_mupify_verifies_and_returns_the_hf_class(name):
    result = mupified(name)  # a VerificationError would have raised
    verification = result.report.verification
    assert verification["width"] == 2 * BASE
    assert verification["outputs"] <= 1e-5 and verification["gradients"] <= 1e-5
    assert type(result.model) is type(hf.factory(name)(BASE))
    assert result.plan.target_width == TARGET


# 2. ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_base_width_rewrite_is_the_original(name):
    factory, inputs = hf.factory(name), hf.example_inputs(name)
    torch.manual_seed(SEED)
    result = muprewrite.mupify(factory, base=BASE, target=BASE, example_inputs=inputs, verify_width=False)
    torch.manual_seed(SEED)
    original = factory(BASE)
    rewritten = result.model
    assert result.plan.edits == []
    assert_same_state(rewritten, original)
    for model in (rewritten, original):
        model.eval()
    assert torch.equal(logits(rewritten, name), logits(original, name))

    emitted = torch.optim.AdamW(result.param_groups(lr=1e-2, weight_decay=0.1, optimizer="adamw"), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(original.parameters(), lr=1e-2, weight_decay=0.1)
    for model, optimizer in ((rewritten, emitted), (original, plain)):
        optimizer.zero_grad()
        logits(model, name).float().pow(2).mean().backward()
        optimizer.step()
    assert_same_state(rewritten, original)
    assert torch.equal(logits(rewritten, name), logits(original, name))


# 3. ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_readout_is_an_output_use_with_a_multiplier(name):
    result = mupified(name)
    plan, readout = result.plan, READOUT[name]
    entry = plan.param(f"{readout}.weight")
    assert entry is not None
    readout_uses = [u for u in entry.uses if u["module"] == readout]
    assert [u["role"] for u in readout_uses] == ["output"]
    assert readout_uses[0]["fan_in_mult"] == M
    edits = [e for e in plan.edits if e.kind == "readout_multiplier" and e.module == readout]
    # T5 scales the tied readout's input by d_model**-0.5 itself: held at its base value, x sqrt(m)
    expected = 1 / M * (math.sqrt(M) if name == "t5" else 1)
    assert len(edits) == 1 and edits[0].new == pytest.approx(expected)
    assert (edits[0].frozen_constant is not None) == (name == "t5")
    assert [e.module for e in plan.edits if e.kind == "readout_multiplier"] == [readout]
    if name in TIED:
        # one tensor, two names: the plan keys it by the embedding and lists the readout as an alias
        assert f"{readout}.weight" in entry.aliases
        assert {u["role"] for u in entry.uses} == {"input", "output"}
        assert entry.role == "input"  # follows its first use (the lookup); the readout gets the multiplier
        assert "tied" in result.report.to_markdown()
        model = result.model
        assert model.get_submodule(readout).weight is model.get_input_embeddings().weight
    else:
        assert entry.role == "output" and entry.aliases == []
        assert entry.lr_mult["adam"] == 1.0 and entry.init_ratio == 1.0


# 4. ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_one_attention_edit_per_attention_module_when_d_head_grows(name):
    result = mupified(name)
    modules = attention_modules(result.model)
    expected = {"gpt2": 2, "llama": 2, "bert": 2, "vit": 2, "t5": 6}[name]  # t5: 2 enc self, 2 dec self, 2 cross
    assert len(modules) == expected
    edits = [e for e in result.plan.edits if e.kind == "attention_scale"]
    assert sorted(e.module for e in edits) == sorted(modules)
    heads = {"gpt2": 2, "llama": 4, "bert": 2, "vit": 2, "t5": 2}[name]
    factor = math.sqrt((BASE // heads) / (TARGET // heads))
    for edit in edits:
        assert edit.new / edit.old == pytest.approx(factor)
        assert edit.old == pytest.approx(modules[edit.module].scaling)  # the scale the model applies today


def test_no_attention_edits_when_heads_grow_and_d_head_is_fixed():
    widen = {"hidden_size": 1, "intermediate_size": 3, "num_attention_heads": 1 / 16, "num_key_value_heads": 1 / 32}
    factory = hf.factory("llama", widen=widen)
    configs = [factory(w).config for w in (BASE, 2 * BASE, TARGET)]
    assert [c.head_dim for c in configs] == [16, 16, 16]
    assert [c.num_attention_heads for c in configs] == [2, 4, 8]
    assert [c.num_key_value_heads for c in configs] == [1, 2, 4]
    result = muprewrite.mupify(factory, base=BASE, target=TARGET, example_inputs=hf.example_inputs("llama"),
                               verify_width=False)
    assert [e.kind for e in result.plan.edits] == ["readout_multiplier"]
    q = result.plan.parameters["model.layers.0.self_attn.q_proj.weight"]
    assert q.role == "hidden" and q.infinite == [True, True]


# 5. T5 ----------------------------------------------------------------------------------------

def test_t5_attention_scale_goes_from_one_to_sqrt_d_kv_ratio():
    result = mupified("t5")
    d_kv_base, d_kv = BASE // 2, TARGET // 2
    edits = [e for e in result.plan.edits if e.kind == "attention_scale"]
    assert len(edits) == 6
    for edit in edits:
        assert edit.old == 1.0  # T5 has no 1/sqrt(d) in its logits
        assert edit.new == pytest.approx(math.sqrt(d_kv_base / d_kv))


def test_t5_relative_position_bias_is_a_scalar():
    plan = mupified("t5").plan
    biases = {n: p for n, p in plan.parameters.items() if "relative_attention_bias" in n}
    assert len(biases) == 2  # encoder block 0 and decoder block 0; later blocks reuse the bias
    for p in biases.values():
        assert p.role == "scalar" and p.infinite == [False, False]
        assert set(p.lr_mult.values()) == {1.0}
        assert all(u["op"] == "embedding" for u in p.uses)


def test_t5_relative_position_biases_get_the_same_init_ratio():
    plan = mupified("t5").plan
    ratios = {n: p.init_ratio for n, p in plan.parameters.items() if "relative_attention_bias" in n}
    assert len(set(ratios.values())) == 1, ratios


def test_t5_relative_position_bias_returns_to_its_base_std():
    """T5 inits the bias with std d_model**-0.5; as a scalar-like tensor muP keeps its base std
    (DESIGN's table), so at 4x width it is scaled back up by sqrt(4) = 2."""
    plan = mupified("t5").plan
    for name, p in plan.parameters.items():
        if "relative_attention_bias" in name:
            assert p.init_ratio == pytest.approx(2.0), (name, p.init_ratio)


def test_t5_width_constant_is_frozen_unless_kept():
    """T5's tied readout input x d_model**-0.5: by default muprewrite holds it at its base value
    (the readout's only width dependence is then muP's 1/m); width_constants='keep' keeps it and warns."""
    inputs = hf.example_inputs("t5")
    plans = {option: muprewrite.mupify(hf.factory("t5"), base=BASE, target=TARGET, example_inputs=inputs,
                                       options={"width_constants": option}, materialize=False).plan
             for option in ("freeze", "keep")}
    readout = {k: next(e for e in p.edits if e.kind == "readout_multiplier") for k, p in plans.items()}
    frozen = readout["freeze"].frozen_constant
    assert frozen["base"] == pytest.approx(BASE ** -0.5) and frozen["now"] == pytest.approx(TARGET ** -0.5)
    assert readout["freeze"].new == pytest.approx(readout["keep"].new * math.sqrt(M))
    assert readout["keep"].frozen_constant is None
    codes = {k: [w.code for w in p.warnings] for k, p in plans.items()}
    assert "width-dependent-constant" in codes["keep"] and "width-dependent-constant" not in codes["freeze"]
    assert "also holds the model's width-dependent constant" in Report(plans["freeze"]).to_markdown()


def test_t5_matches_hand_edit_and_leaves_the_position_bias_alone():
    """Hand edit: the same weights, each attention's q weight x sqrt(d_kv_base / d_kv) instead of the
    SDPA scale, and lm_head's input x 1/m x sqrt(m) (muP's readout multiplier, and T5's own
    d_model**-0.5 held at its base value). Scaling q scales q.k only, never the additive bias."""
    result = mupified("t5")
    rewritten = fresh_copy("t5").eval()
    hand = sp_twin("t5", rewritten).eval()
    factor = math.sqrt((BASE // 2) / (TARGET // 2))
    with torch.no_grad():
        for module in attention_modules(hand).values():
            module.q.weight.mul_(factor)
    hand.lm_head.register_forward_pre_hook(scale_input(1 / M * math.sqrt(TARGET / BASE)))
    torch.testing.assert_close(logits(rewritten, "t5"), logits(hand, "t5"), rtol=1e-5, atol=1e-6)
    assert len([e for e in result.plan.edits if e.kind == "attention_scale"]) == 6

    # The additive position bias itself (the second output of the first self-attention) is the
    # SP model's, bit for bit: the edit goes into SDPA's scale, the bias into its attn_mask.
    sp = sp_twin("t5", rewritten).eval()
    biases = []
    for model in (rewritten, sp):
        seen = []
        handle = model.encoder.block[0].layer[0].SelfAttention.register_forward_hook(
            lambda module, args, output, seen=seen: seen.append(output[1]))
        logits(model, "t5")
        handle.remove()
        biases.append(seen[0])
    assert torch.equal(*biases)


def test_width_independent_init_is_not_rescaled_vit_cls_token():
    entry = mupified("vit").plan.parameters["vit.embeddings.cls_token"]
    assert entry.role == "vector"
    assert entry.init_ratio == 1.0


# 6. GPT-2 by hand ------------------------------------------------------------------------------

def test_gpt2_matches_a_hand_edited_gpt2():
    """Hand muP: init from the same seed with the hidden matrices x 1/sqrt(m), 1/d attention via
    GPT2Attention.scaling, and a pre-hook of our own scaling lm_head's input by 1/m."""
    result = mupified("gpt2")
    rewritten = fresh_copy("gpt2")
    factory = hf.factory("gpt2")
    torch.manual_seed(SEED)
    hand = factory(TARGET)
    hidden = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, param in hand.named_parameters():
            if name.endswith(hidden):
                param.mul_(1 / math.sqrt(M))  # GPT-2's init std is 0.02 at any width
    for name, tensor in hand.state_dict().items():
        torch.testing.assert_close(rewritten.state_dict()[name], tensor, rtol=1e-6, atol=0, msg=name)
    for module in attention_modules(hand).values():
        module.scaling = module.scaling * math.sqrt((BASE // 2) / (TARGET // 2))
        assert module.scaling == pytest.approx(math.sqrt(BASE // 2) / (TARGET // 2))  # sqrt(d_base) / d
    hand.lm_head.register_forward_pre_hook(scale_input(1 / M))
    hand.load_state_dict(rewritten.state_dict())  # compare the forward/backward on identical weights

    inputs = hf.example_inputs("gpt2")
    outputs, grads = [], []
    for model in (rewritten, hand):
        model.eval()
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
        outputs.append(out.logits)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)
    # ... and the edits matter: the SP model with these weights computes something else
    sp = sp_twin("gpt2", rewritten).eval()
    assert not torch.allclose(logits(sp, "gpt2"), outputs[0], atol=1e-3)
    assert result.plan.parameters["transformer.h.0.attn.c_attn.weight"].init_ratio == pytest.approx(0.5)


# 7. generate, save_pretrained / from_pretrained -----------------------------------------------

@pytest.mark.parametrize("name", CAUSAL)
def test_generate_runs_the_edits(name):
    rewritten = fresh_copy(name).eval()
    sp = sp_twin(name, rewritten).eval()
    ids = hf.example_inputs(name)["input_ids"][:, :6]
    kwargs = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    runs = {}
    for label, model in (("mup", rewritten), ("sp", sp)):
        for use_cache in (False, True):
            runs[label, use_cache] = model.generate(ids, use_cache=use_cache, **kwargs)
    out = runs["mup", False]
    assert out.sequences.shape == (2, 10) and torch.equal(out.sequences[:, :6], ids)
    # generation goes through the hooks / interception: its first logits are the model's own
    torch.testing.assert_close(out.logits[0], rewritten(input_ids=ids).logits[:, -1], rtol=1e-5, atol=1e-5)
    assert torch.equal(out.sequences[:, 6], out.logits[0].argmax(-1))
    # the KV-cache path applies the same edits
    assert torch.equal(runs["mup", True].sequences, out.sequences)
    for a, b in zip(runs["mup", True].logits, out.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the result depends on them: the SP copy with the same weights scores differently
    assert not torch.allclose(runs["sp", False].logits[0], out.logits[0], atol=1e-3)


@pytest.mark.parametrize("name", CAUSAL)
def test_save_pretrained_from_pretrained_then_apply_plan(name, tmp_path):
    result = mupified(name)
    rewritten = fresh_copy(name).eval()
    rewritten.save_pretrained(tmp_path)
    loaded = type(rewritten).from_pretrained(tmp_path)
    assert_same_state(loaded, rewritten)
    # the plan is not in the checkpoint: the loaded model is the SP model with muP weights ...
    loaded.eval()
    assert not torch.allclose(logits(loaded, name), logits(rewritten, name), atol=1e-3)
    # ... until the plan is re-applied (keeping the weights)
    restored = muprewrite.apply_plan(loaded, result.plan).eval()
    assert_same_state(restored, rewritten)
    assert torch.equal(logits(restored, name), logits(rewritten, name))


# 8. torch.compile -----------------------------------------------------------------------------

COMPILED = ["gpt2"] + (["llama"] if os.environ.get("MUPREWRITE_SLOW_TESTS") else [])  # ~25 s each on 2 CPU cores


@pytest.mark.parametrize("name", COMPILED)
def test_torch_compile_matches_eager(name):
    """fullgraph=True: the edits (hooks, intercepted calls) compile into one graph, no breaks.
    The loss is taken outside the model: HF's own loss path logs a warning, a graph break of its own."""
    eager, compiled_model = fresh_copy(name).eval(), fresh_copy(name).eval()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    inputs = hf.example_inputs(name)
    outputs = []
    for model in (eager, compiled):
        logits_out = model(**inputs).logits
        torch.nn.functional.cross_entropy(logits_out.flatten(0, 1), inputs["input_ids"].flatten()).backward()
        outputs.append(logits_out)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    norms = [{n: p.grad.norm() for n, p in model.named_parameters()} for model in (eager, compiled_model)]
    assert norms[0].keys() == norms[1].keys()
    for key in norms[0]:
        torch.testing.assert_close(norms[1][key], norms[0][key], rtol=1e-4, atol=1e-6, msg=key)
    sp = sp_twin(name, eager).eval()
    assert not torch.allclose(logits(sp, name), outputs[1], atol=1e-3)  # compiled, the edits still apply


@pytest.mark.parametrize("name", CAUSAL)
def test_gradient_checkpointing_recomputes_with_the_edits(name):
    """HF's GradientCheckpointingLayer reruns each layer in backward: the recompute must apply the
    attention edit too, or the gradients differ from the plain rewritten model's."""
    plain, checkpointed = fresh_copy(name).eval(), fresh_copy(name).eval()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed.train()
    for module in checkpointed.modules():  # train mode for checkpointing, without dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    runs = []
    attention = checkpointed.base_model.get_submodule({"gpt2": "h.0.attn", "llama": "layers.0.self_attn"}[name])
    attention.register_forward_pre_hook(lambda module, args: runs.append(1))
    grads = []
    for model in (plain, checkpointed):
        logits(model, name).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(runs) == 2  # forward, then the recompute in backward
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-7, msg=key)
    sp = sp_twin(name, plain).eval()
    logits(sp, name).square().mean().backward()
    assert any(not torch.allclose(p.grad, grads[0][n], atol=1e-6) for n, p in sp.named_parameters())


# 9. coordinate check --------------------------------------------------------------------------

def _mean_abs_logits_after_adam(name, width, plan, lr, steps=3):
    inputs = hf.example_inputs(name)
    torch.manual_seed(0)
    model = hf.factory(name)(width)
    if plan is not None:
        model = muprewrite.apply_plan(model, plan, reinit=True, inplace=True)
        groups = muprewrite.param_groups(model, plan, lr=lr, optimizer="adamw")
    else:
        groups = model.parameters()
    model.eval()  # no dropout: the only difference between widths is the width
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        optimizer.step()
    with torch.no_grad():
        return logits(model, name).abs().mean().item()


@pytest.mark.parametrize("name", CAUSAL)
def test_coordinate_check_logits(name):
    widths = [BASE, 2 * BASE, 4 * BASE]
    factory, inputs = hf.factory(name), hf.example_inputs(name)
    plans = {BASE: None, 4 * BASE: mupified(name).plan,
             2 * BASE: muprewrite.mupify(factory, base=BASE, target=2 * BASE, example_inputs=inputs,
                                         verify_width=False, materialize=False).plan}
    lr = COORD_LR[name]
    sp = [_mean_abs_logits_after_adam(name, w, None, lr) for w in widths]
    mup = [_mean_abs_logits_after_adam(name, w, plans[w], lr) for w in widths]
    slope = lambda values: np.polyfit(np.log(widths), np.log(values), 1)[0]  # noqa: E731
    assert sp[0] == mup[0]  # base width: the same model
    assert slope(sp) > 0.3, sp
    assert slope(mup) < 0.15, mup


# CLI ------------------------------------------------------------------------------------------

def test_cli_hf_llama_json(capsys):
    code = main(["hf:llama", "--json", "--base", "32", "--target", "64"])
    out, _ = capsys.readouterr()
    assert code == 0
    plan = json.loads(out)
    assert plan["base_width"] == 32 and plan["target_width"] == 64
    assert plan["parameters"]["lm_head.weight"]["role"] == "output"
    assert plan["parameters"]["model.layers.0.mlp.up_proj.weight"]["role"] == "hidden"
    assert {e["kind"] for e in plan["edits"]} == {"attention_scale", "readout_multiplier"}


def test_cli_unknown_hf_model_is_a_one_line_error(capsys):
    code = main(["hf:nope"])
    out, err = capsys.readouterr()
    assert code == EXIT_USER_ERROR == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "nope" in err and "llama" in err and "Traceback" not in err
