"""x-transformers (lucidrains): its TransformerWrapper with a Decoder or Encoder and its attention
options. Width: dim = width, attn_dim_head = width / 2 with 2 heads (d_head grows), FFN 4 x width."""
from __future__ import annotations

from ._spec import SEQ, VOCAB, Spec, randn, tokens

PACKAGE = "x-transformers"


def lm(kind: str = "Decoder", wrapper: dict | None = None, **layer):
    def make_model(width: int):
        import x_transformers

        layers = getattr(x_transformers, kind)(dim=width, depth=2, heads=2, attn_dim_head=width // 2, **layer)
        return x_transformers.TransformerWrapper(num_tokens=VOCAB, max_seq_len=2 * SEQ, attn_layers=layers,
                                                 **(wrapper or {}))
    return make_model


def vit(width: int):
    import x_transformers

    layers = x_transformers.Encoder(dim=width, depth=2, heads=2, attn_dim_head=width // 2)
    return x_transformers.ViTransformerWrapper(image_size=32, patch_size=8, num_classes=10, attn_layers=layers)


def spec(make_model, scales="dim, attn_dim_head = width/2 (2 heads), FFN 4 x width", **kw):
    return Spec(PACKAGE, make_model, tokens, scales, **kw)


SPECS = {
    "xt_decoder": spec(lm()),
    "xt_encoder": spec(lm("Encoder")),
    "xt_rotary": spec(lm(rotary_pos_emb=True), note="rotary position embedding"),
    "xt_alibi": spec(lm(alibi_pos_bias=True, alibi_num_heads=2), note="ALiBi bias"),
    "xt_qk_norm": spec(lm(attn_qk_norm=True), note="qk l2-norm with learned scale 10"),
    "xt_sigmoid_attn": spec(lm(attn_sigmoid=True), note="sigmoid attention (no softmax)"),
    "xt_gqa_glu": spec(lm(ff_glu=True, attn_kv_heads=1), note="2 query heads, 1 kv head; GLU FFN"),
    "xt_tied": spec(lm(wrapper={"tie_embedding": True}), note="input embedding tied to the readout"),
    "xt_mem_kv": spec(lm(attn_num_mem_kv=4), note="learned memory key/values concatenated to k and v"),
    "xt_vit": Spec(PACKAGE, vit, lambda: (randn(2, 3, 32, 32),),
                   "dim, attn_dim_head = width/2 (2 heads), FFN 4 x width", note="ViTransformerWrapper"),
}
