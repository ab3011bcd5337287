"""Config field-name patterns, and the sizes of a bare model type made small."""

VOCAB = 256  # a bare model type's vocabulary, and the range example token ids are drawn from
SMALL_HIDDEN = 256  # a bare model type's target hidden size
SMALL_HEADS = {"head_dim": 2, "heads": 8}  # a bare type's head count at the target, by `grow`
SMALL_GROUPED_HEADS = {"head_dim": (4, 2), "heads": (8, 4)}  # ... query and key/value heads where they are grouped
SMALL_LAYERS, SMALL_EXPERTS, SMALL_TOP_K, SMALL_POSITIONS = 2, 4, 2, 128
SMALL_IMAGE, SMALL_PATCH = 32, 8
SEQUENCE_LENGTH = 16  # the length of example token sequences (muprewrite.hf.example_inputs: shape (2, 16))
SIZE_STEP, HEAD_SIZE_STEP = 16, 32  # a bare type's scaled sizes are multiples of these (exact at width / 8)
MIN_BASE, MIN_HEAD_SIZE = 64, 8  # the default base width of a real config: at least this wide, heads this big
PROBE_GROWTH = 1.25  # a base width at which the model's structure changes: the next one tried is this much wider
BASE_WIDTH, TARGET_WIDTH = SMALL_HIDDEN // 4, SMALL_HIDDEN  # the default widths of a bare model type
GROWS = ("head_dim", "heads")
TASKS = {  # task -> the transformers auto mapping that names its model class per model type
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "seq2seq-lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}
DROPPED_KEYS = ("quantization_config", "torch_dtype", "dtype", "auto_map", "_name_or_path", "transformers_version")

# Field-name patterns (full match, on the field's name or any alias of it in `attribute_map`).
WIDTH_PATTERNS = {
    "hidden": r"hidden_size|d_model|n_embd|dim|embed_dim|model_dim|d_embed|emb_dim|embedding_size|embedding_dim"
              r"|hidden_dim|word_embed_proj_dim|hidden_sizes|.*_hidden_sizes?|hidden_size_.*|.*_embed_dim|.*_embds?_dim"
              r"|embed_dims|(.*_)?(in|out|mid)_channels|pooler_\w*size",
    "intermediate": r".*intermediate_size.*|n_inner|d_ff|dff|dim_ff|d_inner|.*ffn_dim|.*ffn_hidden_size"
                    r"|.*bottleneck_size",
    "rank": r".*_rank",
    "head_size": r"head_dim|d_kv|d_head|dim_head|kv_channels|attention_head_size|.*_head_dim|.*_d_head|rotary_dim"
                 r"|query_pre_attn_scalar",
    "heads": r".*heads|.*heads_per_layer|(.*_)?n_head",
}
# A float the model multiplies its own channel counts by (MobileNet's "depth" is channel depth): where the
# config has one, it is the width knob, and width = MULTIPLIER_UNIT x the multiplier (steps of 1/32).
WIDTH_MULTIPLIER = r"width_multiplier|width_coefficient|depth_multiplier"
MULTIPLIER_UNIT, MULTIPLIER_STEP = 256, 8
KV_HEADS = r".*(key_value|kv|key).*"  # head counts a bare type gets fewer of (grouped-query attention)
GROUPS = r"(.*_)?n_groups|num_groups|n_group|topk_group|num_expert_group"  # must divide a head, channel or expert count
EXPERTS = r"(num_|n_)?(local_|routed_|moe_)?experts|moe_num_experts"
TOP_K = r".*experts_per_tok(en)?|moe_top_?k|moe_k|top_k_experts|num_selected_experts"
SHARED_EXPERTS = r"(num_|n_|moe_num_)shared_experts"
POSITIONS = r"max_position_embeddings|n_positions|n_ctx|max_seq_len|max_sequence_length|max_\w+_positions" \
            r"|max_\w+_position_embeddings"
LAYER_INTERVAL = r".*(every|per|period|interval|freq|step|offset|index|idx|start|end|group_size|loop).*"
LAYER_SUBSET = r".*(window|dense|shared|nextn|mtp|skip).*"  # how many of the layers are special
LAYER_INDICES = r"(?!.*(num|numb|n)_).*_(layers|idxs|indices|layer_ids)"
# Longformer-style inputs are padded to a multiple of `attention_window`; a vision window must fit the last stage.
SMALL_WINDOW = {"attention_window": 16, "window_size": 2}
# A feature size (the width of some tensor) that the model may compare with the hidden size (LUKE adds a
# projection when entity_emb_size != hidden_size); sequence, window, state and count sizes are not feature sizes.
FEATURE_SIZE = r"(?!.*(vocab|chunk|block|window|bucket|kernel|patch|image|batch|seq|position|state|cache|stride" \
               r"|group|max_|min_|num_)).*_(size|dim|dims|channels|width|dimension|features)"
POSITION_SHAPE = r".*pos\w*_shape"  # positions factored into axes (Reformer's axial_pos_shape: prod = sequence length)
ROTARY_FRACTION = r"partial_rotary_factor|rotary_pct"  # the fraction of each head that rotary embeddings rotate
TOKEN_ID = r".*token_ids?|.*token_index"
TEXT_TOKENS = r"(pad|bos|eos|unk|sep|cls|mask|decoder_start|forced_bos|forced_eos)_token_ids?"
TOKENS_PER_IMAGE = r".*tokens_per_image"  # placeholder tokens an image's features fill
PLACEHOLDER_ID = r"(image|audio|video)_token_(id|index)"  # the id standing for a modality's features
