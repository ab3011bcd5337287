"""nanoGPT-style GPT whose factory also takes the depth, for depth transfer (CompleteP).

Width is d_model (2 heads, so d_head = width / 2); depth is the number of pre-LN blocks. Its own
init follows GPT-2, output projections at 0.02 / sqrt(2 * depth): CompleteP keeps the proxy's.
    muprewrite examples/gpt_depth.py --depth-base 2 --depth-target 8
"""
from nanogpt import GPT, GPTConfig, random_token_ids

BASE_WIDTH = 64
TARGET_WIDTH = 256
N_HEAD = 2


def make_config(width: int, depth: int = 2) -> GPTConfig:
    return GPTConfig(d_model=width, n_head=N_HEAD, n_layer=depth, attention="sdpa")


def make_model(width: int, depth: int = 2) -> GPT:
    return GPT(make_config(width, depth))


def example_inputs():
    return (random_token_ids(make_config(BASE_WIDTH)),)
