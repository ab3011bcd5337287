"""nanoGPT-style GPT with fused scaled_dot_product_attention and an untied lm_head.

Width is d_model. n_head is fixed at 2, so d_head = width / 2 grows with width,
as do the qkv (3 * width) and MLP (4 * width) dims; vocab and sequence length are fixed.
"""
from nanogpt import GPT, GPTConfig, random_token_ids

BASE_WIDTH = 32
TARGET_WIDTH = 256
N_HEAD = 2


def make_config(width: int) -> GPTConfig:
    return GPTConfig(d_model=width, n_head=N_HEAD, attention="sdpa")


def make_model(width: int) -> GPT:
    return GPT(make_config(width))


def example_inputs():
    return (random_token_ids(make_config(BASE_WIDTH)),)
