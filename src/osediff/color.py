"""Colour alignment of the SR output to the bicubic-upscaled input (as in the paper's code).

Both functions take and return float tensors (N, 3, H, W) in [0, 1]; ``source`` supplies the
colour statistics, ``target`` the content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .params import ALIGN_METHODS, AlignMethod, ParamError

__all__ = ["ALIGN_METHODS", "AlignMethod", "adain_align", "align_colors", "wavelet_align"]


def _mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    # unbiased variance + eps, as the authors' AdaIN
    return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=True) + eps).sqrt()[..., None, None]


def adain_align(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per-channel mean/std of ``source`` given to ``target``: (t - mu_t) / sigma_t * sigma_s + mu_s."""
    mu_t, sigma_t = _mean_std(target)
    mu_s, sigma_s = _mean_std(source)
    return (target - mu_t) / sigma_t * sigma_s + mu_s


def _wavelet_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=dilation)


def _wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) frequency parts from an a-trous decomposition at dilations 1, 2, 4, 8, 16."""
    high = torch.zeros_like(x)
    for level in range(levels):
        low = _wavelet_blur(x, 2**level)
        high += x - low
        x = low
    return high, x


def wavelet_align(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``target`` on top of the low frequencies of ``source``."""
    high, _ = _wavelet_split(target)
    _, low = _wavelet_split(source)
    return high + low


def align_colors(target: torch.Tensor, source: torch.Tensor, method: AlignMethod) -> torch.Tensor:
    if method == "adain":
        return adain_align(target, source)
    if method == "wavelet":
        return wavelet_align(target, source)
    if method == "none":
        return target
    raise ParamError(f"must be one of {', '.join(ALIGN_METHODS)}, got {method!r}", argument="align")
