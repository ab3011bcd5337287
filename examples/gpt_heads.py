"""nanoGPT-style GPT with SDPA attention that grows by adding heads.

Width is d_model. d_head is fixed at 16 and n_head = width / 16, so the head
count (not the head size) grows with width, as do the qkv (3 * width) and MLP
(4 * width) dims; vocab and sequence length are fixed.
"""
from nanogpt import GPT, GPTConfig, random_token_ids

BASE_WIDTH = 32
TARGET_WIDTH = 256
D_HEAD = 16


def make_config(width: int) -> GPTConfig:
    return GPTConfig(d_model=width, n_head=width // D_HEAD, attention="sdpa")


def make_model(width: int) -> GPT:
    return GPT(make_config(width))


def example_inputs():
    return (random_token_ids(make_config(BASE_WIDTH)),)
