"""Caps on one request to a front end, shared by the web demo and the HTTP service.

Both check the same four things before decoding an image or touching the model; only the
defaults differ (the demo is a shared page, so it takes smaller uploads). No torch here: a
refusal costs milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OptionError, OSEDiffError
from .params import output_size

__all__ = ["DEMO_LIMITS", "SERVE_LIMITS", "LimitExceeded", "LimitsError", "RequestLimits", "check_request",
           "output_size"]


class LimitsError(OptionError):
    """Limits that cannot be enforced (a cap below one); ``argument`` names the field."""


class LimitExceeded(OSEDiffError):
    """A request over a limit: ``kind`` is ``pixels`` (input), ``output_pixels`` or ``upscale``;
    ``size`` the input's (width, height) and ``output`` the result's, where known."""

    def __init__(self, problem: str = "", *, argument: str | None = None, kind: str = "", limit: float = 0,
                 size: tuple[int, int] = (0, 0), output: tuple[int, int] = (0, 0), upscale: float = 0) -> None:
        super().__init__(problem, argument=argument)
        self.kind, self.limit, self.size, self.output, self.upscale = kind, limit, size, output, upscale


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
                raise LimitsError(f"must be a finite number of at least 1, got {value!r}", argument=name)

    @property
    def max_side(self) -> int:
        """The side of the largest square upload, for messages."""
        return math.isqrt(self.max_pixels)


DEMO_LIMITS = RequestLimits(max_pixels=1024 * 1024)
SERVE_LIMITS = RequestLimits()


def check_request(width: int, height: int, upscale: float, limits: RequestLimits) -> tuple[int, int]:
    """The result's (width, height) if the input, the factor and the result are within ``limits``."""
    if width * height > limits.max_pixels:
        raise LimitExceeded(f"the image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} "
                            "are accepted", kind="pixels", limit=limits.max_pixels, size=(width, height))
    if not (math.isfinite(upscale) and 1.0 <= upscale <= limits.max_upscale):
        raise LimitExceeded(f"must be between 1 and {limits.max_upscale:g}, got {upscale:g}", argument="upscale",
                            kind="upscale", limit=limits.max_upscale, upscale=upscale)
    out_w, out_h = output_size(width, height, upscale)
    if out_w * out_h > limits.max_output_pixels:
        raise LimitExceeded(f"x{upscale:g} of {width}x{height} would be {out_w}x{out_h} = {out_w * out_h} pixels; "
                            f"at most {limits.max_output_pixels} are produced", kind="output_pixels",
                            limit=limits.max_output_pixels, size=(width, height), output=(out_w, out_h),
                            upscale=upscale)
    return out_w, out_h
