"""Tabular models: rtdl-revisiting-models (MLP, ResNet, FT-Transformer), tab-transformer-pytorch
(TabTransformer, FTTransformer) and pytorch-tabnet (TabNet). Inputs: 3 continuous features and
2 categorical ones (cardinalities 4 and 5), batch 8. Width: the block width; FFN multiples of it;
2 attention heads (d_head = width / 2) where there is attention."""
from __future__ import annotations

import torch

from ._spec import Spec, generator, randn

N_CONT, CARDS, BATCH = 3, (4, 5), 8


def cont():
    return randn(BATCH, N_CONT)


def categ():
    return torch.stack([torch.randint(0, c, (BATCH,), generator=generator(i + 1)) for i, c in enumerate(CARDS)], 1)


def rtdl_mlp(width: int):
    from rtdl_revisiting_models import MLP

    return MLP(d_in=N_CONT, d_out=2, n_blocks=2, d_block=width, dropout=0.0)


def rtdl_resnet(width: int):
    from rtdl_revisiting_models import ResNet

    return ResNet(d_in=N_CONT, d_out=2, n_blocks=2, d_block=width, d_hidden=None, d_hidden_multiplier=2.0,
                  dropout1=0.0, dropout2=0.0)


def rtdl_ft(width: int):
    from rtdl_revisiting_models import FTTransformer

    return FTTransformer(n_cont_features=N_CONT, cat_cardinalities=list(CARDS), d_out=2, n_blocks=2, d_block=width,
                         attention_n_heads=2, attention_dropout=0.0, ffn_d_hidden=None,
                         ffn_d_hidden_multiplier=2.0, ffn_dropout=0.0, residual_dropout=0.0)


def tab_transformer(width: int):
    from tab_transformer_pytorch import TabTransformer

    return TabTransformer(categories=CARDS, num_continuous=N_CONT, dim=width, depth=2, heads=2, dim_head=width // 2,
                          dim_out=2, num_residual_streams=1, mlp_act=torch.nn.ReLU())


def tab_ft(width: int):
    from tab_transformer_pytorch import FTTransformer

    return FTTransformer(categories=CARDS, num_continuous=N_CONT, dim=width, depth=2, heads=2, dim_head=width // 2,
                         dim_out=2, num_residual_streams=1)


def tabnet(width: int):
    from pytorch_tabnet.tab_network import TabNet

    return TabNet(input_dim=N_CONT + len(CARDS), output_dim=2, n_d=width, n_a=width, n_steps=2,
                  virtual_batch_size=BATCH, group_attention_matrix=torch.eye(N_CONT + len(CARDS)))


SPECS = {
    "rtdl_mlp": Spec("rtdl-revisiting-models", rtdl_mlp, lambda: (cont(),), "d_block"),
    "rtdl_resnet": Spec("rtdl-revisiting-models", rtdl_resnet, lambda: (cont(),), "d_block; hidden 2 x width"),
    "rtdl_ft_transformer": Spec("rtdl-revisiting-models", rtdl_ft, lambda: (cont(), categ()),
                                "d_block, 2 heads (d_head width/2), ReGLU FFN 2 x width",
                                note="CLS token appended; readout from the CLS token"),
    "tab_transformer": Spec("tab-transformer-pytorch", tab_transformer, lambda: (categ(), cont()),
                            "dim, dim_head = width/2 (2 heads); MLP head from width x categories",
                            note="one residual stream"),
    "tab_ft_transformer": Spec("tab-transformer-pytorch", tab_ft, lambda: (categ(), cont()),
                               "dim, dim_head = width/2 (2 heads)", note="one residual stream"),
    "tabnet": Spec("pytorch-tabnet", tabnet, lambda: (torch.cat([cont(), categ().float()], 1),),
                   "n_d = n_a = width", note="sparsemax attentive transformer, ghost batch norm"),
}
