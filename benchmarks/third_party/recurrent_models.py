"""State-space and recurrent models: mambapy (pure-torch Mamba, Mamba-2 and Jamba) and xlstm (its
pure-torch mLSTM and sLSTM backends). Width: d_model = width (inner size expand x width, dt_rank
ceil(width / 16)); state sizes fixed."""
from __future__ import annotations

from ._spec import SEQ, VOCAB, Spec, TokenModel, tokens


def mamba(pscan: bool):
    def make_model(width: int):
        from mambapy.mamba import Mamba, MambaConfig  # mambapy.lm imports mamba2, which needs mamba_ssm (triton)

        return TokenModel(width, Mamba(MambaConfig(d_model=width, n_layers=2, d_state=8, pscan=pscan)))
    return make_model


def jamba(width: int):
    from mambapy.jamba import JambaLM, JambaLMConfig

    return JambaLM(JambaLMConfig(vocab_size=VOCAB, d_model=width, n_layers=2, mlp_size=4 * width, d_state=8, num_attention_heads=2,
                                 num_key_value_heads=2, attn_layer_offset=1, attn_layer_period=2,
                                 expert_layer_offset=1, expert_layer_period=2, num_experts=4, num_experts_per_tok=2))


def xlstm(slstm: bool):
    def make_model(width: int):
        from xlstm import (mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                           xLSTMLMModel, xLSTMLMModelConfig)

        config = xLSTMLMModelConfig(
            vocab_size=VOCAB, context_length=SEQ, num_blocks=2, embedding_dim=width,
            mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                                                num_heads=2)),
            slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=2,
                                                                conv1d_kernel_size=4)) if slstm else None,
            slstm_at=[1] if slstm else [])
        model = xLSTMLMModel(config)
        model.reset_parameters()
        return model
    return make_model


SPECS = {
    "mambapy_mamba": Spec("mambapy", mamba(True), tokens, "d_model (inner 2 x width, dt_rank width/16); d_state 8",
                          note="embedding + Mamba + head; parallel scan (pscan); mambapy's Mamba-2 needs mamba_ssm"),
    "mambapy_mamba_seq": Spec("mambapy", mamba(False), tokens, "d_model (inner 2 x width, dt_rank width/16); d_state 8",
                              note="embedding + Mamba + head; sequential scan (a Python loop over positions)"),
    "mambapy_jamba": Spec("mambapy", jamba, tokens, "d_model, mlp_size 4 x width; attention d_head = width/2 (2 heads); 4 experts",
                          note="Mamba + attention + MoE layers"),
    "xlstm_mlstm": Spec("xlstm", xlstm(False), tokens, "embedding_dim (mLSTM up-projection 2 x width, 2 heads)",
                        note="mLSTM blocks, parallel form"),
    "xlstm_slstm": Spec("xlstm", xlstm(True), tokens, "embedding_dim (2 heads)",
                        note="mLSTM + sLSTM (vanilla backend)"),
}
