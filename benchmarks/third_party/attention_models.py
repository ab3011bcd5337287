"""Efficient-attention language models (lucidrains): performer-pytorch (FAVOR+ random features),
linear-attention-transformer, reformer-pytorch (LSH attention), local-attention (windowed) and
nystrom-attention (Nystrom landmarks, between an embedding and a head). Width: dim = width,
dim_head = width / 2 with 2 heads (d_head grows), FFN 4 x width."""
from __future__ import annotations

from ._spec import SEQ, VOCAB, Spec, TokenModel, tokens

SCALES = "dim, dim_head = width/2 (2 heads), FFN 4 x width"


def performer(width: int):
    from performer_pytorch import PerformerLM

    return PerformerLM(num_tokens=VOCAB, max_seq_len=SEQ, dim=width, depth=2, heads=2, dim_head=width // 2,
                       causal=False, nb_features=16)


def linear_attention(causal: bool):
    def make_model(width: int):
        from linear_attention_transformer import LinearAttentionTransformerLM

        return LinearAttentionTransformerLM(num_tokens=VOCAB, dim=width, depth=2, max_seq_len=SEQ, heads=2,
                                            dim_head=width // 2, causal=causal)
    return make_model


def reformer(width: int):
    from reformer_pytorch import ReformerLM

    return ReformerLM(num_tokens=VOCAB, dim=width, depth=2, max_seq_len=SEQ, heads=2, dim_head=width // 2,
                      bucket_size=4, n_hashes=2, causal=True)


def local(width: int):
    from local_attention import LocalTransformer

    return LocalTransformer(num_tokens=VOCAB, max_seq_len=SEQ, dim=width, depth=2, causal=True,
                            local_attn_window_size=4, dim_head=width // 2, heads=2)


def nystrom(width: int):
    from nystrom_attention import Nystromformer

    return TokenModel(width, Nystromformer(dim=width, depth=2, dim_head=width // 2, heads=2, num_landmarks=4,
                                           attn_values_residual_conv_kernel=3))


SPECS = {
    "performer_lm": Spec("performer-pytorch", performer, tokens, SCALES, note="FAVOR+ random features (16)"),
    "linear_attention_lm": Spec("linear-attention-transformer", linear_attention(False), tokens, SCALES,
                                note="non-causal linear attention (softmax over q and over k, no q.k softmax)"),
    "linear_attention_causal": Spec("linear-attention-transformer", linear_attention(True), tokens, SCALES,
                                    note="causal linear attention (cumulative sums)"),
    "reformer_lm": Spec("reformer-pytorch", reformer, tokens, SCALES, note="LSH attention, reversible layers"),
    "local_transformer": Spec("local-attention", local, tokens, SCALES, note="window 4 with look-back"),
    "nystromformer": Spec("nystrom-attention", nystrom, tokens, SCALES,
                          note="embedding + Nystromformer + head; 4 landmarks"),
}
