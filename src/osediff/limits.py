"""Caps on one request to a front end, shared by the web demo and the HTTP service.

Both check the same four things before decoding an image or touching the model; only the
defaults differ (the demo is a shared page, so it takes smaller uploads). No torch here: a
refusal costs milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OSEDiffError


class LimitsError(OSEDiffError, ValueError):
    """Limits that cannot be enforced (a cap below one); the message names the field and its flag."""


@dataclass(frozen=True)
class RequestLimits:
    """Bytes and pixels of the upload, pixels of the result and the largest upscale factor."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 2048 * 2048
    max_output_pixels: int = 4096 * 4096
    max_upscale: float = 8.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_output_pixels", "max_upscale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
                flag = "--max-upload-mb" if name == "max_bytes" else "--" + name.replace("_", "-")
                raise LimitsError(f"{name} ({flag}) must be a finite number of at least 1, got {value!r}")

    @property
    def max_side(self) -> int:
        """The side of the largest square upload, for messages."""
        return math.isqrt(self.max_pixels)


DEMO_LIMITS = RequestLimits(max_pixels=1024 * 1024)
SERVE_LIMITS = RequestLimits()


def output_size(width: int, height: int, upscale: float) -> tuple[int, int]:
    """The pipeline's output size: round(s * side) per side, as its bicubic pre-upscale."""
    return max(1, round(width * upscale)), max(1, round(height * upscale))
