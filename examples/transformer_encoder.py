"""Sequence classifier built from torch's nn.TransformerEncoder (2 post-norm layers, 2 heads).

Token embedding, d_model, feed-forward (4 * width) and head size (width / 2) scale with
width; vocab (64), sequence length (16) and the 5 classes are fixed. Mean-pools over tokens.
"""
import torch
import torch.nn as nn

BASE_WIDTH = 32
TARGET_WIDTH = 256
VOCAB_SIZE = 64
SEQ_LEN = 16
NUM_CLASSES = 5


class TransformerClassifier(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, width)
        layer = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=4 * width, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.classifier = nn.Linear(width, NUM_CLASSES)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embedding(idx))
        return self.classifier(x.mean(dim=1))


def make_model(width: int) -> TransformerClassifier:
    return TransformerClassifier(width)


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB_SIZE, (4, SEQ_LEN), generator=generator),)
