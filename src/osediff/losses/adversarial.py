"""Adversarial regularisation (the paper's GAN ablation): a PatchGAN discriminator on pixels.

Non-saturating logistic losses: the generator minimises softplus(-D(x_H)); the discriminator
minimises softplus(-D(x_HQ)) + softplus(D(sg(x_H))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """A 70x70-receptive-field PatchGAN (pix2pix) with spectral norm, on images in [-1, 1]."""

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        blocks: list[nn.Module] = [sn(nn.Conv2d(3, channels, 4, 2, 1)), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [sn(nn.Conv2d(width, out, 4, stride, 1)), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(sn(nn.Conv2d(width, 1, 4, 1, 1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-logits_fake.float()).mean()


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()
