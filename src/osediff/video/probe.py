"""Reading a video: what its frames are (from the packets, without decoding), its segments, and the
frames of one segment decoded as RGB images.

Frames are identified by their presentation timestamps in the video stream's own time base, so a
variable frame rate, the time base and the order of frames survive unchanged; a segment is a range
of them, decoded from the keyframe at or before its first frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from PIL import Image

from ..errors import OSEDiffError
from ..fileio import first_line
from .options import VideoOptions

COLOUR_TAGS = ("color_range", "colorspace", "color_primaries", "color_trc")


class VideoReadError(OSEDiffError):
    """A video that cannot be read: not a video, truncated, a broken frame; fails that video only."""


@dataclass(frozen=True)
class VideoInfo:
    """The frames to upscale of one video, and what its output must keep."""

    path: str
    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None  # average frame rate
    frames: tuple[int, ...]  # presentation timestamps of the frames to do, in order
    keyframes: frozenset[int]
    offset: int  # subtracted from every timestamp of the output (the --start cut), in time_base
    end: int  # the end of the last frame, in time_base (where kept audio stops)
    cut: bool  # only part of the video is done (--start, --duration, --max-frames): other streams are cut too
    colour: tuple[tuple[str, int], ...]  # COLOUR_TAGS of the stream
    other_streams: tuple[str, ...]  # "audio aac", "subtitle mov_text": copied as they are

    def segments(self, seconds: float) -> list[tuple[int, int]]:
        """Frame index ranges of about ``seconds`` each, cut on a keyframe where one comes within
        twice that, else where the time is up (such a segment decodes from the keyframe before it)."""
        cuts, first, span = [0], self.frames[0] if self.frames else 0, seconds / self.time_base
        for index, pts in enumerate(self.frames[1:], start=1):
            elapsed = pts - first
            if (pts in self.keyframes and elapsed >= span) or elapsed >= 2 * span:
                cuts.append(index)
                first = pts
        return list(zip(cuts, [*cuts[1:], len(self.frames)], strict=True))


def open_video(path: str | os.PathLike):
    """The PyAV container of ``path`` and its first video stream; one line when it cannot be read."""
    try:
        import av
    except ImportError:
        raise VideoReadError(f"{path}: reading videos needs PyAV: pip install 'osediff[video]'") from None

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise VideoReadError(f"{path}: cannot read the video ({first_line(err)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: has no video stream")
    return container, container.streams.video[0]


def probe(path: str | os.PathLike, options: VideoOptions) -> VideoInfo:
    """The frames of ``path`` that ``options`` (start, duration, max_frames) select, from its packets."""
    import av

    container, stream = open_video(path)
    with container:
        stamps, keys, durations = [], set(), {}
        try:
            for packet in container.demux(stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or pts is None:
                    continue
                stamps.append(pts)
                durations[pts] = packet.duration or 0
                if packet.is_keyframe:
                    keys.add(pts)
        except av.FFmpegError as err:
            raise VideoReadError(f"{path}: the file is damaged after {len(stamps)} frames "
                                 f"({first_line(err)})") from None
        tb = stream.time_base
        stamps.sort()
        frames = [pts for pts in stamps if pts * tb >= options.start - 1e-9]
        if options.duration is not None and frames:
            frames = [pts for pts in frames if (pts - frames[0]) * tb < options.duration - 1e-9]
        frames = frames[:options.max_frames]
        if not frames:
            raise VideoReadError(f"{path}: no frames {'after' if options.start else 'in the file'}"
                                 f"{f' {options.start:g} s' if options.start else ''}")
        following = [pts for pts in stamps if pts > frames[-1]]
        step = durations.get(frames[-1]) or (frames[-1] - frames[-2] if len(frames) > 1 else 1)
        end = following[0] if following else frames[-1] + step
        ctx = stream.codec_context
        return VideoInfo(
            path=str(path), width=ctx.width, height=ctx.height, time_base=tb, rate=stream.average_rate,
            frames=tuple(frames), keyframes=frozenset(keys), offset=frames[0] if options.start else 0, end=end,
            cut=len(frames) < len(stamps),
            colour=tuple((tag, int(getattr(ctx, tag) or 0)) for tag in COLOUR_TAGS),
            other_streams=tuple(f"{s.type} {s.codec_context.name}" for s in container.streams
                                if s.type in ("audio", "subtitle")))


def decode_frames(info: VideoInfo, first: int, end: int) -> Iterator[tuple[int, Image.Image]]:
    """``(pts, RGB image)`` of frames ``first..end-1`` of ``info``, in order; a broken or missing
    frame is a :class:`VideoReadError` naming the time."""
    import av

    wanted = info.frames[first:end]
    container, stream = open_video(info.path)
    with container:
        stream.thread_type = "AUTO"
        if wanted[0] != info.frames[0] or info.offset:
            container.seek(wanted[0], stream=stream, backward=True)
        remaining, done = set(wanted), 0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts > wanted[-1]:
                    break  # frames come out in presentation order: a missing one will not come
                if frame.pts not in remaining:
                    continue
                remaining.discard(frame.pts)
                yield frame.pts, frame.to_image()
                done += 1
                if not remaining:
                    break
        except av.FFmpegError as err:
            at = float(wanted[min(done, len(wanted) - 1)] * info.time_base)
            raise VideoReadError(f"{info.path}: broken frame near {at:.2f} s ({first_line(err)})") from None
        if remaining:
            at = float(min(remaining) * info.time_base)
            raise VideoReadError(f"{info.path}: {len(remaining)} of {len(wanted)} frames from {at:.2f} s could not "
                                 "be decoded (a truncated or damaged file)")
