"""Video through the one per-image step: ``osediff upscale clip.mp4 -o out/`` writes ``out/clip.mp4``.

- ``options.py``: :class:`VideoOptions` (codec, quality, segments, prompts, limits), checked when made
- ``probe.py``: the frames of a video from its packets, its segments, decoding one segment
- ``codec.py``: the encoder choice, encoding a segment file, muxing segments with the source's sound
- ``runner.py``: a video's plan and work folder (resume), its prompt, segments through the step

PyAV (the ``video`` extra) is imported only when a video is read or written.
"""

from .options import VideoOptionError, VideoOptions
from .probe import VideoReadError

__all__ = ["VideoOptionError", "VideoOptions", "VideoReadError"]
