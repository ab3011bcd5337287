"""Mixture of experts: st-moe-pytorch's MoE (ST-MoE top-2 gating) and mixture-of-experts' MoE
(Shazeer's sparsely-gated, experts as 3-D parameters), each between an embedding and a head.
Width: dim = width, expert hidden 4 x width; 4 experts."""
from __future__ import annotations

from ._spec import Spec, TokenModel, tokens


def st_moe(width: int):
    from st_moe_pytorch import MoE

    return TokenModel(width, MoE(dim=width, num_experts=4, gating_top_n=2), pick=0)


def st_moe_block(width: int):
    from st_moe_pytorch import MoE, SparseMoEBlock

    return TokenModel(width, SparseMoEBlock(MoE(dim=width, num_experts=4), add_ff_before=True,
                                            add_ff_after=True), pick=0)


def shazeer(width: int):
    from mixture_of_experts import MoE

    return TokenModel(width, MoE(dim=width, num_experts=4, hidden_dim=4 * width), pick=0)


def shazeer_hier(width: int):
    from mixture_of_experts import HeirarchicalMoE

    return TokenModel(width, HeirarchicalMoE(dim=width, num_experts=(2, 2)), pick=0)


SPECS = {
    "st_moe": Spec("st-moe-pytorch", st_moe, tokens, "dim; expert hidden 4 x width", note="embedding + MoE + head"),
    "st_moe_block": Spec("st-moe-pytorch", st_moe_block, tokens, "dim; experts and FFs 4 x width",
                         note="SparseMoEBlock with feedforwards before and after"),
    "moe_shazeer": Spec("mixture-of-experts", shazeer, tokens, "dim; expert hidden 4 x width",
                        note="experts as 3-D parameters (einsum)"),
    "moe_hierarchical": Spec("mixture-of-experts", shazeer_hier, tokens, "dim; expert hidden 4 x width",
                             note="2 x 2 hierarchical experts"),
}
