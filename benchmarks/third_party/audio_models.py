"""Audio: bs-roformer's BSRoformer and MelBandRoformer (band-split rotary transformers for music
source separation) on a mono waveform of 2048 samples with a 64-point STFT (33 frequency bins in 4
bands). Width: dim = width, dim_head = width / 2 (2 heads)."""
from __future__ import annotations

from ._spec import Spec, randn

STFT = dict(stft_n_fft=64, stft_hop_length=16, stft_win_length=64)


def bs_roformer(width: int):
    from bs_roformer import BSRoformer

    return BSRoformer(dim=width, depth=1, time_transformer_depth=1, freq_transformer_depth=1,
                      freqs_per_bands=(8, 8, 8, 9), dim_head=width // 2, heads=2, flash_attn=False,
                      num_residual_streams=1, mask_estimator_depth=1, **STFT)


def mel_band(width: int):
    from bs_roformer import MelBandRoformer

    return MelBandRoformer(dim=width, depth=1, time_transformer_depth=1, freq_transformer_depth=1, num_bands=8,
                           sample_rate=8000, dim_head=width // 2, heads=2, flash_attn=False,
                           num_residual_streams=1, mask_estimator_depth=1, **STFT)


SPECS = {
    "bs_roformer": Spec("bs-roformer", bs_roformer, lambda: (randn(1, 2048),), "dim, dim_head = width/2 (2 heads)",
                        note="STFT in, mask estimator and iSTFT out"),
    "mel_band_roformer": Spec("bs-roformer", mel_band, lambda: (randn(1, 2048),), "dim, dim_head = width/2 (2 heads)",
                              note="mel bands (8)"),
}
