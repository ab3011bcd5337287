"""muprewrite.hf's general width rule on real Hugging Face configs and bare model types.

Fast: models are only built on the meta device (no mupify, except the zoo worker's test). The
configs in fixtures/hf_configs/ are the published ones with fewer layers and a smaller vocabulary
(see its README).
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import muprewrite  # noqa: E402
from muprewrite import hf  # noqa: E402
from muprewrite.hf import inputs as hf_inputs  # noqa: E402
from muprewrite.errors import MuRewriteError  # noqa: E402
from muprewrite.loading import load_model_file  # noqa: E402

CONFIGS = Path(__file__).parent / "fixtures" / "hf_configs"
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

# name -> (model class, target hidden, (base, delta, target), fields the rule must scale)
REAL = {
    "Qwen3-8B": ("Qwen3ForCausalLM", 4096, (256, 512, 4096), {"intermediate_size": 12288, "head_dim": 128}),
    "Mistral-7B-v0.1": ("MistralForCausalLM", 4096, (256, 512, 4096), {"intermediate_size": 14336}),
    "gemma-2-9b": ("Gemma2ForCausalLM", 3584, (112, 224, 3584),
                   {"intermediate_size": 14336, "head_dim": 256, "query_pre_attn_scalar": 256}),
    "Mixtral-8x7B-v0.1": ("MixtralForCausalLM", 4096, (256, 512, 4096), {"intermediate_size": 14336}),
    "DeepSeek-V3": ("DeepseekV3ForCausalLM", 7168, (896, 1792, 7168),
                    {"intermediate_size": 18432, "moe_intermediate_size": 2048, "kv_lora_rank": 512,
                     "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}),
    "gpt-oss-20b": ("GptOssForCausalLM", 2880, (360, 720, 2880), {"intermediate_size": 2880, "head_dim": 64}),
    "Phi-3-mini-4k-instruct": ("Phi3ForCausalLM", 3072, (384, 768, 3072), {"intermediate_size": 8192}),
}
FIXED = ["vocab_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
         "rope_parameters", "sliding_window", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
         "layer_types", "n_group", "rms_norm_eps"]


def on_meta(make_model, width):
    with torch.device("meta"):
        return make_model(width)


def value_at(config, path: str):
    for name in path.split("."):
        config = getattr(config, name)
    return config


def scaled(value, width: int, target: int):
    """The rule's value at `width` of a field worth `value` at the target (exact at these widths)."""
    if isinstance(value, list):
        return [scaled(v, width, target) for v in value]
    assert value * width % target == 0, (value, width, target)
    return value * width // target


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and not key.startswith(("rope", "id2label", "label2id")):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def assert_follows_the_rule(make_model, widths):
    """Hidden size == width, every scaled field scaled, every other field as at the target."""
    rule = make_model.width_rule
    target_values = flat(on_meta(make_model, rule["target_hidden"]).config.to_dict())
    for width in widths:
        config = on_meta(make_model, width).config
        assert value_at(config, rule["hidden_field"]) == width
        for path, value in rule["scaled"].items():
            assert value_at(config, path) == scaled(value, width, rule["target_hidden"]), (path, width)
        values = flat(config.to_dict())
        moving = set(rule["scaled"]) | set(rule["derived"])
        for key, value in values.items():
            if key not in moving:
                assert value == target_values.get(key, value), (key, width)


# Real configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_builds_at_base_delta_and_target(name):
    model_class, target, widths, must_scale = REAL[name]
    make_model = hf.factory(CONFIGS / name / "config.json")
    rule = make_model.width_rule
    assert rule["model_class"] == model_class and rule["target_hidden"] == target
    assert hf.widths(make_model) == widths
    assert {k: rule["scaled"][k] for k in must_scale} == must_scale
    assert rule["scaled"]["hidden_size"] == target
    assert not set(FIXED) & set(rule["scaled"])
    assert_follows_the_rule(make_model, widths)
    model = on_meta(make_model, widths[0])
    assert type(model).__name__ == model_class


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_keeps_its_other_fields(name):
    published = json.loads((CONFIGS / name / "config.json").read_text())
    make_model = hf.factory(CONFIGS / name)
    base, _, target = hf.widths(make_model)
    configs = [on_meta(make_model, w).config for w in (base, target)]
    for key in ("vocab_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "max_position_embeddings", "sliding_window", "num_local_experts", "n_routed_experts",
                "num_experts_per_tok", "layer_types", "rms_norm_eps", "tie_word_embeddings"):
        if key in published:
            assert [getattr(c, key) for c in configs] == [published[key]] * 2, key
    assert configs[0].rope_parameters == configs[1].rope_parameters


def test_deepseek_low_rank_attention_scales_every_rank_and_head_size():
    make_model = hf.factory(CONFIGS / "DeepSeek-V3")
    config = on_meta(make_model, 896).config
    assert (config.kv_lora_rank, config.q_lora_rank) == (64, 192)
    assert (config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim) == (16, 8, 16)
    assert config.qk_head_dim == 24  # derived by the config: nope + rope
    assert config.num_attention_heads == 128 and config.n_routed_experts == 8


def test_config_file_and_folder_and_object_give_the_same_rule():
    path = CONFIGS / "Qwen3-8B" / "config.json"
    from_file, from_folder = hf.factory(path), hf.factory(str(path.parent))
    config = transformers.Qwen3Config.from_dict(json.loads(path.read_text()))
    from_object = hf.factory(config)
    assert from_file.width_rule["scaled"] == from_folder.width_rule["scaled"] == from_object.width_rule["scaled"]
    assert hf.widths(from_object) == hf.widths(from_file) == (256, 512, 4096)
    assert on_meta(from_object, 512).config.head_dim == 16
    assert from_folder.width_rule["source"].startswith("file:")
    assert from_object.width_rule["source"] == "config"


def test_cut_vocabulary_moves_token_ids_inside_it():
    make_model = hf.factory(CONFIGS / "gpt-oss-20b")
    adjusted = make_model.width_rule["adjusted"]
    assert adjusted["token_ids"] == {"pad_token_id": 1023, "eos_token_id": 1022}
    assert "quantization_config" in adjusted["dropped"]
    config = on_meta(make_model, 360).config
    assert config.pad_token_id < config.vocab_size and config.eos_token_id < config.vocab_size
    assert on_meta(make_model, 360).model.embed_tokens.padding_idx == 1023


# grow ---------------------------------------------------------------------------------------


def test_grow_head_dim_keeps_heads_and_grows_head_size():
    make_model = hf.factory(CONFIGS / "Qwen3-8B", grow="head_dim")
    configs = [on_meta(make_model, w).config for w in (256, 512, 4096)]
    assert [c.head_dim for c in configs] == [8, 16, 128]
    assert [(c.num_attention_heads, c.num_key_value_heads) for c in configs] == [(32, 8)] * 3


def test_grow_heads_keeps_head_size_and_grows_heads_in_their_ratio():
    make_model = hf.factory(CONFIGS / "Qwen3-8B", grow="heads")
    rule = make_model.width_rule
    assert rule["grow"] == "heads" and "head_dim" not in rule["scaled"]
    assert hf.widths(make_model) == (512, 1024, 4096)  # 8 kv heads at 4096: one at 512
    configs = [on_meta(make_model, w).config for w in (512, 1024, 4096)]
    assert [c.head_dim for c in configs] == [128] * 3
    assert [(c.num_attention_heads, c.num_key_value_heads) for c in configs] == [(4, 1), (8, 2), (32, 8)]
    assert_follows_the_rule(make_model, (512, 1024))


def test_grow_heads_on_a_bare_type_with_derived_head_size():
    make_model = hf.factory("llama", grow="heads")
    base, delta, target = hf.widths(make_model)
    assert (base, delta, target) == (64, 128, 256)
    configs = [on_meta(make_model, w).config for w in (base, delta, target)]
    assert len({c.head_dim for c in configs}) == 1
    heads = [(c.num_attention_heads, c.num_key_value_heads) for c in configs]
    assert heads == [(2, 1), (4, 2), (8, 4)]


def test_grow_must_be_head_dim_or_heads():
    with pytest.raises(MuRewriteError, match="grow must be one of head_dim, heads"):
        hf.factory("llama", grow="width")


# Bare model types ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_type, model_class", [
    ("qwen3", "Qwen3ForCausalLM"), ("mixtral", "MixtralForCausalLM"), ("gemma2", "Gemma2ForCausalLM"),
    ("bloom", "BloomForCausalLM"), ("t5", "T5ForConditionalGeneration"), ("vit", "ViTForImageClassification"),
    ("deepseek_v3", "DeepseekV3ForCausalLM"), ("bert", "BertForMaskedLM"), ("swin", "SwinForImageClassification"),
])
def test_bare_type_is_small_and_follows_the_rule(model_type, model_class):
    make_model = hf.factory(model_type)
    rule = make_model.width_rule
    assert rule["model_class"] == model_class and rule["source"] == "type"
    assert hf.widths(make_model) == (hf.BASE_WIDTH, 2 * hf.BASE_WIDTH, hf.TARGET_WIDTH) == (64, 128, 256)
    assert_follows_the_rule(make_model, (64, 128))
    config = on_meta(make_model, 64).config
    text = config.get_text_config()
    assert getattr(text, "vocab_size", hf.VOCAB) <= hf.VOCAB
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        assert value is None or value < getattr(text, "vocab_size", hf.VOCAB), name


def test_bare_moe_type_stays_moe_with_few_experts():
    config = on_meta(hf.factory("mixtral"), 64).config
    assert (config.num_local_experts, config.num_experts_per_tok, config.num_hidden_layers) == (4, 2, 2)
    deepseek = on_meta(hf.factory("deepseek_v3"), 64).config
    assert deepseek.n_routed_experts == 4 and deepseek.first_k_dense_replace == 0  # every layer MoE


def test_bare_types_group_queries_where_the_model_does():
    llama = on_meta(hf.factory("llama"), 64).config
    assert (llama.num_attention_heads, llama.num_key_value_heads) == (4, 2)
    gpt2 = on_meta(hf.factory("gpt2"), 64).config
    assert gpt2.n_head == 2
    deepseek = on_meta(hf.factory("deepseek_v3"), 64).config  # latent attention: one kv head per query head
    assert deepseek.num_key_value_heads == deepseek.num_attention_heads


def test_per_stage_lists_scale_entry_by_entry():
    make_model = hf.factory("resnet")
    rule = make_model.width_rule
    assert rule["hidden_field"] == "hidden_sizes" and rule["scaled"]["hidden_sizes"] == [32, 64, 128, 256]
    config = on_meta(make_model, 64).config
    assert config.hidden_sizes == [8, 16, 32, 64] and config.depths == [1, 1, 1, 1]
    swin = on_meta(hf.factory("swin"), 64).config
    assert swin.hidden_size == 64 and swin.num_heads == on_meta(hf.factory("swin"), 256).config.num_heads


def test_per_layer_lists_keep_their_length():
    make_model = hf.factory("gemma2")
    configs = [on_meta(make_model, w).config for w in (64, 256)]
    assert [c.layer_types for c in configs] == [["sliding_attention", "full_attention"]] * 2
    gpt_oss = [on_meta(hf.factory(CONFIGS / "gpt-oss-20b"), w).config for w in (360, 2880)]
    assert [c.layer_types for c in gpt_oss] == [["sliding_attention", "full_attention"]] * 2


def test_per_layer_size_lists_are_cut_to_the_depth_and_scaled_entry_by_entry():
    make_model = hf.factory("gemma3n_text")  # one intermediate size per layer
    assert make_model.width_rule["scaled"]["intermediate_size"] == [2048, 2048]
    configs = [on_meta(make_model, w).config for w in (64, 128)]
    assert [c.intermediate_size for c in configs] == [[512, 512], [1024, 1024]]
    assert [len(c.layer_types) for c in configs] == [2, 2]


def test_rotary_part_of_a_head_keeps_a_head_size_step_at_the_target():
    make_model = hf.factory("qwen3_5_text")  # rotates a quarter of each head; m-rope cuts fixed sections
    base, delta, target = hf.widths(make_model)
    configs = [on_meta(make_model, w).config for w in (base, target)]
    factor = configs[0].rope_parameters["partial_rotary_factor"]
    assert [c.head_dim for c in configs] == [32, 128] and factor * configs[0].head_dim == 8
    assert make_model.width_rule["scaled"]["linear_key_head_dim"] == 32  # no rotary there: the usual step


def test_feature_size_keeps_its_relation_to_the_hidden_size():
    """LUKE projects its entity embeddings when entity_emb_size != hidden_size: the small config keeps
    them apart (its default has 256 vs 768), a config where they are equal keeps them equal at every width."""
    make_model = hf.factory("luke")
    for width in hf.widths(make_model):
        model = on_meta(make_model, width)
        assert model.config.entity_emb_size == 80 and hasattr(model.luke.entity_embeddings, "entity_embedding_dense")
    tied = transformers.LukeConfig(vocab_size=256, entity_vocab_size=256, hidden_size=256, entity_emb_size=256,
                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    make_tied = hf.factory(tied)
    assert make_tied.width_rule["scaled"]["entity_emb_size"] == 256
    for width in hf.widths(make_tied):
        model = on_meta(make_tied, width)
        assert model.config.entity_emb_size == width
        assert not hasattr(model.luke.entity_embeddings, "entity_embedding_dense")


def test_factored_positions_multiply_to_the_example_sequence_length():
    make_model = hf.factory("reformer")  # training requires prod(axial_pos_shape) == sequence length
    config = on_meta(make_model, 64).config
    assert list(config.axial_pos_shape) == [4, 4]
    assert hf.example_inputs(make_model)["input_ids"].shape[1] == 16


def test_base_width_skips_widths_where_a_rounded_size_stops_growing():
    """BiT rounds its bottleneck channels up to multiples of 8 (at least 8): at 64 / 128 / 256 one is
    8, 8, 16, which muprewrite would have to call finite; the next consistent base is taken."""
    from muprewrite.hf.rule import _same_structure

    make_model = hf.factory("bit")
    base, delta, target = hf.widths(make_model)
    assert (base, delta, target) == (80, 160, 256)
    shapes = [{n: tuple(p.shape) for n, p in on_meta(make_model, w).named_parameters()} for w in (base, delta, target)]
    assert _same_structure(*shapes)
    assert not make_model.rule.consistent(64)
    assert not _same_structure({"w": (8,)}, {"w": (8,)}, {"w": (16,)}) and _same_structure(
        {"w": (8, 3)}, {"w": (16, 3)}, {"w": (16, 3)})
    assert not _same_structure({"w": (8,)}, {"w": (16,)}, {"w": (32,), "dense": (4,)})


def test_fixed_fields_stay_fixed_and_are_reported():
    make_model = hf.factory("llama", fixed={"intermediate_size": 100, "num_hidden_layers": 3, "n_head": 4})
    rule = make_model.width_rule
    assert "intermediate_size" not in rule["scaled"]
    assert rule["fixed_overrides"] == {"intermediate_size": 100, "num_hidden_layers": 3, "n_head": 4}
    configs = [on_meta(make_model, w).config for w in (64, 128)]
    assert [(c.intermediate_size, c.num_hidden_layers) for c in configs] == [(100, 3)] * 2
    with pytest.raises(MuRewriteError, match="is the width; it cannot be fixed"):
        hf.factory("llama", fixed={"hidden_size": 64})


def test_widen_overrides_the_rule_with_exactly_its_fields():
    make_model = hf.factory("llama", widen={"hidden_size": 1, "intermediate_size": 3})
    assert make_model.width_rule["widen"] == {"hidden_size": 1, "intermediate_size": 3}
    config = on_meta(make_model, 32).config
    assert (config.hidden_size, config.intermediate_size, config.head_dim) == (32, 96, 8)


def test_width_rule_is_json_and_says_what_was_done():
    make_model = hf.factory("qwen3")
    rule = make_model.width_rule
    assert json.loads(json.dumps(rule)) == rule
    assert rule["model_type"] == "qwen3" and rule["grow"] == "head_dim" and rule["target_hidden"] == 256
    assert set(rule["scaled"]) == {"hidden_size", "intermediate_size", "head_dim"}
    assert hf.widths(make_model) == (64, 128, 256)
    small = rule["adjusted"]["small_config"]
    assert small["num_hidden_layers"] == 2 and small["vocab_size"] == 256


def test_example_inputs_match_the_model():
    assert hf.example_inputs("llama")["input_ids"].shape == (2, 16)
    seq2seq = hf.example_inputs("bart")
    assert set(seq2seq) == {"input_ids", "decoder_input_ids", "attention_mask"}
    assert hf.example_inputs("vit")["pixel_values"].shape == (2, 3, 32, 32)
    assert hf.example_inputs(CONFIGS / "Qwen3-8B")["input_ids"].max() < 256
    make_model = hf.factory("t5")
    model = make_model(64).eval()
    with torch.no_grad():
        assert model(**hf.example_inputs(make_model)).logits.shape == (2, 8, 256)


# Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    ("nope", "unknown Hugging Face model 'nope'"),
    ("no/such/config.json", "not found"),
    (str(CONFIGS / "missing"), "not found"),
])
def test_bad_model_is_a_one_line_error(bad, message):
    with pytest.raises(MuRewriteError, match=message) as error:
        hf.factory(bad)
    assert "\n" not in str(error.value) and "llama" in str(error.value)


def test_bad_config_files_are_one_line_errors(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "alien.json").write_text(json.dumps({"model_type": "no_such_model", "hidden_size": 64}))
    with pytest.raises(MuRewriteError, match="is not a JSON config"):
        hf.factory(tmp_path / "broken.json")
    with pytest.raises(MuRewriteError, match="model_type 'no_such_model'"):
        hf.factory(tmp_path / "alien.json")
    with pytest.raises(MuRewriteError, match="no seq2seq-lm model"):
        hf.factory("llama", task="seq2seq-lm")


def test_bad_width_is_a_one_line_error():
    with pytest.raises(MuRewriteError, match="width must be a positive integer"):
        hf.factory("llama")(0)


# The command line ---------------------------------------------------------------------------


def test_cli_loads_a_real_config_with_its_widths_and_grow():
    factory, module = load_model_file(f"hf:{CONFIGS / 'Qwen3-8B'}", "heads")
    assert (module.BASE_WIDTH, module.DELTA_WIDTH, module.TARGET_WIDTH) == (512, 1024, 4096)
    assert factory.width_rule["grow"] == "heads"
    assert module.example_inputs()["input_ids"].shape == (2, 16)
    _, bare = load_model_file("hf:llama")
    assert (bare.BASE_WIDTH, bare.TARGET_WIDTH) == (64, 256)


# Property: consistent scaling ---------------------------------------------------------------

PROPERTY_TYPES = ["llama", "qwen3", "t5", "mixtral", "gpt2"]
_FACTORIES = {}


def cached_factory(model_type, grow):
    """hypothesis runs the test many times: build each factory once."""
    if (model_type, grow) not in _FACTORIES:
        _FACTORIES[model_type, grow] = hf.factory(model_type, grow=grow)
    return _FACTORIES[model_type, grow]


@settings(max_examples=25, deadline=None)
@given(model_type=st.sampled_from(PROPERTY_TYPES), grow=st.sampled_from(["head_dim", "heads"]),
       steps=st.lists(st.integers(1, 12), min_size=2, max_size=3, unique=True))
def test_scaled_fields_are_proportional_to_the_width(model_type, grow, steps):
    """At any multiple of the rule's width step, every scaled field is exactly field x width / target
    and the hidden size is the width; with grow="heads" the head size never moves."""
    make_model = cached_factory(model_type, grow)
    rule = make_model.width_rule
    head_sizes = set()
    for width in (rule["width_multiple"] * s for s in steps):
        config = on_meta(make_model, width).config
        assert value_at(config, rule["hidden_field"]) == width
        for path, value in rule["scaled"].items():
            assert value_at(config, path) == scaled(value, width, rule["target_hidden"]), (path, width)
        text = config.get_text_config()
        head_sizes.add(getattr(text, "head_dim", None) or getattr(text, "d_kv", None))
    if grow == "heads":
        assert len(head_sizes) == 1, head_sizes


# The zoo benchmark's worker -----------------------------------------------------------------


def test_zoo_worker_checks_one_small_model_in_process():
    import hf_zoo

    record = hf_zoo.check_model("gpt2")
    assert record["model_type"] == "gpt2" and record["task"] == "causal-lm"
    assert tuple(record["widths"]) == (64, 128, 256)
    assert record["outcome"] in ("ok", "wrong", "error", "crash")  # the factory built it ("build" is ours)
    if record["outcome"] in ("ok", "wrong"):
        assert record["seconds"] > 0 and record["parameters"] > 0
    built = hf_zoo.build_model_type("gpt2")
    assert built["readouts"] == [["lm_head.weight", "transformer.wte.weight"]]  # tied: either name
    assert built["attention"] == {"transformer.h.0.attn": 1, "transformer.h.1.attn": 1}


def test_zoo_plan_checks_name_each_failure():
    import hf_zoo

    hidden = {"shape": [8, 8], "infinite": [True, True], "role": "hidden", "lr_mult": {"adam": 0.25},
              "uses": [{"module": "mlp", "role": "hidden", "fan_in_mult": 4.0}]}
    head = {"shape": [10, 8], "infinite": [False, True], "role": "output", "lr_mult": {"adam": 1.0},
            "uses": [{"module": "head", "role": "output", "fan_in_mult": 4.0}]}
    plan = {"parameters": {"mlp.weight": hidden, "head.weight": head},
            "edits": [{"kind": "attention_scale", "module": "attn"}]}
    readout = [["head.bias", "head.weight"]]
    assert hf_zoo.plan_failures(plan, readout, {"attn": 1}, "head_dim") == []
    wrong = {**hidden, "lr_mult": {"adam": 1.0}}
    unclassified = {**head, "role": "unclassified", "uses": [{"module": "head", "role": "unclassified"}]}
    bad = {"parameters": {"mlp.weight": wrong, "x": unclassified}, "edits": []}
    failures = hf_zoo.plan_failures(bad, readout, {"attn": 1}, "head_dim")
    assert [f.split(":")[0] for f in failures] == ["unclassified", "hidden rule", "output", "attention_scale"]
    assert hf_zoo.plan_failures(plan, readout, {"attn": 1}, "heads")[0].startswith("attention_scale")
    assert hf_zoo.plan_failures(plan, [], {"attn": 1}, "head_dim") == [
        "output: no weight product with an infinite fan-in computes the logits"]
    assert hf_zoo.plan_failures(plan, [["mlp.weight"]], {"attn": 1}, "head_dim")[0].startswith(
        "output: no parameter of the readout mlp.weight")


class Readout(torch.nn.Module):
    """Embedding (width) -> Linear to a fixed 8 -> Linear to the vocabulary (RemBERT's head shape), or
    the embedding tied as the readout (Perceiver's)."""

    def __init__(self, width: int, tied: bool = False):
        super().__init__()
        self.embed, self.tied = torch.nn.Embedding(16, width), tied
        self.dense, self.decoder = torch.nn.Linear(width, 8), torch.nn.Linear(8, 16)

    def forward(self, input_ids):
        hidden = self.embed(input_ids)
        if self.tied:
            return torch.matmul(hidden, self.embed.weight.transpose(0, 1))
        return self.decoder(torch.relu(self.dense(hidden)))


@pytest.mark.parametrize("tied, expected", [(False, [["dense.bias", "dense.weight"]]), (True, [["embed.weight"]])])
def test_zoo_readout_is_the_last_product_with_an_infinite_fan_in(tied, expected):
    import hf_zoo

    inputs = {"input_ids": torch.tensor([[1, 2, 3]])}
    with torch.no_grad():
        traced = [hf_zoo.weight_products(Readout(width, tied), inputs) for width in (4, 8)]
    assert hf_zoo.readouts(*traced) == expected  # the fixed-fan-in decoder is passed through


class Pooling(torch.nn.Module):
    """Siglip's pooling head: a learned probe attending over the tokens with nn.MultiheadAttention."""

    def __init__(self, width: int):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.randn(1, 1, width))
        self.attention = torch.nn.MultiheadAttention(width, 2, batch_first=True)

    def forward(self, hidden):
        return self.attention(self.probe.expand(hidden.shape[0], -1, -1), hidden, hidden)[0]


def test_zoo_attention_probe_sees_multi_head_attention_in_eval():
    import hf_zoo

    with torch.no_grad():
        calls = [hf_zoo.attention_modules(Pooling(w).eval(), {"hidden": torch.randn(2, 5, w)}) for w in (8, 16)]
    assert calls == [{"attention": [4]}, {"attention": [8]}]
    assert hf_zoo.growing_attention(*calls) == {"attention": 1}


# The README ---------------------------------------------------------------------------------


def test_readme_hugging_face_example_runs(monkeypatch, capsys):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Hugging Face models")[1].split("\n## ")[0]
    (block,) = [b for b in section.split("```py\n")[1:]]
    monkeypatch.chdir(Path(__file__).parent.parent)
    namespace = {}
    exec(compile(block.split("```")[0], "README.md", "exec"), namespace)
    assert (namespace["base"], namespace["delta"], namespace["target"]) == (256, 512, 4096)
    assert "'head_dim': 128" in capsys.readouterr().out


def test_bare_multimodal_type_keeps_its_image_tokens_within_the_small_images_patches():
    """Gemma 3 pools patches into mm_tokens_per_image tokens: 256 tokens cannot come out of a 32-pixel
    image's 4 x 4 patches; the count shrinks to a square that pools whole patches."""
    config = hf.factory("gemma3").config
    side = config.vision_config.image_size // config.vision_config.patch_size
    tokens = config.mm_tokens_per_image
    assert tokens <= side * side and math.isqrt(tokens) ** 2 == tokens and side % math.isqrt(tokens) == 0


def test_bare_type_gets_a_free_placeholder_id_where_its_default_leaves_none():
    config = hf.factory("voxtral").config
    others = {v for path, v in hf_inputs._token_id_fields(config) if path[-1] != "audio_token_id"}
    assert isinstance(config.audio_token_id, int) and config.audio_token_id < hf.VOCAB
    assert config.audio_token_id not in others


def test_a_width_multiplier_of_the_configs_own_is_the_width_knob():
    make_model = hf.factory("efficientnet")  # round_filters(channels x width_coefficient): the model's own
    rule, default = make_model.width_rule, make_model.config
    assert rule["hidden_field"] == "width_coefficient" and rule["target_hidden"] == 512  # 256 x 2.0
    assert set(rule["scaled"]) == {"width_coefficient", "hidden_dim"}  # the per-stage lists stay
    small = on_meta(make_model, 128).config
    assert small.width_coefficient == 0.5 == make_model.rule.hidden_at(128) and small.hidden_dim == 640
    assert small.in_channels == default.in_channels and small.out_channels == default.out_channels
    pixels = hf.example_inputs(make_model)["pixel_values"]
    for width in hf.widths(make_model):
        assert make_model(width)(pixel_values=pixels).logits.shape == (2, default.num_labels)


def test_a_real_config_with_a_depth_multiplier_is_planned_and_verified():
    import transformers

    config = transformers.MobileNetV2Config(depth_multiplier=1.4, image_size=32)
    make_model = hf.factory(config)
    base, delta, target = hf.widths(make_model)
    assert target == round(256 * 1.4) and base % make_model.rule.width_multiple == 0 and delta == 2 * base
    assert make_model(target).config.depth_multiplier == 1.4
    result = muprewrite.mupify(make_model, base=base, target=target, example_inputs=hf.example_inputs(make_model),
                               materialize=False)  # verified at delta width
    plan = result.plan
    assert plan.parameters["classifier.weight"].role == "output"  # the readout
    convs = [e for n, e in plan.parameters.items() if n.endswith("convolution.weight") and all(e.infinite[:2])]
    assert convs and all(e.role == "hidden" for e in convs)


def test_a_multiplier_beside_a_hidden_size_is_not_the_width():
    import transformers

    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, vocab_size=256, width_multiplier=2.0)  # a muP-style knob
    rule = hf.factory(config).width_rule
    assert rule["hidden_field"] == "hidden_size" and "width_multiplier" not in rule["scaled"]
