"""nGPT-pytorch: the normalized transformer (weights l2-normalised on the hypersphere, learned
scales). Width: dim = width, dim_head = width / 2 (2 heads), FFN 4 x width."""
from __future__ import annotations

from ._spec import VOCAB, Spec, tokens


def ngpt(tied: bool):
    def make_model(width: int):
        from nGPT_pytorch import nGPT

        return nGPT(num_tokens=VOCAB, dim=width, depth=2, dim_head=width // 2, heads=2, tied_embedding=tied)
    return make_model


SPECS = {
    "ngpt": Spec("nGPT-pytorch", ngpt(False), tokens, "dim, dim_head = width/2 (2 heads), FFN 4 x width",
                 note="weights normalised by a parametrization (l2norm on every forward)"),
    "ngpt_tied": Spec("nGPT-pytorch", ngpt(True), tokens, "dim, dim_head = width/2 (2 heads), FFN 4 x width",
                      note="tied embedding"),
}
