"""A PyTorch reference of the official NLayerDiscriminator, written from its architecture.

Same module tree as the official one (so the same state-dict keys):
block_in = [Conv(C->H, 5), LeakyReLU(0.1)];
blocks.i = [Conv(3), Blur(stride 2, buffer `kernel`), GroupNorm(32, C_out), LeakyReLU(0.1)];
AdaptiveMaxPool2d(16); to_logits = [Conv(1), LeakyReLU(0.1), Conv(->1, 5)].
Convs pad TF-'same' (extra cell at the end); the blur pads as a 4-tap stride-2 filter.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, [left, right, top, bottom]))


class Blur(nn.Module):
    def __init__(self, taps=(1, 3, 3, 1)):
        super().__init__()
        taps = torch.tensor(taps, dtype=torch.float32)
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad(x.shape[-2], 4, 2)
        left, right = _same_pad(x.shape[-1], 4, 2)
        x = F.pad(x, [left, right, top, bottom])
        weight = self.kernel.expand(x.shape[1], -1, -1, -1)
        return F.conv2d(x, weight, stride=2, groups=x.shape[1])


class TorchNLayerDiscriminator(nn.Module):
    def __init__(self, num_channels: int = 3, hidden_channels: int = 128, num_stages: int = 3):
        super().__init__()
        self.block_in = nn.Sequential(SameConv(num_channels, hidden_channels, 5), nn.LeakyReLU(0.1))
        blocks = []
        in_ch = hidden_channels
        for i in range(num_stages):
            out_ch = hidden_channels * 2**i
            blocks.append(
                nn.Sequential(SameConv(in_ch, out_ch, 3), Blur(), nn.GroupNorm(32, out_ch), nn.LeakyReLU(0.1))
            )
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveMaxPool2d((16, 16))
        self.to_logits = nn.Sequential(SameConv(in_ch, in_ch, 1), nn.LeakyReLU(0.1), SameConv(in_ch, 1, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_in(x)
        for block in self.blocks:
            x = block(x)
        return self.to_logits(self.pool(x))


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Perturbs every parameter (GroupNorm scale/bias too) so that no layout slip can hide behind 1s and 0s."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return module.eval()
