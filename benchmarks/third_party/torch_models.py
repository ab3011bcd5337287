"""torch's own layers (one package): nn.TransformerEncoder (nn.MultiheadAttention inside) and
nn.MultiheadAttention with add_bias_kv=True (learned bias key/value concatenated to k and v),
each between an embedding and a head. Width: d_model = width, 2 heads (d_head = width / 2), FFN 4 x width."""
from __future__ import annotations

from torch import nn

from ._spec import Spec, TokenModel, tokens


def encoder(width: int):
    layer = nn.TransformerEncoderLayer(d_model=width, nhead=2, dim_feedforward=4 * width, dropout=0.0,
                                       batch_first=True)
    return TokenModel(width, nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))


class SelfAttention(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, add_bias_kv=True, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def bias_kv(width: int):
    return TokenModel(width, nn.Sequential(SelfAttention(width), nn.LayerNorm(width), SelfAttention(width)))


SPECS = {
    "torch_transformer_encoder": Spec("torch", encoder, tokens, "d_model, 2 heads (d_head width/2), FFN 4 x width"),
    "torch_mha_bias_kv": Spec("torch", bias_kv, tokens, "embed_dim, 2 heads (d_head width/2)",
                              note="add_bias_kv=True: bias_k, bias_v concatenated to keys and values"),
}
