"""Tests of the Real-ESRGAN second-order degradation (osediff.degradation)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REALSR_SHIPPED, REALSR_SHIPPED_STEMS
from osediff.degradation import DegradationConfig, RealESRGANDegradation, ops, realesrgan
from osediff.degradation import kernels as K

HR_DIR = REALSR_SHIPPED / "hr"  # two RealSR ground truths, 512x512 (tests/data/README.md)

KERNELS = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
# the authors' dataloaders/params_realesrgan.yml, as YAML would load it
AUTHORS_YML = {
    "scale": 4, "color_jitter_prob": 0.0, "gray_prob": 0.0,
    "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30], "poisson_scale_range": [0.05, 3.0], "gray_noise_prob": 0.4, "jpeg_range": [30, 95],
    "second_blur_prob": 0.8, "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1, 25], "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4, "jpeg_range2": [30, 95],
    "kernel_info": {
        "blur_kernel_size": 21, "kernel_list": KERNELS,
        "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob": 0.1, "blur_sigma": [0.2, 3],
        "betag_range": [0.5, 4], "betap_range": [1, 2],
        "blur_kernel_size2": 21, "kernel_list2": KERNELS, "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
        "sinc_prob2": 0.1,
        "blur_sigma2": [0.2, 1.5], "betag_range2": [0.5, 4], "betap_range2": [1, 2],
        "final_sinc_prob": 0.8,
    },
}


def _hr_crop(stem: str = "Canon_001_LR4", size: int = 128, top: int = 100, left: int = 100) -> torch.Tensor:
    arr = np.array(Image.open(HR_DIR / f"{stem}.webp").convert("RGB"))[top:top + size, left:left + size]
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


def _hr_batch(n: int = 3, size: int = 128) -> torch.Tensor:
    """``n`` different crops: the shipped images in turn, each next crop of an image further down it."""
    stems = REALSR_SHIPPED_STEMS
    return torch.cat([_hr_crop(stems[i % len(stems)], size, top=100 + 150 * (i // len(stems))) for i in range(n)])


def _laplacian_energy(x: torch.Tensor) -> float:
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return torch.nn.functional.conv2d(x, lap, groups=3).pow(2).mean().item()


def _j1(x: float) -> float:
    """Bessel J1 from its integral J1(x) = (1/π) ∫₀^π cos(τ - x sin τ) dτ (independent of torch)."""
    tau = np.linspace(0.0, math.pi, 200001)
    return float(np.trapezoid(np.cos(tau - x * np.sin(tau)), tau) / math.pi)


# ----------------------------------------------------------------------------------------- realesrgan

def test_shapes_range_and_8bit_levels() -> None:
    hq = _hr_batch(3)
    deg = RealESRGANDegradation(DegradationConfig())
    lq = deg(hq, generator=torch.Generator().manual_seed(0))
    assert lq.shape == (3, 3, 32, 32) and lq.dtype == torch.float32 and lq.device == hq.device
    assert lq.min() >= 0 and lq.max() <= 1
    assert torch.equal((lq * 255).round() / 255, lq)  # rounded to 8-bit levels
    # degraded, not a plain downscale: differs from the bicubic 4x reduction
    plain = torch.nn.functional.interpolate(hq, size=(32, 32), mode="area")
    assert (lq - plain).abs().mean() > 0.005
    back = deg(hq, generator=torch.Generator().manual_seed(0), resize_back=True)
    assert back.shape == hq.shape
    odd = deg(torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(1)),
              generator=torch.Generator().manual_seed(0))
    assert odd.shape == (2, 3, 17, 22)


def test_determinism_under_generator() -> None:
    hq = _hr_batch(3)
    deg = RealESRGANDegradation()
    a = deg(hq, generator=torch.Generator().manual_seed(123))
    b = deg(hq, generator=torch.Generator().manual_seed(123))
    c = deg(hq, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = torch.Generator().manual_seed(5)
    first, second = deg(hq, generator=g), deg(hq, generator=g)  # the generator advances between calls
    assert not torch.equal(first, second)
    torch.manual_seed(9)
    d = deg(hq)
    torch.manual_seed(9)
    assert torch.equal(d, deg(hq))


def test_batched_equals_per_image() -> None:
    """A batch gives each image exactly what it would get alone with the same drawn parameters."""
    hq = _hr_batch(3)
    deg = RealESRGANDegradation()
    params = deg.sample(3, (128, 128), torch.Generator().manual_seed(2))
    # noise-free run so the RNG stream order cannot matter
    for p in params:
        p.stage1.noise, p.stage1.noise_level = "gaussian", 0.0
        p.stage2.noise, p.stage2.noise_level = "gaussian", 0.0
    batched = deg.apply(hq, params, torch.Generator().manual_seed(0))
    for i in range(3):
        single = deg.apply(hq[i:i + 1], [params[i]], torch.Generator().manual_seed(0))
        torch.testing.assert_close(batched[i:i + 1], single, atol=1 / 255 + 1e-6, rtol=0)
        assert (batched[i:i + 1] != single).float().mean() < 0.01  # at most rare rounding flips


def test_shared_resize_runs_as_one_batch() -> None:
    deg = RealESRGANDegradation(DegradationConfig(share_resize_in_batch=True))
    params = deg.sample(6, (128, 128), torch.Generator().manual_seed(0))
    assert len({p.shape_key() for p in params}) == 1
    assert len({p.stage1.jpeg_quality for p in params}) > 1  # non-shape choices stay per sample
    per_sample = RealESRGANDegradation().sample(6, (128, 128), torch.Generator().manual_seed(0))
    assert len({p.shape_key() for p in per_sample}) > 1


def test_resize_gives_sampled_sizes_and_order(monkeypatch: pytest.MonkeyPatch) -> None:
    deg = RealESRGANDegradation()
    hq = _hr_batch(1, 128)
    calls: list[tuple[str, tuple[int, ...]]] = []
    real_resize, real_jpeg = ops.resize, ops.jpeg

    def rec_resize(x, size, mode, scale=None):
        out = real_resize(x, size, mode, scale)
        calls.append(("resize", tuple(out.shape[-2:])))
        return out

    def rec_jpeg(x, q):
        calls.append(("jpeg", tuple(x.shape[-2:])))
        return real_jpeg(x, q)

    monkeypatch.setattr(realesrgan.ops, "resize", rec_resize)
    monkeypatch.setattr(realesrgan.ops, "jpeg", rec_jpeg)
    orders = set()
    for seed in range(6):
        (p,) = deg.sample(1, (128, 128), torch.Generator().manual_seed(seed))
        calls.clear()
        deg.apply(hq, [p], torch.Generator().manual_seed(0))
        s1, s2 = p.stage1.size, p.stage2.size
        # the sampled scale ranges: stage 1 in [0.15, 1.5] x HQ, stage 2 in [0.3, 1.2] x HQ/4
        assert int(128 * 0.15) <= s1[0] <= int(128 * 1.5) and int(32 * 0.3) <= s2[0] <= int(32 * 1.2)
        expected = [("resize", s1), ("jpeg", s1), ("resize", s2)]
        if p.sinc_before_jpeg:
            expected += [("resize", (32, 32)), ("jpeg", (32, 32))]
        else:
            expected += [("jpeg", s2), ("resize", (32, 32))]
        assert calls == expected
        orders.add(p.sinc_before_jpeg)
    assert orders == {True, False}


def test_sampling_frequencies_match_config() -> None:
    params = RealESRGANDegradation().sample(600, (512, 512), torch.Generator().manual_seed(0))

    def frac(pred) -> float:
        return sum(map(pred, params)) / len(params)

    # stage 1 resize kinds up/down/keep = 0.2/0.7/0.1; second blur 0.8; final sinc 0.8; Gaussian 0.5
    assert abs(frac(lambda p: p.stage1.size[0] > 512) - 0.2) < 0.05
    assert abs(frac(lambda p: p.stage1.size[0] < 512) - 0.7) < 0.05
    assert abs(frac(lambda p: p.stage2.blur) - 0.8) < 0.05
    assert abs(frac(lambda p: p.final_sinc) - 0.8) < 0.05
    assert abs(frac(lambda p: p.stage1.noise == "gaussian") - 0.5) < 0.06
    assert abs(frac(lambda p: p.stage1.gray_noise) - 0.4) < 0.06
    assert abs(frac(lambda p: p.sinc_before_jpeg) - 0.5) < 0.06
    q = [p.stage2.jpeg_quality for p in params]
    assert min(q) >= 30 and max(q) <= 95 and abs(np.mean(q) - 62.5) < 2.5
    sig = [p.stage2.noise_level for p in params if p.stage2.noise == "gaussian"]
    assert min(sig) >= 1 and max(sig) <= 25


# -------------------------------------------------------------------------------------------- kernels

def test_sampled_kernels_are_normalised_and_padded() -> None:
    cfg = DegradationConfig()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = K.sample_blur_kernel(cfg.stage1.blur, g)
        assert k.shape == (21, 21)
        assert abs(k.sum().item() - 1.0) < 1e-5
        s = K.sample_final_sinc(0.8, g)
        assert abs(s.sum().item() - 1.0) < 1e-5


def test_beta_draws_split_at_one() -> None:
    g = torch.Generator().manual_seed(0)
    betas = [K._sample_beta(g, (0.5, 4.0)) for _ in range(400)]
    below = sum(b < 1 for b in betas) / len(betas)
    assert 0.43 < below < 0.57 and min(betas) >= 0.5 and max(betas) <= 4.0
    assert all(1.5 <= K._sample_beta(g, (1.5, 3.0)) <= 3.0 for _ in range(50))


def test_plateau_beta_is_one_half_of_the_time() -> None:
    """The plateau range [1, 2] touches 1: BasicSR's lower branch U(1, 1) gives beta = 1 exactly."""
    g = torch.Generator().manual_seed(4)
    betas = [K._sample_beta(g, (1.0, 2.0)) for _ in range(400)]
    ones = sum(b == 1.0 for b in betas) / len(betas)
    assert 0.43 < ones < 0.57 and min(betas) >= 1.0 and max(betas) <= 2.0


def test_kernel_closed_forms() -> None:
    sx, sy = 1.5, 0.7
    k = K.gaussian_kernel(21, sx, sx).double()
    assert math.isclose(k[10, 11] / k[10, 10], math.exp(-1 / (2 * sx**2)), rel_tol=1e-6)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    # anisotropic: σx along columns at θ = 0; θ = π/2 swaps the axes
    a0 = K.gaussian_kernel(21, sx, sy, 0.0).double()
    assert math.isclose(a0[10, 12] / a0[10, 10], math.exp(-4 / (2 * sx**2)), rel_tol=1e-6)
    assert math.isclose(a0[12, 10] / a0[10, 10], math.exp(-4 / (2 * sy**2)), rel_tol=1e-6)
    torch.testing.assert_close(K.gaussian_kernel(21, sx, sy, math.pi / 2), a0.float().T, atol=1e-7, rtol=0)
    # θ = π/4 turns the σx axis onto the (x, y) = (1, 1) diagonal (x = column, y = row, as BasicSR):
    # q(1, 1) = 2/σx², q(1, -1) = 2/σy²
    a45 = K.gaussian_kernel(21, sx, sy, math.pi / 4).double()
    assert math.isclose(a45[11, 11] / a45[10, 10], math.exp(-1 / sx**2), rel_tol=1e-6)
    assert math.isclose(a45[9, 11] / a45[10, 10], math.exp(-1 / sy**2), rel_tol=1e-6)
    beta = 2.5
    gk = K.generalized_gaussian_kernel(21, sx, sx, 0.0, beta).double()
    assert math.isclose(gk[10, 12] / gk[10, 10], math.exp(-0.5 * (4 / sx**2) ** beta), rel_tol=1e-6)
    pk = K.plateau_kernel(21, sx, sx, 0.0, beta).double()
    assert math.isclose(pk[13, 10] / pk[10, 10], 1 / (1 + (9 / sx**2) ** beta), rel_tol=1e-6)


def test_sinc_kernel_matches_closed_form() -> None:
    wc = 2.0
    k = K.sinc_kernel(wc, 15).double()
    # k(r) / k(0) = [ωc J1(ωc r) / (2π r)] / [ωc² / (4π)] at (dy, dx) = (3, 4): r = 5
    r = 5.0
    expected = (wc * _j1(wc * r) / (2 * math.pi * r)) / (wc**2 / (4 * math.pi))
    assert math.isclose((k[7 + 3, 7 + 4] / k[7, 7]).item(), expected, rel_tol=1e-5)
    assert abs(k.sum().item() - 1) < 1e-6
    # low-pass: the DC gain is 1 and the Nyquist gain is small
    nyq = (k * torch.tensor([(-1.0) ** (i + j) for i in range(15) for j in range(15)]).view(15, 15)).sum()
    assert abs(nyq.item()) < 0.1
    padded = K.sinc_kernel(wc, 15, pad_to=21)
    assert padded.shape == (21, 21) and torch.equal(padded[3:18, 3:18], k.float())


# ------------------------------------------------------------------------------------------------ ops

def test_blur_lowers_high_frequency_energy() -> None:
    x = _hr_crop()
    blurred = ops.filter2d(x, K.gaussian_kernel(21, 2.0, 2.0))
    ratio = _laplacian_energy(blurred) / _laplacian_energy(x)
    assert ratio < 0.1
    assert torch.equal(ops.filter2d(x, K.delta_kernel(21)), x)  # identity kernel is exact
    # per-sample kernels: each image sees its own
    x2 = torch.cat([x, x.flip(-1)])
    ks = torch.stack([K.gaussian_kernel(21, 2.0, 2.0), K.gaussian_kernel(21, 0.5, 3.0, 0.3)])
    both = ops.filter2d(x2, ks)
    torch.testing.assert_close(both[1:], ops.filter2d(x2[1:], ks[1]))
    torch.testing.assert_close(both[:1], blurred)


def test_jpeg_batch_in_threads_equals_each_sample_alone() -> None:
    x = torch.rand(5, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    qualities = [30, 50, 70, 90, 95]
    batch = ops.jpeg(x, qualities)
    assert batch.shape == x.shape
    for i, q in enumerate(qualities):
        assert torch.equal(batch[i:i + 1], ops.jpeg(x[i:i + 1], [q]))


def test_jpeg_changes_image_blockiness_and_quality_order() -> None:
    x = _hr_crop(size=256)

    def blockiness(y: torch.Tensor) -> float:
        # mean jump across 8x8 block borders relative to the mean jump elsewhere
        d = (y[..., 1:] - y[..., :-1]).abs().mean(dim=(0, 1, 2))
        border = torch.arange(d.numel()) % 8 == 7
        return (d[border].mean() / d[~border].mean()).item()

    low, high = ops.jpeg(x, [30]), ops.jpeg(x, [95])
    assert not torch.equal(low, x)
    err_low, err_high = (low - x).pow(2).mean().item(), (high - x).pow(2).mean().item()
    assert err_high < err_low / 3
    assert abs(blockiness(x) - 1) < 0.05 and blockiness(low) > 1.3


def test_gaussian_noise_variance_matches_sigma() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 3, 256, 256), 0.5)
    sigma = torch.tensor([10.0, 25.0])
    n = ops.gaussian_noise(x, sigma, torch.tensor([False, True]), g)
    for i in range(2):
        var = n[i].var().item()
        assert math.isclose(var, (sigma[i].item() / 255) ** 2, rel_tol=0.03)
        assert abs(n[i].mean().item()) < 3 * sigma[i].item() / 255 / math.sqrt(n[i].numel())
    assert not torch.equal(n[0, 0], n[0, 1])  # colour noise: independent channels
    assert torch.equal(n[1, 0], n[1, 1]) and torch.equal(n[1, 0], n[1, 2])  # grey noise


def test_poisson_noise_scales_with_intensity() -> None:
    g = torch.Generator().manual_seed(0)
    # left half flat at a level, right half a ramp through all 256 levels, so v = 256
    ramp = torch.arange(256.0).div(255).repeat(256, 1)
    x = torch.stack([torch.cat([torch.full((256, 256), a), ramp], dim=1) for a in (51 / 255, 204 / 255)])
    x = x[:, None].repeat(1, 3, 1, 1)
    s = torch.tensor([2.0, 2.0])
    n = ops.poisson_noise(x, s, torch.tensor([False, False]), g)
    for i, a in enumerate((51 / 255, 204 / 255)):
        flat = n[i, :, :, :256]
        expected = s[i].item() ** 2 * a / 256  # Var = s² x / v
        assert math.isclose(flat.var().item(), expected, rel_tol=0.05)
        assert abs(flat.mean().item()) < 0.002
    ratio = n[1, :, :, :256].var() / n[0, :, :, :256].var()
    assert 3.6 < ratio.item() < 4.4  # intensity 4x -> variance 4x
    gray = ops.poisson_noise(x, s, torch.tensor([True, True]), g)
    assert torch.equal(gray[:, 0], gray[:, 2])


def test_stage_noise_raises_variance_in_pipeline() -> None:
    """End to end: a flat grey image degraded with noise only has the sampled noise's variance."""
    deg = RealESRGANDegradation()
    (p,) = deg.sample(1, (128, 128), torch.Generator().manual_seed(0))
    p.stage1.kernel, p.stage2.kernel = K.delta_kernel(21), K.delta_kernel(21)
    p.stage1.size, p.stage2.size = (128, 128), (32, 32)
    p.stage1.noise, p.stage1.noise_level, p.stage1.gray_noise = "gaussian", 20.0, False
    p.stage2.noise, p.stage2.noise_level = "gaussian", 0.0
    p.stage1.jpeg_quality = p.stage2.jpeg_quality = 100
    p.final_sinc, p.sinc_kernel = False, K.delta_kernel(21)
    hq = torch.full((1, 3, 128, 128), 0.5)
    out = deg.apply(hq, [p], torch.Generator().manual_seed(0))
    quiet = dataclasses.replace(p, stage1=dataclasses.replace(p.stage1, noise_level=0.0))
    clean = deg.apply(hq, [quiet], torch.Generator().manual_seed(0))
    assert clean.var().item() < 1e-6
    # area/bilinear/bicubic 4x reductions average the noise down; it must still be clearly present
    assert out.var().item() > 10 * (1 / 255) ** 2 / 12


# --------------------------------------------------------------------------------------------- config

def test_from_dict_authors_yaml_equals_defaults() -> None:
    cfg = DegradationConfig.from_dict(AUTHORS_YML)
    assert cfg == DegradationConfig()
    assert cfg.stage2.blur.blur_sigma == (0.2, 1.5) and cfg.stage1.blur.blur_sigma == (0.2, 3.0)
    assert cfg.stage2.blur_prob == 0.8 and cfg.final_sinc_prob == 0.8 and cfg.scale == 4
    assert cfg.stage1.jpeg_range == (30, 95) and cfg.stage2.jpeg_range == (30, 95)
    assert DegradationConfig.from_dict(cfg.to_dict()) == cfg
    # a partial stage-2 sub-dict keeps stage 2's own defaults
    part = DegradationConfig.from_dict({"stage2": {"blur": {"sinc_prob": 0.3}}})
    assert part.stage2.blur.sinc_prob == 0.3 and part.stage2.blur.blur_sigma == (0.2, 1.5)
    assert DegradationConfig.from_dict({"noise_range2": [2, 5]}).stage2.noise_range == (2, 5)


@pytest.mark.parametrize(("data", "key"), [
    ({"jpeg_quality": [30, 95]}, "jpeg_quality"),
    ({"kernel_info": {"blur_sigma3": [1, 2]}}, "kernel_info.blur_sigma3"),
    ({"stage1": {"blur": {"sigma": [1, 2]}}}, "stage1.blur.sigma"),
    ({"stage2": {"noise": 1}}, "stage2.noise"),
])
def test_from_dict_rejects_unknown_keys(data: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DegradationConfig.from_dict(data)


def test_from_dict_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="final_sinc_prob"):
        DegradationConfig.from_dict({"kernel_info": {"final_sinc_prob": 1.5}})
    with pytest.raises(ValueError, match="kernel_list"):
        DegradationConfig.from_dict({"kernel_info": {"kernel_list": ["iso", "box"], "kernel_prob": [1, 1]}})
    with pytest.raises(ValueError, match="jpeg_range"):
        DegradationConfig.from_dict({"jpeg_range": [95, 30]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_is_deterministic() -> None:
    # synthetic smooth images: the benchmark folder is not on every GPU machine
    coarse = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hq = torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bilinear").cuda()
    deg = RealESRGANDegradation()
    a = deg(hq, generator=torch.Generator().manual_seed(0))
    b = deg(hq, generator=torch.Generator().manual_seed(0))
    assert a.device.type == "cuda" and a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    # same parameters as on the CPU; only the device's noise stream differs
    cpu = deg(hq.cpu(), generator=torch.Generator().manual_seed(0))
    assert (a.cpu() - cpu).abs().mean() < 0.1
    # a generator on the GPU is accepted too (the training loop may hold one)
    c = deg(hq, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(c, deg(hq, generator=torch.Generator(device="cuda").manual_seed(0)))
