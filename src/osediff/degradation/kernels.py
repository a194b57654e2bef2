"""Random blur kernels of the Real-ESRGAN degradation model, sampled per image on the CPU.

All kernels live on a K x K grid of integer offsets (x = column, y = row) centred on the middle tap.
With the rotated covariance  Σ = R(θ) diag(σx², σy²) R(θ)ᵀ  and the quadratic form
q(x, y) = [x y] Σ⁻¹ [x y]ᵀ, the families are (each normalised to sum 1):

* Gaussian:              k ∝ exp(-q / 2)
* generalised Gaussian:  k ∝ exp(-q^β / 2)        (β < 1 heavier tails, β > 1 flatter top)
* plateau:               k ∝ 1 / (1 + q^β)
* sinc (circular low-pass with cutoff ωc):  k(r) ∝ ωc J₁(ωc r) / (2π r),  k(0) = ωc² / (4π)

"iso" kernels use σy = σx and θ = 0; "aniso" ones draw σy independently and θ ~ U(-π, π).
Sampling happens on the CPU from a ``torch.Generator`` so it is reproducible and independent of the
device the images live on, like BasicSR's dataset-side kernel sampling.
"""

from __future__ import annotations

import math

import torch

from .config import BlurConfig

#: the final sinc filter and its size range are fixed at 21 / 7..21 in Real-ESRGAN
FINAL_SINC_SIZE = 21
MIN_KERNEL_SIZE = 7


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U(low, high)."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return float(low) + (float(high) - float(low)) * u


def bernoulli(generator: torch.Generator, p: float) -> bool:
    """True with probability ``p`` (``U(0,1) < p``, so p = 0 is never and p = 1 always)."""
    return torch.rand((), generator=generator, dtype=torch.float64).item() < p


def choice(generator: torch.Generator, weights: tuple[float, ...] | list[float]) -> int:
    """Index drawn with probability proportional to ``weights``."""
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    return int(torch.multinomial(w, 1, generator=generator).item())


def _offsets(kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    half = kernel_size // 2
    ax = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def quadratic_form(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """q = [x y] Σ⁻¹ [x y]ᵀ on the kernel grid, with Σ⁻¹ = R diag(1/σx², 1/σy²) Rᵀ."""
    xx, yy = _offsets(kernel_size)
    c, s = math.cos(theta), math.sin(theta)
    # coordinates in the rotated frame: u along the σx axis, v along the σy axis
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(kernel: torch.Tensor) -> torch.Tensor:
    return (kernel / kernel.sum()).to(torch.float32)


def gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> torch.Tensor:
    """Bivariate Gaussian, k ∝ exp(-q/2)."""
    return _normalise(torch.exp(-0.5 * quadratic_form(kernel_size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float,
                                beta: float) -> torch.Tensor:
    """Generalised Gaussian, k ∝ exp(-q^β / 2)."""
    q = quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalise(torch.exp(-0.5 * q.pow(beta)))


def plateau_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """Plateau-shaped kernel, k ∝ 1 / (1 + q^β)."""
    q = quadratic_form(kernel_size, sigma_x, sigma_y, theta)
    return _normalise(1.0 / (q.pow(beta) + 1.0))


def sinc_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> torch.Tensor:
    """Circularly symmetric 2-D sinc (ideal low-pass of cutoff ωc rad/pixel), normalised, zero-padded.

    k(r) = ωc J₁(ωc r) / (2π r) for r > 0 and its limit ωc² / (4π) at r = 0.
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"sinc kernel size must be odd, got {kernel_size}")
    xx, yy = _offsets(kernel_size)
    r = torch.sqrt(xx**2 + yy**2)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    k = torch.where(r > 0, k, torch.full_like(k, cutoff**2 / (4 * math.pi)))
    k = _normalise(k)
    return pad_kernel(k, pad_to) if pad_to > kernel_size else k


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred odd kernel to ``size`` x ``size``."""
    pad = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad))


def delta_kernel(size: int) -> torch.Tensor:
    """Identity filter: a single 1 in the middle (used when a sample skips a filter in a batch)."""
    k = torch.zeros(size, size)
    k[size // 2, size // 2] = 1.0
    return k


def _sample_beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    """BasicSR draws β below or above 1 with equal odds, U(β_lo, 1) or U(1, β_hi), so shapes sharper and
    flatter than the Gaussian are equally common. With the plateau range [1, 2] the lower half is U(1, 1):
    β = 1 exactly, half of the time, as in the authors' data. A range not containing 1 is drawn uniformly."""
    low, high = float(beta_range[0]), float(beta_range[1])
    if not low <= 1.0 <= high:
        return uniform(generator, low, high)
    if bernoulli(generator, 0.5):
        return uniform(generator, low, 1.0)
    return uniform(generator, 1.0, high)


def random_mixed_kernel(cfg: BlurConfig, kernel_size: int, generator: torch.Generator) -> torch.Tensor:
    """One kernel from the families of ``cfg.kernel_list`` drawn with ``cfg.kernel_prob``."""
    kind = cfg.kernel_list[choice(generator, cfg.kernel_prob)]
    sigma_x = uniform(generator, *cfg.blur_sigma)
    if kind.endswith("aniso"):
        sigma_y = uniform(generator, *cfg.blur_sigma)
        theta = uniform(generator, -math.pi, math.pi)
    else:
        sigma_y, theta = sigma_x, 0.0
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(kernel_size, sigma_x, sigma_y, theta,
                                           _sample_beta(generator, cfg.betag_range))
    if kind.startswith("plateau"):
        return plateau_kernel(kernel_size, sigma_x, sigma_y, theta, _sample_beta(generator, cfg.betap_range))
    return gaussian_kernel(kernel_size, sigma_x, sigma_y, theta)


def _random_size(generator: torch.Generator, max_size: int) -> int:
    sizes = list(range(MIN_KERNEL_SIZE, max_size + 1, 2))
    return sizes[int(torch.randint(len(sizes), (), generator=generator).item())]


def sample_blur_kernel(cfg: BlurConfig, generator: torch.Generator) -> torch.Tensor:
    """A stage's blur kernel: random odd size in [7, kernel_size], sinc with ``sinc_prob`` else a mixed
    Gaussian-family kernel, zero-padded to ``cfg.kernel_size``."""
    size = _random_size(generator, cfg.kernel_size)
    if bernoulli(generator, cfg.sinc_prob):
        # small kernels cannot represent very low cutoffs without heavy truncation ringing
        low = math.pi / 3 if size < 13 else math.pi / 5
        kernel = sinc_kernel(uniform(generator, low, math.pi), size)
    else:
        kernel = random_mixed_kernel(cfg, size, generator)
    return pad_kernel(kernel, cfg.kernel_size)


def sample_final_sinc(prob: float, generator: torch.Generator) -> torch.Tensor:
    """The last sinc filter (ωc ~ U(π/3, π)) with probability ``prob``, else the identity."""
    if bernoulli(generator, prob):
        size = _random_size(generator, FINAL_SINC_SIZE)
        return sinc_kernel(uniform(generator, math.pi / 3, math.pi), size, pad_to=FINAL_SINC_SIZE)
    return delta_kernel(FINAL_SINC_SIZE)
