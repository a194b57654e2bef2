"""The Real-ESRGAN second-order degradation: HQ (N, 3, H, W) -> LQ (N, 3, H/s, W/s).

Order of operations (Real-ESRGAN, as used by the OSEDiff authors' ``RealESRGAN_degradation``):

1. stage 1: blur -> random resize (up/down/keep, area/bilinear/bicubic) -> Gaussian or Poisson noise
   (clamped) -> JPEG
2. stage 2: blur with probability ``second_blur_prob`` -> random resize to (H/s·r, W/s·r) -> noise -> with
   equal odds either [resize to (H/s, W/s) -> final sinc -> JPEG] or [JPEG -> resize -> final sinc]
3. optional grey / colour jitter (off by default), optional resize back to (H, W), then clamp and
   round to 8-bit levels.

All random parameters are drawn first, per sample, on the CPU (:meth:`RealESRGANDegradation.sample`);
the image work then runs batched on the images' device (:meth:`RealESRGANDegradation.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.transforms import functional as TF

from . import ops
from .config import RESIZE_MODES, DegradationConfig, StageConfig
from .kernels import bernoulli, choice, delta_kernel, sample_blur_kernel, sample_final_sinc, uniform


@dataclass
class StageParams:
    """The draws of one stage for one image."""

    kernel: torch.Tensor  # (K, K), sums to 1
    blur: bool  # False: the stage skips its blur (kernel is the identity)
    resize_mode: str
    size: tuple[int, int]  # (H, W) after this stage's resize
    scale: float | None  # stage 1: the factor r behind ``size`` (drives the resampling grid); stage 2: None
    noise: str  # "gaussian" or "poisson"
    noise_level: float  # Gaussian σ on the 0..255 scale, or the Poisson scale s
    gray_noise: bool
    jpeg_quality: int


@dataclass
class SampleParams:
    """Every random choice made for one image."""

    stage1: StageParams
    stage2: StageParams
    sinc_kernel: torch.Tensor  # (21, 21); identity when no final sinc was drawn
    final_sinc: bool
    sinc_before_jpeg: bool  # True: [resize + sinc] -> JPEG; False: JPEG -> [resize + sinc]
    final_mode: str
    back_mode: str  # mode of the optional resize back to the HQ size
    gray: bool
    jitter: list[tuple[str, float]] = field(default_factory=list)  # (adjustment, factor) in order

    def shape_key(self) -> tuple:
        """Choices that fix tensor shapes/order: samples sharing them can run as one batch."""
        return (self.stage1.size, self.stage1.scale, self.stage1.resize_mode, self.stage2.size, self.stage2.resize_mode,
                self.sinc_before_jpeg, self.final_mode, self.back_mode)


def _resize_scale(stage: StageConfig, generator: torch.Generator) -> float:
    kind = choice(generator, stage.resize_prob)  # 0 up, 1 down, 2 keep
    if kind == 0:
        return uniform(generator, 1.0, stage.resize_range[1])
    if kind == 1:
        return uniform(generator, stage.resize_range[0], 1.0)
    return 1.0


def _mode(generator: torch.Generator) -> str:
    return RESIZE_MODES[choice(generator, [1.0] * len(RESIZE_MODES))]


class RealESRGANDegradation:
    """Callable that synthesises LQ images from HQ ones; holds no weights, only the config."""

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config if config is not None else DegradationConfig()
        self.config.validate()

    # ------------------------------------------------------------------ sampling (CPU)
    def _sample_geometry(self, hw: tuple[int, int], g: torch.Generator) -> dict:
        cfg, (h, w) = self.config, hw
        r1, mode1 = _resize_scale(cfg.stage1, g), _mode(g)
        r2, mode2 = _resize_scale(cfg.stage2, g), _mode(g)
        size1 = (int(h * r1), int(w * r1))
        return {
            # int() truncation as F.interpolate(scale_factor=r) and the authors' int(H / s * r)
            "size1": (max(1, size1[0]), max(1, size1[1])), "scale1": r1 if min(size1) >= 1 else None,
            "mode1": mode1,
            "size2": (max(1, int(h / cfg.scale * r2)), max(1, int(w / cfg.scale * r2))), "mode2": mode2,
            "sinc_before_jpeg": bernoulli(g, 0.5), "final_mode": _mode(g), "back_mode": _mode(g),
        }

    def _sample_stage(self, stage: StageConfig, size: tuple[int, int], scale: float | None, mode: str,
                      g: torch.Generator) -> StageParams:
        blur = bernoulli(g, stage.blur_prob)
        kernel = sample_blur_kernel(stage.blur, g) if blur else delta_kernel(stage.blur.kernel_size)
        if bernoulli(g, stage.gaussian_noise_prob):
            noise, level = "gaussian", uniform(g, *stage.noise_range)
        else:
            noise, level = "poisson", uniform(g, *stage.poisson_scale_range)
        gray_noise = bernoulli(g, stage.gray_noise_prob)
        # libjpeg takes integer qualities; Real-ESRGAN's DiffJPEG interpolates fractional ones
        quality = round(uniform(g, *stage.jpeg_range))
        return StageParams(kernel, blur, mode, size, scale, noise, level, gray_noise, quality)

    def _sample_jitter(self, g: torch.Generator) -> list[tuple[str, float]]:
        jc = self.config.color_jitter
        if not bernoulli(g, jc.prob):
            return []
        order = torch.randperm(4, generator=g).tolist()
        names = ("brightness", "contrast", "saturation", "hue")
        return [(names[i], uniform(g, *getattr(jc, names[i]))) for i in order]

    def sample(self, batch_size: int, hq_size: tuple[int, int], generator: torch.Generator) -> list[SampleParams]:
        """Draw every random choice for a batch of HQ images of size ``hq_size`` = (H, W) (CPU generator)."""
        cfg = self.config
        shared = self._sample_geometry(hq_size, generator) if cfg.share_resize_in_batch else None
        out = []
        for _ in range(batch_size):
            geo = shared or self._sample_geometry(hq_size, generator)
            s1 = self._sample_stage(cfg.stage1, geo["size1"], geo["scale1"], geo["mode1"], generator)
            s2 = self._sample_stage(cfg.stage2, geo["size2"], None, geo["mode2"], generator)
            final_sinc = bernoulli(generator, cfg.final_sinc_prob)
            sinc = sample_final_sinc(1.0 if final_sinc else 0.0, generator)
            gray = bernoulli(generator, cfg.gray_prob)
            out.append(SampleParams(s1, s2, sinc, final_sinc, geo["sinc_before_jpeg"], geo["final_mode"],
                                    geo["back_mode"], gray, self._sample_jitter(generator)))
        return out

    # ------------------------------------------------------------------ image work (any device)
    @staticmethod
    def _noise(x: torch.Tensor, stages: list[StageParams], g: torch.Generator | None) -> torch.Tensor:
        level = torch.tensor([s.noise_level for s in stages], dtype=x.dtype)
        gray = torch.tensor([s.gray_noise for s in stages])
        is_gauss = torch.tensor([s.noise == "gaussian" for s in stages])
        noise = torch.zeros_like(x)
        # only the kinds present are drawn, so the RNG stream depends on the params alone
        if is_gauss.any():
            idx = is_gauss.nonzero().flatten()
            noise[idx.to(x.device)] = ops.gaussian_noise(x[idx.to(x.device)], level[idx], gray[idx], g)
        if (~is_gauss).any():
            idx = (~is_gauss).nonzero().flatten()
            noise[idx.to(x.device)] = ops.poisson_noise(x[idx.to(x.device)], level[idx], gray[idx], g)
        return torch.clamp(x + noise, 0.0, 1.0)

    @staticmethod
    def _blur(x: torch.Tensor, kernels: list[torch.Tensor], active: list[bool]) -> torch.Tensor:
        return ops.filter2d(x, torch.stack(kernels)) if any(active) else x

    def _run_group(self, x: torch.Tensor, ps: list[SampleParams], g: torch.Generator | None,
                   final_size: tuple[int, int], hq_size: tuple[int, int], resize_back: bool) -> torch.Tensor:
        p0 = ps[0]  # shape choices are equal within a group
        s1, s2 = [p.stage1 for p in ps], [p.stage2 for p in ps]
        # stage 1
        x = self._blur(x, [s.kernel for s in s1], [s.blur for s in s1])
        x = ops.resize(x, p0.stage1.size, p0.stage1.resize_mode, p0.stage1.scale)
        x = self._noise(x, s1, g)
        x = ops.jpeg(x, [s.jpeg_quality for s in s1])
        # stage 2
        x = self._blur(x, [s.kernel for s in s2], [s.blur for s in s2])
        x = ops.resize(x, p0.stage2.size, p0.stage2.resize_mode)
        x = self._noise(x, s2, g)
        sincs, has_sinc = [p.sinc_kernel for p in ps], [p.final_sinc for p in ps]
        # Real-ESRGAN groups [resize to target + sinc] and tries both orders around JPEG; other
        # orders were found to produce twisted lines.
        if p0.sinc_before_jpeg:
            x = ops.resize(x, final_size, p0.final_mode)
            x = self._blur(x, sincs, has_sinc)
            x = ops.jpeg(x, [s.jpeg_quality for s in s2])
        else:
            x = ops.jpeg(x, [s.jpeg_quality for s in s2])
            x = ops.resize(x, final_size, p0.final_mode)
            x = self._blur(x, sincs, has_sinc)
        gray = torch.tensor([p.gray for p in ps], device=x.device).view(-1, 1, 1, 1)
        if gray.any():
            x = torch.where(gray, ops.to_grayscale(x), x)
        if any(p.jitter for p in ps):
            x = torch.stack([_jitter(xi, p.jitter) for xi, p in zip(x, ps, strict=True)])
        if resize_back:
            x = ops.resize(x, hq_size, p0.back_mode)
        # like a saved LQ image: 8-bit levels in [0, 1]
        return torch.clamp((x * 255.0).round(), 0, 255) / 255.0

    @torch.no_grad()
    def apply(self, hq: torch.Tensor, params: list[SampleParams], generator: torch.Generator | None = None,
              resize_back: bool = False) -> torch.Tensor:
        """Degrade ``hq`` with pre-drawn ``params``; ``generator`` (on ``hq.device``) feeds the noise."""
        _check_input(hq, self.config.scale)
        if len(params) != hq.shape[0]:
            raise ValueError(f"got {len(params)} parameter sets for a batch of {hq.shape[0]}")
        n, _, h, w = hq.shape
        final_size = (h // self.config.scale, w // self.config.scale)
        out_size = (h, w) if resize_back else final_size
        x = hq.detach().float().clamp(0.0, 1.0)
        out = torch.empty(n, 3, *out_size, device=hq.device, dtype=torch.float32)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(p.shape_key(), []).append(i)
        for idx in groups.values():  # insertion order = order of first sample: deterministic
            sel = torch.tensor(idx, device=hq.device)
            out[sel] = self._run_group(x[sel], [params[i] for i in idx], generator, final_size, (h, w),
                                       resize_back)
        return out.to(hq.dtype)

    def __call__(self, hq: torch.Tensor, generator: torch.Generator | None = None, *,
                 resize_back: bool = False) -> torch.Tensor:
        """Degrade a batch (N, 3, H, W) in [0, 1] -> (N, 3, H//scale, W//scale) in [0, 1], same device.

        Reproducible under ``generator`` (any device; advanced by one draw per call) or, without one,
        under ``torch.manual_seed``. ``resize_back=True`` resizes the LQ back to (H, W) with a random
        mode before the final 8-bit rounding, as the authors' training data loader does.
        """
        _check_input(hq, self.config.scale)
        params_gen, noise_gen = _split_generator(generator, hq.device)
        params = self.sample(hq.shape[0], (hq.shape[-2], hq.shape[-1]), params_gen)
        return self.apply(hq, params, noise_gen, resize_back=resize_back)


def _split_generator(generator: torch.Generator | None,
                     device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """Two fresh generators seeded from one draw of the caller's: a CPU one for the parameters and one
    on the images' device for the noise (noise is drawn where the images are, without transfers).
    The same caller seed therefore gives the same parameters on every device, and the same noise on
    the same device type."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**62, (2,), generator=generator, device=gen_device).tolist()
    params_gen = torch.Generator().manual_seed(seeds[0])
    noise_gen = torch.Generator(device=device).manual_seed(seeds[1])
    return params_gen, noise_gen


def _jitter(img: torch.Tensor, steps: list[tuple[str, float]]) -> torch.Tensor:
    fns = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
           "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
    for name, factor in steps:
        img = fns[name](img, factor)
    return img.clamp(0.0, 1.0)


def _check_input(hq: torch.Tensor, scale: int) -> None:
    if not isinstance(hq, torch.Tensor) or hq.ndim != 4 or hq.shape[1] != 3:
        raise ValueError(f"expected a tensor (N, 3, H, W), got {getattr(hq, 'shape', type(hq))}")
    if not hq.is_floating_point():
        raise ValueError(f"expected a float tensor in [0, 1], got {hq.dtype}")
    if hq.shape[-2] < scale or hq.shape[-1] < scale:
        raise ValueError(f"image {tuple(hq.shape[-2:])} is smaller than the scale factor {scale}")
