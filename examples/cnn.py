"""Small CNN classifier: two 3x3 convs (3 -> width -> width channels), global average pool, linear readout to 10 classes.

The conv channel counts and the readout fan-in scale with width; image size (8x8) and classes are fixed.
"""
import torch
import torch.nn as nn

BASE_WIDTH = 32
TARGET_WIDTH = 256
NUM_CLASSES = 10


class ConvNet(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.readout = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.readout(self.pool(x).flatten(1))


def make_model(width: int) -> ConvNet:
    return ConvNet(width)


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, 8, 8, generator=generator),)
