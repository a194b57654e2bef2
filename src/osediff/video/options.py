"""How videos are cut, prompted and encoded: one object, checked when made (no PyAV, no torch)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import OptionError

AUTO = "auto"
# constant-quality scales of the encoders that have one (lower is better); the default is near
# "visually lossless" for each
CRF_DEFAULTS = {"libx264": 18, "libx265": 20, "libvpx-vp9": 30, "libsvtav1": 30}
CRF_RANGES = {"libx264": (0, 51), "libx265": (0, 51), "libvpx-vp9": (0, 63), "libsvtav1": (0, 63)}


class VideoOptionError(OptionError):
    """A video option that cannot work; ``argument`` names it (``video.crf``...)."""


@dataclass(frozen=True)
class VideoOptions:
    """Options of every video of a batch job.

    ``codec``: an FFmpeg encoder name, or ``auto`` (H.264 where the container takes it, else the best
    installed; :func:`osediff.video.codec.choose_encoder`). ``crf`` (constant quality) or
    ``bitrate`` (bits/s), not both; neither: the encoder's default quality of :data:`CRF_DEFAULTS`.
    A video is done in segments of about ``segment_seconds`` (cut on keyframes where there are), each
    written once and kept until the whole file is muxed, so an interrupted run resumes. One prompt
    per clip, from ``prompt_frames`` evenly spaced frames; ``prompt_every`` N: a new prompt every N
    frames (each segment starts a new run of N). ``start``/``duration`` (seconds) and ``max_frames``
    limit what is done.
    """

    codec: str = AUTO
    crf: int | None = None
    bitrate: int | None = None
    segment_seconds: float = 5.0
    prompt_every: int | None = None
    prompt_frames: int = 3
    start: float = 0.0
    duration: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.codec, str) and bool(self.codec), "codec", f"must be an encoder name, got {self.codec!r}"),
            (self.crf is None or (isinstance(self.crf, int) and self.crf >= 0), "crf",
             f"must be an integer >= 0, got {self.crf!r}"),
            (self.bitrate is None or (isinstance(self.bitrate, int) and self.bitrate > 0), "bitrate",
             f"must be a positive number of bits/s, got {self.bitrate!r}"),
            (self.crf is None or self.bitrate is None, "crf", "cannot go with a bitrate: give one of the two"),
            (_finite(self.segment_seconds) and self.segment_seconds > 0, "segment_seconds",
             f"must be > 0, got {self.segment_seconds!r}"),
            (self.prompt_every is None or (isinstance(self.prompt_every, int) and self.prompt_every >= 1),
             "prompt_every", f"must be >= 1 frames, got {self.prompt_every!r}"),
            (isinstance(self.prompt_frames, int) and self.prompt_frames >= 1, "prompt_frames",
             f"must be >= 1, got {self.prompt_frames!r}"),
            (_finite(self.start) and self.start >= 0, "start", f"must be >= 0 seconds, got {self.start!r}"),
            (self.duration is None or (_finite(self.duration) and self.duration > 0), "duration",
             f"must be > 0 seconds, got {self.duration!r}"),
            (self.max_frames is None or (isinstance(self.max_frames, int) and self.max_frames >= 1), "max_frames",
             f"must be >= 1, got {self.max_frames!r}"),
        ]
        for ok, argument, problem in checks:
            if not ok:
                raise VideoOptionError(problem, argument=f"video.{argument}")
        low_high = CRF_RANGES.get(self.codec)
        if self.crf is not None and low_high and not low_high[0] <= self.crf <= low_high[1]:
            raise VideoOptionError(f"must be {low_high[0]}..{low_high[1]} for {self.codec}, got {self.crf}",
                                   argument="video.crf")

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_bitrate(text: str) -> int:
    """``4M``, ``2500k`` or ``800000`` -> bits/s."""
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = float(number)
    except ValueError:
        raise VideoOptionError(f"must be bits/s such as 4M or 2500k, got {text!r}", argument="video.bitrate") from None
    return int(value * scale)
