"""MLP mixers: mlp-mixer-pytorch's MLPMixer (images) and g-mlp-pytorch's gMLP (tokens; spatial
gating by a seq x seq weight) and aMLP (gMLP with a tiny attention). Width: dim = width, channel
MLP 4 x width; token-mixing sizes (patches, seq) fixed."""
from __future__ import annotations

from ._spec import SEQ, VOCAB, Spec, randn, tokens


def mixer(width: int):
    from mlp_mixer_pytorch import MLPMixer

    return MLPMixer(image_size=32, channels=3, patch_size=8, dim=width, depth=2, num_classes=10)


def gmlp(attn: bool):
    def make_model(width: int):
        from g_mlp_pytorch import gMLP

        return gMLP(num_tokens=VOCAB, dim=width, depth=2, seq_len=SEQ, attn_dim=width // 2 if attn else None)
    return make_model


SPECS = {
    "mlp_mixer": Spec("mlp-mixer-pytorch", mixer, lambda: (randn(2, 3, 32, 32),), "dim; channel MLP 4 x width",
                      note="32-pixel images, 8-pixel patches"),
    "gmlp": Spec("g-mlp-pytorch", gmlp(False), tokens, "dim; FFN 4 x width", note="spatial gating unit"),
    "amlp": Spec("g-mlp-pytorch", gmlp(True), tokens, "dim; FFN 4 x width; tiny attention dim width/2",
                 note="gMLP with a single-head tiny attention"),
}
