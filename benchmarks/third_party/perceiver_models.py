"""Latent-array models: perceiver-pytorch's Perceiver (1-D inputs of 3 channels, Fourier-encoded;
8 latents; with and without weight-tied layers) and PerceiverLM (Perceiver IO over tokens, the
token queries reading the latents). Width: latent_dim (and PerceiverLM's dim) = width, latent
d_head = width / 2 (2 heads), cross d_head = width / 2 (1 head)."""
from __future__ import annotations

from ._spec import SEQ, VOCAB, Spec, randn, tokens

SCALES = "latent_dim, latent/cross dim_head = width/2"


def perceiver(tied: bool):
    def make_model(width: int):
        from perceiver_pytorch import Perceiver

        return Perceiver(input_channels=3, input_axis=1, num_freq_bands=4, max_freq=10.0, depth=2, num_latents=8,
                         latent_dim=width, cross_heads=1, latent_heads=2, cross_dim_head=width // 2,
                         latent_dim_head=width // 2, num_classes=10, weight_tie_layers=tied)
    return make_model


def perceiver_lm(width: int):
    from perceiver_pytorch import PerceiverLM

    return PerceiverLM(num_tokens=VOCAB, dim=width, max_seq_len=SEQ, depth=2, num_latents=8, latent_dim=width,
                       cross_heads=1, latent_heads=2, cross_dim_head=width // 2, latent_dim_head=width // 2)


SPECS = {
    "perceiver": Spec("perceiver-pytorch", perceiver(False), lambda: (randn(2, SEQ, 3),), SCALES),
    "perceiver_tied": Spec("perceiver-pytorch", perceiver(True), lambda: (randn(2, SEQ, 3),), SCALES,
                           note="weight_tie_layers=True: layers after the first are the same module objects"),
    "perceiver_lm": Spec("perceiver-pytorch", perceiver_lm, tokens, SCALES + ", dim",
                         note="Perceiver IO: token queries cross-attend to the latents"),
}
