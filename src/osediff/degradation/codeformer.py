"""The CodeFormer-style face degradation of the OSEDiff face model: HQ (N, 3, H, W) -> LQ at the same size.

One stage per image (the authors' ``params_codeformer.yml`` ranges, the order of CodeFormer's
dataset): blur with an isotropic or anisotropic Gaussian of size 41 (sigma in [1, 15]) -> bilinear
downsample by a factor r ~ U(1, 30) to (floor(H / r), floor(W / r)) -> colour Gaussian noise with
sigma ~ U(0, 20) on the 0..255 scale, clamped -> JPEG with quality in [30, 100] -> bilinear resize
back to (H, W). The model then restores at factor 1.

As in :mod:`osediff.degradation.realesrgan`, every random choice is drawn first on the CPU; the image
work runs on the images' device, one batch per group of samples that share the downsampled size.
The JPEG steps go through libjpeg on the CPU (:func:`osediff.degradation.ops.jpeg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ops
from .config import BlurConfig, _check_range, _check_weights, build_config
from .kernels import random_mixed_kernel, uniform
from .realesrgan import _check_input, _split_generator


@dataclass
class CodeFormerConfig:
    """Ranges of the face degradation; the keys and defaults are the authors' ``params_codeformer.yml``."""

    blur_kernel_size: int = 41
    kernel_list: tuple[str, ...] = ("iso", "aniso")
    kernel_prob: tuple[float, ...] = (0.5, 0.5)
    blur_sigma: tuple[float, float] = (1.0, 15.0)
    downsample_range: tuple[float, float] = (1.0, 30.0)
    noise_range: tuple[float, float] = (0.0, 20.0)  # Gaussian sigma on the 0..255 scale
    jpeg_range: tuple[float, float] = (30.0, 100.0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.blur().validate("blur")
        _check_weights(self.kernel_prob, "kernel_prob")
        _check_range(self.downsample_range, "downsample_range", low=1.0)
        _check_range(self.noise_range, "noise_range", low=0.0)
        _check_range(self.jpeg_range, "jpeg_range", low=1.0, high=100.0)

    def blur(self) -> BlurConfig:
        """The kernel families as the Real-ESRGAN kernel sampler reads them (no sinc, no size draw)."""
        return BlurConfig(kernel_size=self.blur_kernel_size, kernel_list=self.kernel_list,
                          kernel_prob=self.kernel_prob, sinc_prob=0.0, blur_sigma=self.blur_sigma)

    @classmethod
    def from_dict(cls, data: dict) -> CodeFormerConfig:
        """Build from the authors' flat keys; unknown keys and bad values raise ``ConfigError``."""
        return build_config(cls(), data, flat=False)


@dataclass
class FaceSampleParams:
    """Every random choice made for one image."""

    kernel: torch.Tensor  # (K, K), sums to 1
    size: tuple[int, int]  # (H, W) after the downsample
    noise_sigma: float  # 0..255 scale
    jpeg_quality: int


class CodeFormerDegradation:
    """Callable that synthesises same-size LQ faces from HQ ones; holds only the config."""

    def __init__(self, config: CodeFormerConfig | None = None) -> None:
        self.config = config if config is not None else CodeFormerConfig()
        self.config.validate()

    def sample(self, batch_size: int, hq_size: tuple[int, int], generator: torch.Generator) -> list[FaceSampleParams]:
        """Draw every random choice for a batch of HQ images of size ``hq_size`` = (H, W) (CPU generator)."""
        cfg, blur, (h, w) = self.config, self.config.blur(), hq_size
        out = []
        for _ in range(batch_size):
            kernel = random_mixed_kernel(blur, cfg.blur_kernel_size, generator)
            r = uniform(generator, *cfg.downsample_range)
            size = (max(1, math.floor(h / r)), max(1, math.floor(w / r)))
            sigma = uniform(generator, *cfg.noise_range)
            quality = round(uniform(generator, *cfg.jpeg_range))
            out.append(FaceSampleParams(kernel, size, sigma, quality))
        return out

    @torch.no_grad()
    def apply(self, hq: torch.Tensor, params: list[FaceSampleParams],
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Degrade ``hq`` with pre-drawn ``params``; ``generator`` (on ``hq.device``) feeds the noise."""
        _check_input(hq, 1)
        if len(params) != hq.shape[0]:
            raise ValueError(f"got {len(params)} parameter sets for a batch of {hq.shape[0]}")
        h, w = hq.shape[-2:]
        x = hq.detach().float().clamp(0.0, 1.0)
        out = torch.empty_like(x)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(p.size, []).append(i)
        for size, idx in groups.items():  # insertion order = order of first sample: deterministic
            sel = torch.tensor(idx, device=hq.device)
            ps = [params[i] for i in idx]
            y = ops.filter2d(x[sel], torch.stack([p.kernel for p in ps]))
            y = ops.resize(y, size, "bilinear")
            sigma = torch.tensor([p.noise_sigma for p in ps])
            y = (y + ops.gaussian_noise(y, sigma, torch.zeros(len(ps), dtype=torch.bool), generator)).clamp(0, 1)
            y = ops.jpeg(y, [p.jpeg_quality for p in ps])
            out[sel] = ops.resize(y, (h, w), "bilinear").clamp(0.0, 1.0)
        return out.to(hq.dtype)

    def __call__(self, hq: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Degrade a batch (N, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1], same device.

        Reproducible under ``generator`` (any device; advanced by one draw per call) or, without one,
        under ``torch.manual_seed``.
        """
        _check_input(hq, 1)
        params_gen, noise_gen = _split_generator(generator, hq.device)
        params = self.sample(hq.shape[0], (hq.shape[-2], hq.shape[-1]), params_gen)
        return self.apply(hq, params, noise_gen)
