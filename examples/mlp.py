"""Two-hidden-layer ReLU MLP classifier: 32 input features -> width -> width -> 10 classes.

Both hidden dims scale with width; input and output dims are fixed. Default PyTorch init.
"""
import torch
import torch.nn as nn

BASE_WIDTH = 64
TARGET_WIDTH = 512
IN_FEATURES = 32
NUM_CLASSES = 10


class MLP(nn.Module):
    # Class of the readout layer; the muP twin overrides it with mup.MuReadout.
    readout_cls = nn.Linear

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, width)
        self.fc2 = nn.Linear(width, width)
        self.readout = self.readout_cls(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.readout(x)


def make_model(width: int) -> MLP:
    return MLP(width)


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, IN_FEATURES, generator=generator),)
