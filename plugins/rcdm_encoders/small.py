"""``ssl-small``: a small ResNet for 32-64 px images built from torchvision's BasicBlock (CPU-friendly).

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``..``layer4``) so the same readers,
layer names (``block:layer2``) and strict loading serve it. The stem is a 3x3 stride-1 convolution without
max-pooling (the CIFAR-style stem: a 7x7/2 stem plus pooling would leave 8x8 maps at 32 px).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

DEFAULT_WIDTHS = (32, 64, 128, 256)
DEFAULT_BLOCKS = (1, 1, 1, 1)
DEFAULT_INPUT = 32


class SmallResNet(nn.Module):
    """x: (N, 3, S, S) -> (N, widths[-1]) global-average-pooled features; S from 16 to ~96."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, blocks: tuple[int, ...] = DEFAULT_BLOCKS):
        super().__init__()
        self.widths, self.blocks = tuple(widths), tuple(blocks)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None
                if stride != 1 or in_ch != width:
                    down = nn.Sequential(
                        nn.Conv2d(in_ch, width, 1, stride, bias=False), nn.BatchNorm2d(width)
                    )
                stage.append(BasicBlock(in_ch, width, stride=stride, downsample=down))
                in_ch = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.stages = len(widths)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)


def infer_arch(trunk: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(widths, blocks) of a SmallResNet read from its state dict keys and shapes."""
    widths, blocks = [], []
    i = 1
    while f"layer{i}.0.conv1.weight" in trunk:
        widths.append(int(trunk[f"layer{i}.0.conv1.weight"].shape[0]))
        j = 0
        while f"layer{i}.{j}.conv1.weight" in trunk:
            j += 1
        blocks.append(j)
        i += 1
    return tuple(widths), tuple(blocks)
