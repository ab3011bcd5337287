"""Fold to SP (issue 12): `muprewrite.fold` gives the user's own class with plain weights, no hook and
no interception, computing what the trained muP model computes; `apply_plan(..., from_folded=True)`
gives the muP model back; Hugging Face models save and reload into identical outputs without
muprewrite; an edit that cannot be folded exactly is an error naming it.

Widths grow 4x from the base, so every factor of the default plan (readout 1/4, attention
sqrt(1/4), table 9's sqrt(4)) is a power of two and the round trip is bit-exact; the alpha
options give factors that are not, and the round trip is then within one rounding.
"""

import copy
import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import muprewrite
from muprewrite.cli import EXIT_USER_ERROR, main
from muprewrite.passes.intercept import InterceptCalls
from muprewrite.passes.realize import REALIZED_FLAG

ROOT = Path(__file__).parent.parent
EXAMPLES = ["mlp", "cnn", "gpt_sdpa", "gpt_manual", "gpt_heads", "gpt_tied", "einsum_attention", "moe",
            "transformer_encoder"]  # examples/nanogpt.py is the shared GPT of the gpt_* files, not a factory
ALPHAS = {"alpha_out": 1.5, "alpha_attn": 0.7, "alpha_in": 2.5}
OUTPUT_RTOL = 1e-5  # of the output's largest entry: folding only moves where a factor is rounded
GRAD_RTOL = 1e-4


def train(model, groups, inputs, steps=3, lr=1e-2):
    """A few Adam steps so the weights are not at their init (eval mode: no dropout)."""
    optimizer = torch.optim.Adam(groups, lr=lr)
    model.eval()
    for _ in range(steps):
        optimizer.zero_grad()
        _output(model, inputs).float().pow(2).mean().backward()
        optimizer.step()
    return model


@functools.cache
def trained_example(name, parametrization="mup", options=None):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = muprewrite.mupify(module.make_model, base=module.BASE_WIDTH, target=4 * module.BASE_WIDTH,
                               example_inputs=module.example_inputs(), parametrization=parametrization,
                               options=dict(options or ()), verify_width=False)
    train(result.model, result.param_groups(lr=1e-2, optimizer="adam"), module.example_inputs())
    return result, module.example_inputs()


def _output(model, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    return out.logits if hasattr(out, "logits") else out


def forward_backward(model, inputs):
    """(output, gradients of the float inputs and of every embedding output, parameter gradients)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    if isinstance(inputs, dict):
        inputs = dict(inputs)
    else:
        inputs = tuple(x.clone().requires_grad_(True) if x.is_floating_point() else x for x in inputs)
    embedded = []

    def keep(module, args, out):
        if out.requires_grad:
            out.retain_grad()
            embedded.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        out = _output(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out.float() * weights).sum().backward()
    activations = [x.grad for x in (inputs if isinstance(inputs, tuple) else ()) if x.grad is not None]
    activations += [e.grad for e in embedded]
    params = {id(p): (p, p.grad) for p in model.parameters() if p.grad is not None}
    return out.detach(), activations, params


def relative(a, b, floor=0.0) -> float:
    """max |a - b| over max |b| (at least `floor`: a gradient that is zero up to rounding, such as a
    key bias's under softmax, is judged against the model's gradients at large)."""
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), floor)
    return float((a - b).abs().max()) / scale if scale else float((a - b).abs().max())


def check_fold(mup_model, folded, plan, inputs) -> dict:
    """Same outputs and activation gradients; parameter gradients related by the chain rule: fold
    is affine in the muP tensors, folded = s * muP + constant elementwise (s read off folding the
    muP model with every tensor doubled), so dL/dmuP = s * dL/dfolded, summed over the folded
    tensors one muP tensor became (a tied readout, untied)."""
    assert type(folded) is type(mup_model)
    assert not any(len(m._forward_pre_hooks) or isinstance(m.__dict__.get("forward"), InterceptCalls)
                   for m in folded.modules())
    assert not getattr(folded, REALIZED_FLAG, False)
    out_mup, act_mup, _ = forward_backward(mup_model, inputs)
    out_fold, act_fold, _ = forward_backward(folded, inputs)
    assert len(act_fold) == len(act_mup) and [a is None for a in act_fold] == [a is None for a in act_mup]
    errors = {"output": relative(out_fold, out_mup),
              "activation_grad": max((relative(a, b) for a, b in zip(act_fold, act_mup) if b is not None),
                                     default=0.0),
              "param_grad": 0.0}
    doubled = copy.deepcopy(mup_model)
    with torch.no_grad():
        for param in doubled.parameters():
            param.mul_(2)
    folded_twice = dict(muprewrite.fold(doubled, plan).named_parameters(remove_duplicate=False))
    folded_params = dict(folded.named_parameters(remove_duplicate=False))
    floor = 1e-3 * max(float(p.grad.abs().max()) for p in mup_model.parameters() if p.grad is not None)
    for name, param in mup_model.named_parameters():
        if param.grad is None:
            continue
        names = [name, *(plan.param(name).aliases if plan.param(name) else [])]
        tensors = {id(folded_params[n]): n for n in names}.values()
        predicted = 0.0
        for n in tensors:
            scale = torch.where(param != 0, (folded_twice[n] - folded_params[n]).detach() / param.detach(), 1.0)
            predicted = predicted + scale * folded_params[n].grad
        errors["param_grad"] = max(errors["param_grad"], relative(predicted, param.grad, floor))
    assert errors["output"] <= OUTPUT_RTOL, errors
    assert errors["activation_grad"] <= GRAD_RTOL and errors["param_grad"] <= GRAD_RTOL, errors
    return errors


def max_state_difference(a, b, relative_to_scale=False) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    return max((relative(sa[k], sb[k]) if relative_to_scale else float((sa[k] - sb[k]).abs().max())) for k in sa)


# 1. every bundled example ----------------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
def test_fold_every_example(name):
    result, inputs = trained_example(name)
    mup_model = result.model
    before = copy.deepcopy(mup_model.state_dict())
    folded = muprewrite.fold(mup_model, result.plan, example_inputs=inputs)
    assert all(torch.equal(before[k], v) for k, v in mup_model.state_dict().items())  # the muP model untouched
    check_fold(mup_model, folded, result.plan, inputs)
    report = muprewrite.fold_report(result.plan)
    assert report.count("\n") == len(result.plan.edits) + 1
    back = muprewrite.apply_plan(folded, result.plan, from_folded=True)
    assert max_state_difference(back, mup_model) == 0.0  # powers of two: bit-exact
    mup_model.eval(), back.eval()
    assert torch.equal(_output(back, inputs), _output(mup_model, inputs))


def test_what_goes_where_on_the_examples():
    """Attention into the query rows of a fused qkv, a 3-D einsum query weight, in_proj_weight's
    query rows; a readout into its weight; a readout reading the embedding's own tensor into the
    gain and bias of the norm before it (the tensor stays tied)."""
    def into(name, kind):
        return [t for e in trained_example(name)[0].plan.edits if e.kind == kind for t in e.fold["into"]]
    c_attn = into("gpt_sdpa", "attention_scale")[:2]
    assert [(t["param"], t["dim"], t["ranges"]) for t in c_attn] == [
        ("blocks.0.attn.c_attn.weight", 0, [[0, 128]]), ("blocks.0.attn.c_attn.bias", 0, [[0, 128]])]
    assert into("gpt_manual", "attention_scale")[:2] == c_attn  # q @ k^T: the same rows
    assert into("einsum_attention", "attention_scale")[0]["param"] == "blocks.0.attn.w_q"
    assert into("transformer_encoder", "attention_scale")[0]["ranges"] == [[0, 128]]
    assert [t["param"] for t in into("gpt_sdpa", "readout_multiplier")] == ["lm_head.weight"]
    assert [t["param"] for t in into("gpt_tied", "readout_multiplier")] == ["ln_f.weight", "ln_f.bias"]
    folded = muprewrite.fold(trained_example("gpt_tied")[0].model, trained_example("gpt_tied")[0].plan)
    assert folded.wte.weight.shape[1] == 128 and not hasattr(folded, "lm_head")


@pytest.mark.parametrize("name", ["gpt_tied", "einsum_attention"])
def test_fold_table9_with_alphas(name):
    """Table 9's weight multipliers (embeddings, biases, gains: the stored tensor times sqrt(f) x
    alpha_in) and factors that are not powers of two: the round trip within one rounding."""
    result, inputs = trained_example(name, "table9", tuple(ALPHAS.items()))
    assert any(e.kind == "weight_multiplier" for e in result.plan.edits)
    folded = muprewrite.fold(result.model, result.plan, example_inputs=inputs)
    check_fold(result.model, folded, result.plan, inputs)
    back = muprewrite.apply_plan(folded, result.plan, from_folded=True)
    assert max_state_difference(back, result.model, relative_to_scale=True) <= 2 * torch.finfo(torch.float32).eps


def test_fold_in_place_and_from_a_checkpoint_in_the_plain_class(tmp_path):
    """A muP checkpoint loaded into the plain class folds like the muP model itself."""
    result, inputs = trained_example("gpt_sdpa")
    torch.save(result.model.state_dict(), tmp_path / "mup.pt")
    result.save(tmp_path)
    plain = importlib.import_module("gpt_sdpa").make_model(128)
    plain.load_state_dict(torch.load(tmp_path / "mup.pt"))
    folded = muprewrite.fold(plain, tmp_path / "plan.json", example_inputs=inputs, inplace=True)
    assert folded is plain
    assert max_state_difference(folded, muprewrite.fold(result.model, result.plan)) == 0.0


# 2. what cannot be folded ----------------------------------------------------------------------

class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: the gain is 1 + weight."""

    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)


class Attention(nn.Module):
    """q = W_q x, then `query`: nothing, tanh (the logit scale cannot go into W_q), a norm without a
    gain, or a norm whose gain is 1 + weight."""

    def __init__(self, width, query="linear"):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.query = {"linear": nn.Identity(), "tanh": nn.Tanh(), "norm": nn.LayerNorm(width, elementwise_affine=False),
                      "offset_norm": OffsetRMSNorm(width)}[query]

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = (y.view(b, t, 2, w // 2).transpose(1, 2) for y in (self.query(self.q(x)), self.k(x), self.v(x)))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w)


class TinyLM(nn.Module):
    """A readout of its own, or (tied_gelu) the embedding's tensor read after a gelu: no attribute to
    untie and no gain before it."""

    def __init__(self, width, query="linear", tied_gelu=False):
        super().__init__()
        self.embed = nn.Embedding(32, width)
        self.attn = Attention(width, query)
        self.head = None if tied_gelu else nn.Linear(width, 32, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.attn(x)
        return F.linear(F.gelu(x), self.embed.weight) if self.head is None else self.head(x)


def tiny_plan(**kwargs):
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    return muprewrite.mupify(lambda w: TinyLM(w, **kwargs), base=16, target=64, example_inputs=(ids,),
                             verify_width=False)


@pytest.mark.parametrize("kwargs, words", [
    ({"query": "tanh"}, ["attention_scale", "module 'attn'", "tanh", "which is not linear"]),
    ({"query": "norm"}, ["attention_scale", "module 'attn'", "a norm without a gain"]),
    ({"tied_gelu": True}, ["readout_multiplier", "'embed.weight' is also read by embedding", "gelu"]),
])
def test_an_edit_that_cannot_be_folded_is_an_error_naming_it(kwargs, words):
    result = tiny_plan(**kwargs)  # the plan itself is made: only folding refuses
    with pytest.raises(muprewrite.MuRewriteError) as caught:
        muprewrite.fold(result.model, result.plan)
    message = str(caught.value)
    assert "\n" not in message and "cannot be folded exactly" in message and "apply_plan" in message
    assert all(word in message for word in words), message
    assert muprewrite.fold_report(result.plan).count("cannot be folded exactly") >= 1


def test_a_gain_used_as_one_plus_weight_takes_the_scale_as_an_offset_gain():
    result = tiny_plan(query="offset_norm")
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    train(result.model, result.param_groups(lr=1e-2, optimizer="adam"), (ids,))
    (target,) = [t for e in result.plan.edits if e.kind == "attention_scale" for t in e.fold["into"]]
    assert target["param"] == "attn.query.weight" and target["offset"] == 1.0
    folded = muprewrite.fold(result.model, result.plan, example_inputs=(ids,))
    check_fold(result.model, folded, result.plan, (ids,))
    gain = lambda model: 1.0 + model.attn.query.weight.detach()  # noqa: E731
    assert torch.allclose(gain(folded), gain(result.model) * 0.5)
    back = muprewrite.apply_plan(folded, result.plan, from_folded=True)
    assert max_state_difference(back, result.model) <= 2 * torch.finfo(torch.float32).eps  # 1 + w rounds


def test_a_plan_from_before_fold_is_refused():
    result, _ = trained_example("mlp")
    data = result.plan.to_dict()
    for edit in data["edits"]:
        del edit["fold"]
    old = muprewrite.Plan.from_dict(data)  # still loads
    with pytest.raises(muprewrite.MuRewriteError, match="make the plan again"):
        muprewrite.fold(result.model, old)


def test_a_folded_readout_trained_apart_from_its_embedding_is_not_tied_back():
    result, inputs = hf_folded("gpt2")
    folded = copy.deepcopy(result["folded"])
    with torch.no_grad():
        folded.lm_head.weight.add_(1e-3)
    with pytest.raises(muprewrite.MuRewriteError, match="no longer"):
        muprewrite.apply_plan(folded, result["plan"], from_folded=True)


# 3. Hugging Face ---------------------------------------------------------------------------------

HF = ["llama", "gpt2", "gpt_neox", "qwen3", "t5"]  # gpt2: fused qkv (Conv1D) and tied; gpt_neox: qkv
# interleaved per head; qwen3: QK-norm; t5: tied, no 1/sqrt(d), encoder-decoder


@functools.cache
def hf_folded(name):
    hf = pytest.importorskip("muprewrite.hf")
    inputs = hf.example_inputs(name)
    torch.manual_seed(0)
    result = muprewrite.mupify(hf.factory(name), base=32, target=128, example_inputs=inputs, verify_width=False)
    train(result.model, result.param_groups(lr=1e-3, optimizer="adam"), inputs, steps=2, lr=1e-3)
    folded = muprewrite.fold(result.model, result.plan, example_inputs=inputs)
    return {"mup": result.model, "folded": folded, "plan": result.plan}, inputs


@pytest.mark.parametrize("name", HF)
def test_hf_fold(name):
    result, inputs = hf_folded(name)
    check_fold(result["mup"], result["folded"], result["plan"], inputs)
    if name in ("gpt2", "t5"):
        assert result["folded"].config.tie_word_embeddings is False
        assert result["folded"].lm_head.weight is not result["folded"].get_input_embeddings().weight
    into = {t["param"] for e in result["plan"].edits if e.kind == "attention_scale" for t in e.fold["into"]}
    expected = {"llama": "model.layers.0.self_attn.q_proj.weight", "gpt2": "transformer.h.0.attn.c_attn.weight",
                "gpt_neox": "gpt_neox.layers.0.attention.query_key_value.weight",
                "qwen3": "model.layers.0.self_attn.q_norm.weight", "t5": "encoder.block.0.layer.0.SelfAttention.q.weight"}
    assert expected[name] in into
    if name == "gpt_neox":  # the query rows of each head: [q_h k_h v_h] per head
        edit = next(e for e in result["plan"].edits if e.kind == "attention_scale")
        assert edit.fold["into"][0]["ranges"] == [[0, 64], [192, 256]]


_RELOAD = """
import json, sys, torch, transformers
results = {}
for name, folder in json.loads(sys.argv[1]).items():
    config = transformers.AutoConfig.from_pretrained(folder)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(folder).eval()
    saved = torch.load(folder + "/expected.pt")
    with torch.no_grad():
        logits = model(**saved["inputs"]).logits
    results[name] = float((logits - saved["logits"]).abs().max() / saved["logits"].abs().max())
assert not [m for m in sys.modules if m.startswith("muprewrite")]
print(json.dumps(results))
"""


def test_hf_save_pretrained_reloads_without_muprewrite(tmp_path, capsys, monkeypatch):
    """save_pretrained (gpt2 through the command line) -> from_pretrained in a process that never
    imports muprewrite -> the muP model's logits; then back to muP from the reloaded files."""
    monkeypatch.setenv("COLUMNS", "250")
    folders = {}
    for name in HF:
        result, inputs = hf_folded(name)
        folders[name] = tmp_path / name
        if name == "gpt2":
            torch.save(result["mup"].state_dict(), tmp_path / "gpt2-mup.pt")
            result["plan"].save(tmp_path / "gpt2-plan.json")
            code = main(["fold", "hf:gpt2", "--plan", tmp_path / "gpt2-plan.json", "--checkpoint",
                         tmp_path / "gpt2-mup.pt", "--out", folders[name]])
            assert code == 0, capsys.readouterr().err
            assert "untied from transformer.wte.weight" in capsys.readouterr().out
        else:
            result["folded"].save_pretrained(folders[name])
        result["mup"].eval()
        with torch.no_grad():
            expected = _output(result["mup"], inputs)
        torch.save({"inputs": inputs, "logits": expected}, folders[name] / "expected.pt")
    done = subprocess.run([sys.executable, "-c", _RELOAD, json.dumps({k: str(v) for k, v in folders.items()})],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    differences = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(differences) == set(HF) and max(differences.values()) <= OUTPUT_RTOL, differences
    transformers = pytest.importorskip("transformers")
    for name in ("gpt2", "t5"):  # tied again from the reloaded files: the muP model, bit for bit
        auto = transformers.AutoModelForSeq2SeqLM if name == "t5" else transformers.AutoModelForCausalLM
        result, _ = hf_folded(name)
        back = muprewrite.apply_plan(auto.from_pretrained(folders[name]), result["plan"], from_folded=True)
        assert back.config.tie_word_embeddings and back.lm_head.weight is back.get_input_embeddings().weight
        assert max_state_difference(back, result["mup"]) == 0.0


# 4. the command line -------------------------------------------------------------------------------

def test_fold_command_writes_a_state_dict_for_the_plain_class(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result, inputs = trained_example("gpt_sdpa")
    torch.save(result.model.state_dict(), tmp_path / "mup.pt")
    result.save(tmp_path / "plan")
    code = main(["fold", ROOT / "examples" / "gpt_sdpa.py", "--plan", tmp_path / "plan" / "plan.json",
                 "--checkpoint", tmp_path / "mup.pt", "--out", tmp_path / "sp"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "blocks.0.attn.c_attn.weight rows 0:128" in out and "wrote" in err
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == ["fold.md", "model.pt"]
    plain = importlib.import_module("gpt_sdpa").make_model(128).eval()
    plain.load_state_dict(torch.load(tmp_path / "sp" / "model.pt"))
    result.model.eval()
    assert relative(_output(plain, inputs), _output(result.model, inputs)) <= OUTPUT_RTOL


def test_fold_command_bad_input_is_one_line(tmp_path, capsys):
    tiny = tiny_plan(query="tanh")
    tiny.plan.save(tmp_path / "tiny.json")
    result, _ = trained_example("gpt_sdpa")
    result.save(tmp_path)
    torch.save(result.model.state_dict(), tmp_path / "mup.pt")
    (tmp_path / "a-file").write_text("")
    cases = [
        (["--plan", tmp_path / "tiny.json", "--checkpoint", tmp_path / "mup.pt", "--out", tmp_path / "x"], "tanh"),
        (["--plan", tmp_path / "plan.json", "--checkpoint", tmp_path / "mup.pt", "--out", tmp_path / "a-file"],
         "not a folder"),
        (["--plan", tmp_path / "plan.json", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "x"],
         "does not exist"),
        (["--plan", tmp_path / "plan.json", "--checkpoint", tmp_path / "plan.json", "--out", tmp_path / "x"],
         "cannot read it"),
    ]
    for args, words in cases:
        code = main(["fold", ROOT / "examples" / "gpt_sdpa.py", *args])
        err = capsys.readouterr().err
        assert code == EXIT_USER_ERROR and err.startswith("error:") and words in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x" / "model.pt").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_folded_output_with_a_nan_or_infinity_of_its_own_is_caught(bad):
    from muprewrite.errors import VerificationError
    from muprewrite.passes.fold import compare_outputs

    reference = nn.Linear(4, 3)
    folded = copy.deepcopy(reference)
    with torch.no_grad():
        folded.bias[0] = bad  # a NaN compares false with any bound: it must not pass for "close"
    inputs = (torch.randn(2, 4),)
    assert compare_outputs(reference, copy.deepcopy(reference), inputs) == 0.0
    with pytest.raises(VerificationError, match="differs from the muP model by inf"):
        compare_outputs(reference, folded, inputs)
