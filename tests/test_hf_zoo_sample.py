"""A representative sample of the Hugging Face zoo (benchmarks/hf_zoo.py runs all of it): each
model type's default config made small, compiled with verification, and its plan checked against
what the model does at run time, observed independently of the compiler: no unclassified
parameter, every growing matrix hidden with Adam LR 1/m, the head a readout, and an attention
scale edit wherever the observed d_head grows with width (none when heads grow)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import hf_zoo  # noqa: E402

SAMPLE = {
    "mixtral": "MoE through transformers' grouped_mm experts, router a readout",
    "qwen3_moe": "MoE with per-expert intermediate size",
    "gpt_oss": "MoE, attention sinks concatenated to the logits",
    "deepseek_v3": "MLA low-rank q/kv, shared experts",
    "bloom": "ALiBi through alibi.baddbmm(batch1=..., batch2=...) by keyword",
    "gemma2": "tanh soft-capped attention logits and final logits",
    "albert": "one shared layer run several times per forward",
    "falcon": "x @ weight.T projections",
    "funnel": "several q-k terms per softmax (content and position)",
    "t5": "encoder-decoder, unscaled attention, relative position bias, tied readout constant",
    "bart": "encoder-decoder with cross attention",
    "vit": "vision: patch convolution, cls token placed by cat",
    "swin": "vision: windowed attention with relative position bias",
    "mobilebert": "readout built from a concatenated weight",
    "beit": "cls token through cat into a residual stream and a pooled mean",
    "mamba": "selective scan state allocated with A_log.new_zeros (a metadata read, no use)",
    "gemma4": "the newest Gemma: per-layer embeddings, a readout scaled by a buffer",
}


@pytest.mark.parametrize("model_type", sorted(SAMPLE))
def test_sample_model_gets_a_plan_passing_every_check(model_type):
    record = hf_zoo.check_model(model_type)
    assert record["outcome"] == "ok", (SAMPLE[model_type], record.get("failures") or record.get("message"))


def test_with_heads_growing_no_attention_scale_changes():
    record = hf_zoo.check_model("llama", grow="heads")
    assert record["outcome"] == "ok", record.get("failures") or record.get("message")


HUB_CONFIGS = Path(__file__).resolve().parent / "fixtures" / "hf_configs"
SLOW_CONFIGS = {"DeepSeek-V3", "gpt-oss-20b"}  # ~20 s each on 2 cores: with MUPREWRITE_SLOW_TESTS=1


def hub_params():
    import os

    slow = os.environ.get("MUPREWRITE_SLOW_TESTS") == "1"
    return [pytest.param(p.name, marks=() if slow or p.name not in SLOW_CONFIGS else
                         pytest.mark.skip(reason="slow: MUPREWRITE_SLOW_TESTS=1"))
            for p in sorted(HUB_CONFIGS.iterdir()) if p.is_dir()]


@pytest.mark.parametrize("name", hub_params())
def test_real_hub_config_converts_at_its_own_size(name):
    """The published config is the target width (2 layers kept): verified, every growing matrix
    hidden with Adam LR 1/m, one attention edit per layer (d_head grows), the LM head a readout."""
    import muprewrite
    from muprewrite import hf

    make_model = hf.factory(str(HUB_CONFIGS / name))
    base, delta, target = hf.widths(make_model)
    assert target == make_model.width_rule["target_hidden"]
    plan = muprewrite.mupify(make_model, base=base, delta=delta, target=target,
                             example_inputs=hf.example_inputs(make_model), materialize=False).plan
    params = plan.to_dict()["parameters"]
    assert all(hf_zoo.hidden_rule_holds(p) for p in params.values())
    attention = [e for e in plan.edits if e.kind == "attention_scale"]
    assert len({e.module for e in attention}) == 2  # one attention module per layer
    assert any(e.kind == "readout_multiplier" and e.module == "lm_head" for e in plan.edits)
