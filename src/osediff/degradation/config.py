"""Parameters of the Real-ESRGAN second-order degradation model.

The defaults reproduce ``dataloaders/params_realesrgan.yml`` of the OSEDiff authors (the same numbers
as Real-ESRGAN's x4 training option file and SeeSR's). Those YAML files are *flat*: stage-2 keys carry
a ``2`` suffix and the kernel settings sit under ``kernel_info``. :meth:`DegradationConfig.from_dict`
reads that layout as well as the nested one produced by :meth:`DegradationConfig.to_dict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..typed_config import ConfigError, build

T = TypeVar("T")

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class BlurConfig:
    """Random blur kernel of one stage.

    ``kernel_size`` is the largest (and padded) size: the actual size is drawn uniformly from the odd
    sizes 7, 9, ..., ``kernel_size`` and zero-padded back to it, as Real-ESRGAN does.
    """

    kernel_size: int = 21
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)

    def validate(self, where: str) -> None:
        if self.kernel_size < 7 or self.kernel_size % 2 == 0:
            raise ValueError(f"{where}.kernel_size must be odd and >= 7, got {self.kernel_size}")
        unknown = [k for k in self.kernel_list if k not in KERNEL_TYPES]
        if unknown:
            raise ValueError(f"{where}.kernel_list has unknown kernel types {unknown}; known: {KERNEL_TYPES}")
        if len(self.kernel_list) != len(self.kernel_prob) or not self.kernel_list:
            raise ValueError(f"{where}.kernel_list and kernel_prob must be non-empty and of equal length")
        _check_weights(self.kernel_prob, f"{where}.kernel_prob")
        _check_prob(self.sinc_prob, f"{where}.sinc_prob")
        _check_range(self.blur_sigma, f"{where}.blur_sigma", low=1e-6)
        _check_range(self.betag_range, f"{where}.betag_range", low=1e-6)
        _check_range(self.betap_range, f"{where}.betap_range", low=1e-6)


@dataclass
class StageConfig:
    """One degradation stage: blur -> random resize -> Gaussian or Poisson noise -> JPEG."""

    blur_prob: float = 1.0  # stage 2 reads ``second_blur_prob``
    blur: BlurConfig = field(default_factory=BlurConfig)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # otherwise Poisson noise
    noise_range: tuple[float, float] = (1.0, 30.0)  # Gaussian sigma on the 0..255 scale
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def validate(self, where: str) -> None:
        _check_prob(self.blur_prob, f"{where}.blur_prob")
        self.blur.validate(f"{where}.blur")
        if len(self.resize_prob) != 3:
            raise ValueError(f"{where}.resize_prob needs three weights (up, down, keep)")
        _check_weights(self.resize_prob, f"{where}.resize_prob")
        _check_range(self.resize_range, f"{where}.resize_range", low=1e-6)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ValueError(f"{where}.resize_range must contain 1 (down below it, up above it)")
        _check_prob(self.gaussian_noise_prob, f"{where}.gaussian_noise_prob")
        _check_range(self.noise_range, f"{where}.noise_range", low=0.0)
        _check_range(self.poisson_scale_range, f"{where}.poisson_scale_range", low=0.0)
        _check_prob(self.gray_noise_prob, f"{where}.gray_noise_prob")
        _check_range(self.jpeg_range, f"{where}.jpeg_range", low=1.0, high=100.0)


def _stage2_default() -> StageConfig:
    return StageConfig(
        blur_prob=0.8,
        blur=BlurConfig(blur_sigma=(0.2, 1.5)),
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
        jpeg_range=(30.0, 95.0),
    )


@dataclass
class ColorJitterConfig:
    """Optional colour jitter of the LQ image (off in the authors' setting: ``color_jitter_prob: 0``)."""

    prob: float = 0.0
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.0, 1.5)
    hue: tuple[float, float] = (-0.1, 0.1)

    def validate(self, where: str) -> None:
        _check_prob(self.prob, f"{where}.prob")
        for name in ("brightness", "contrast", "saturation"):
            _check_range(getattr(self, name), f"{where}.{name}", low=0.0)
        _check_range(self.hue, f"{where}.hue", low=-0.5, high=0.5)


@dataclass
class DegradationConfig:
    """All parameters of the two-stage degradation; defaults = the authors' ``params_realesrgan.yml``."""

    scale: int = 4
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=_stage2_default)
    final_sinc_prob: float = 0.8
    gray_prob: float = 0.0  # probability of a grey LQ (all three channels equal)
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)
    # The authors degrade one image at a time, so every random choice is per sample (the default).
    # True shares the shape-changing choices (resize kind/scale/mode, JPEG/sinc order) across the batch,
    # as Real-ESRGAN's batched GPU trainer does; the whole batch then runs as one tensor.
    share_resize_in_batch: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale!r}")
        self.stage1.validate("stage1")
        self.stage2.validate("stage2")
        _check_prob(self.final_sinc_prob, "final_sinc_prob")
        _check_prob(self.gray_prob, "gray_prob")
        self.color_jitter.validate("color_jitter")
        if not isinstance(self.share_resize_in_batch, bool):
            raise ValueError(f"share_resize_in_batch must be true or false, got {self.share_resize_in_batch!r}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-Python dict (lists, not tuples) that :meth:`from_dict` reads back."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DegradationConfig:
        """Build from a nested dict (as :meth:`to_dict`) or the authors' flat YAML layout.

        Missing keys keep their defaults; unknown keys, values of the wrong type (converted where safe,
        as a YAML number read as a string) and invalid values raise :class:`ConfigError` naming the key.
        """
        return build_config(cls(), data)


def build_config(default: T, data: Mapping[str, Any], flat: bool = True) -> T:
    """``default`` (a degradation config) updated from ``data``, typed and validated; ``flat`` also
    reads the authors' flat Real-ESRGAN layout."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"degradation config must be a mapping, got {type(data).__name__}")
    try:
        return build(default, _flat_to_nested(data) if flat else data)
    except ConfigError:
        raise
    except ValueError as err:  # the configs' own validation
        raise ConfigError(str(err)) from None


# ---------------------------------------------------------------------------------------------------
# flat (authors' YAML) -> nested

_STAGE_KEYS = ("resize_prob", "resize_range", "gaussian_noise_prob", "noise_range", "poisson_scale_range",
               "gray_noise_prob", "jpeg_range")
_BLUR_KEYS = {"blur_kernel_size": "kernel_size", "kernel_list": "kernel_list", "kernel_prob": "kernel_prob",
              "sinc_prob": "sinc_prob", "blur_sigma": "blur_sigma", "betag_range": "betag_range",
              "betap_range": "betap_range"}
_JITTER_KEYS = {"color_jitter_prob": "prob", "brightness": "brightness", "contrast": "contrast",
                "saturation": "saturation", "hue": "hue"}


def _flat_to_nested(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def put(path: tuple[str, ...], value: Any) -> None:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"degradation config key {'.'.join(path)!r} conflicts with a scalar")
        node[path[-1]] = value

    def merge(path: tuple[str, ...], value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                merge((*path, str(k)), v)
        else:
            put(path, value)

    for key, value in data.items():
        key = str(key)
        if key == "kernel_info":
            if not isinstance(value, Mapping):
                raise ConfigError("degradation config key 'kernel_info' must be a mapping")
            for kkey, kval in value.items():
                kkey = str(kkey)
                if kkey == "final_sinc_prob":
                    put(("final_sinc_prob",), kval)
                elif kkey in _BLUR_KEYS:
                    put(("stage1", "blur", _BLUR_KEYS[kkey]), kval)
                elif kkey.endswith("2") and kkey[:-1] in _BLUR_KEYS:
                    put(("stage2", "blur", _BLUR_KEYS[kkey[:-1]]), kval)
                else:
                    raise ConfigError(f"unknown key 'kernel_info.{kkey}'")
        elif key in _STAGE_KEYS:
            put(("stage1", key), value)
        elif key.endswith("2") and key[:-1] in _STAGE_KEYS:
            put(("stage2", key[:-1]), value)
        elif key == "second_blur_prob":
            put(("stage2", "blur_prob"), value)
        elif key in _JITTER_KEYS:
            put(("color_jitter", _JITTER_KEYS[key]), value)
        else:
            merge((key,), value)  # nested layout; checked against the dataclasses in _build
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _check_prob(p: float, name: str) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def _check_weights(w: tuple[float, ...], name: str) -> None:
    if any(float(x) < 0 for x in w) or sum(float(x) for x in w) <= 0:
        raise ValueError(f"{name} must be non-negative weights with a positive sum, got {list(w)}")


def _check_range(r: tuple[float, float], name: str, low: float | None = None, high: float | None = None) -> None:
    if len(r) != 2 or float(r[0]) > float(r[1]):
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(r)}")
    if (low is not None and float(r[0]) < low) or (high is not None and float(r[1]) > high):
        raise ValueError(f"{name} must lie within [{low}, {high}], got {list(r)}")
