"""Batched image operations of the degradation model, with per-sample parameters.

Images are float tensors (N, C, H, W) in [0, 1] (intermediate values may leave that range; the
pipeline clamps where Real-ESRGAN does). Random draws use a generator on the images' device.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate each image with its own odd K x K kernel (all channels alike), size preserved.

    ``kernel`` is (K, K) for the whole batch or (N, K, K) per sample. Borders are reflected, as
    Real-ESRGAN's filter2D; images too small to reflect K//2 pixels fall back to edge replication.
    """
    n, c, h, w = img.shape
    k = kernel.shape[-1]
    if k % 2 == 0 or kernel.shape[-2] != k:
        raise ValueError(f"kernels must be square with an odd size, got {tuple(kernel.shape)}")
    kernel = kernel.to(device=img.device, dtype=img.dtype).reshape(-1, 1, k, k)
    if kernel.shape[0] not in (1, n):
        raise ValueError(f"got {kernel.shape[0]} kernels for a batch of {n}")
    p = k // 2
    mode = "reflect" if p < min(h, w) else "replicate"
    padded = F.pad(img, (p, p, p, p), mode=mode)
    # grouped convolution: image i's C channels form group(s) that see kernel i
    weight = kernel.expand(n, 1, k, k).repeat_interleave(c, dim=0)
    out = F.conv2d(padded.reshape(1, n * c, h + 2 * p, w + 2 * p), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def resize(img: torch.Tensor, size: tuple[int, int], mode: str, scale: float | None = None) -> torch.Tensor:
    """Resize to ``size`` = (H, W) with ``area``, ``bilinear`` or ``bicubic`` (no antialias, as the
    authors' F.interpolate calls; area averaging is the anti-aliased choice when shrinking).

    With ``scale`` the sampling grid follows that factor, as ``F.interpolate(scale_factor=scale)`` does
    in Real-ESRGAN's first stage; ``size`` must then be ⌊H·scale⌋ x ⌊W·scale⌋.
    """
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(img.shape[-2:]) == size:
        return img
    if mode not in ("area", "bilinear", "bicubic"):
        raise ValueError(f"unknown resize mode {mode!r}")
    extra = {} if mode == "area" else {"align_corners": False}
    if scale is not None:
        out = F.interpolate(img, scale_factor=scale, mode=mode, recompute_scale_factor=False, **extra)
        if tuple(out.shape[-2:]) != size:
            raise ValueError(f"scale {scale} gives {tuple(out.shape[-2:])}, not the requested {size}")
        return out
    return F.interpolate(img, size=size, mode=mode, **extra)


def gaussian_noise(img: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive white Gaussian noise n ~ N(0, (σ/255)²) per pixel, σ per sample on the 0..255 scale.

    Samples with ``gray`` get one noise plane shared by the three channels (luminance-only noise).
    """
    noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
    gray = gray.to(img.device).view(-1, 1, 1, 1)
    noise = torch.where(gray, noise[:, :1].expand_as(noise), noise)
    return noise * (sigma.to(img.device, img.dtype).view(-1, 1, 1, 1) / 255.0)


def poisson_noise(img: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Shot noise as in BasicSR: n = s · (Poisson(v·x̂) / v - x̂).

    x̂ is the image quantised to 8 bits (its luminance for ``gray`` samples), v the number of distinct
    levels in x̂ rounded up to a power of two, s the per-sample ``scale``. Hence E[n] = 0 and
    Var[n] = s² x̂ / v: the noise grows with intensity, unlike Gaussian noise.
    """
    n = img.shape[0]
    gray = gray.to(img.device)
    luma = sum(w * img[:, i:i + 1] for i, w in enumerate(_LUMA))
    source = torch.where(gray.view(-1, 1, 1, 1), luma.expand_as(img), img)
    q = torch.clamp((source * 255.0).round(), 0, 255) / 255.0
    levels = torch.tensor([float(torch.unique(q[i]).numel()) for i in range(n)], dtype=torch.float64)
    v = torch.pow(2.0, torch.ceil(torch.log2(levels))).to(img.device, img.dtype).view(-1, 1, 1, 1)
    rate = (q * v).float()
    counts = torch.poisson(rate, generator=generator).to(img.dtype)
    noise = counts / v - q
    # grey samples: one shot-noise plane (channel 0 of identical channels) shared by all channels
    noise = torch.where(gray.view(-1, 1, 1, 1), noise[:, :1].expand_as(noise), noise)
    return noise * scale.to(img.device, img.dtype).view(-1, 1, 1, 1)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=max(1, min(100, quality)), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def jpeg(img: torch.Tensor, quality: torch.Tensor | list[int]) -> torch.Tensor:
    """Real JPEG round trip per sample (PIL/libjpeg, 4:2:0 chroma subsampling, integer quality).

    Not differentiable, and done on the CPU: a faithful encoder is what matters for synthetic training
    data. Input is clamped and rounded to 8 bits first, as any saved image would be. The samples are
    coded in parallel threads (libjpeg runs without the GIL); the result does not depend on their number.
    """
    qualities = [int(q) for q in (quality.tolist() if isinstance(quality, torch.Tensor) else quality)]
    if len(qualities) != img.shape[0]:
        raise ValueError(f"got {len(qualities)} JPEG qualities for a batch of {img.shape[0]}")
    u8 = torch.clamp((img.detach() * 255.0).round(), 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    workers = min(len(qualities), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(_jpeg_round_trip, u8, qualities))
    else:
        out = [_jpeg_round_trip(image, q) for image, q in zip(u8, qualities, strict=True)]
    return (torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(img.device, img.dtype)) / 255.0


def to_grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luminance Y = 0.2989 R + 0.587 G + 0.114 B, repeated to three channels."""
    luma = sum(w * img[:, i:i + 1] for i, w in enumerate(_LUMA))
    return luma.expand(-1, 3, -1, -1).contiguous()
