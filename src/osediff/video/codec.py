"""Encoding upscaled frames into segment files, and muxing the segments with the source's other
streams into the final file.

Every segment is encoded alone with the same settings and without B-frames, so each starts with a
keyframe and its timestamps need no re-timing: the final mux copies the segments' packets one after
another, and the source's audio and subtitle packets as they are (no re-encoding), interleaved by time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from ..errors import OSEDiffError
from ..fileio import atomic_write, first_line
from .options import AUTO, CRF_DEFAULTS, VideoOptionError, VideoOptions
from .probe import VideoInfo

# the encoders tried for ``auto``, best first, per container
_PREFERRED = ("libx264", "libx265", "libsvtav1", "libvpx-vp9", "mpeg4")
AUTO_ENCODERS = {".webm": ("libvpx-vp9", "libsvtav1"), ".avi": ("libx264", "mpeg4")}
NO_B_FRAMES = {"libx264": {"bf": "0"}, "libx265": {"x265-params": "bframes=0"}}


class VideoWriteError(OSEDiffError):
    """The output video cannot be written (encoder, container, disk)."""


def installed_encoder(name: str) -> bool:
    import av

    try:
        return av.codec.Codec(name, "w").type == "video"
    except (av.FFmpegError, ValueError):
        return False


def choose_encoder(options: VideoOptions, suffix: str) -> str:
    """The encoder a video with this output suffix is written with: ``options.codec``, or for
    ``auto`` the first installed of the container's preferred ones (H.264 for mp4/mov/mkv)."""
    if options.codec != AUTO:
        if not installed_encoder(options.codec):
            have = ", ".join(name for name in _PREFERRED if installed_encoder(name))
            raise VideoOptionError(f"{options.codec!r} is not an installed video encoder; installed: {have}",
                                   argument="video.codec")
        return options.codec
    for name in AUTO_ENCODERS.get(suffix, _PREFERRED):
        if installed_encoder(name):
            return name
    raise VideoOptionError(f"no encoder for {suffix} files is installed (tried {', '.join(_PREFERRED)})",
                           argument="video.codec")


def output_size(info: VideoInfo, upscale: float) -> tuple[int, int]:
    from ..params import output_size as sized

    return sized(info.width, info.height, upscale)


def pixel_format(encoder: str, size: tuple[int, int]) -> str:
    """4:2:0 where both sides are even (every player's format), else 4:4:4 to keep the exact size."""
    if encoder == "mpeg4":
        return "yuv420p"
    return "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"


def encode_segment(path: Path, info: VideoInfo, encoder: str, options: VideoOptions, size: tuple[int, int],
                   frames: Iterable[tuple[int, Image.Image]]) -> int:
    """``(pts, image)`` frames -> the segment file ``path`` (its container from the suffix), written
    to a temporary name and moved into place when complete: a segment on disk is always whole.
    Returns the number of frames written."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        import av

        with av.open(str(tmp), "w") as container:
            stream = _add_encoder(container, info, encoder, options, size)
            pix_fmt, colour = stream.pix_fmt, dict(info.colour)
            for pts, image in frames:
                frame = av.VideoFrame.from_image(image.convert("RGB")).reformat(
                    format=pix_fmt, dst_colorspace=_known_space(colour.get("colorspace")),
                    dst_color_range=colour.get("color_range") or None)
                frame.pts, frame.time_base = pts - info.offset, info.time_base
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode())

    try:
        atomic_write(path, write)
    except (OSError, _ffmpeg_error()) as err:
        raise VideoWriteError(f"{info.path}: cannot write {path.suffix} video with {encoder} "
                              f"({first_line(err)})") from None
    return count


def _add_encoder(container, info: VideoInfo, encoder: str, options: VideoOptions, size: tuple[int, int]):
    codec_options = dict(NO_B_FRAMES.get(encoder, {}))
    crf = options.crf if options.crf is not None else CRF_DEFAULTS.get(encoder)
    if options.bitrate is None and crf is not None:
        codec_options["crf"] = str(crf)
        if encoder == "libvpx-vp9":
            codec_options["b"] = "0"  # constant quality
    if encoder == "mpeg4" and (size[0] % 2 or size[1] % 2):
        raise VideoWriteError(f"{info.path}: mpeg4 needs an even output size, got {size[0]}x{size[1]}")
    stream = container.add_stream(encoder, rate=info.rate or 25, options=codec_options)
    stream.width, stream.height = size
    stream.pix_fmt = pixel_format(encoder, size)
    stream.time_base = stream.codec_context.time_base = info.time_base  # the encoder's too: VFR stays exact
    if options.bitrate is not None:
        stream.bit_rate = options.bitrate
    elif crf is None:  # an encoder without constant quality: ~0.2 bits per pixel
        stream.bit_rate = int(size[0] * size[1] * float(info.rate or 25) * 0.2)
    ctx = stream.codec_context
    if encoder == "mpeg4":
        ctx.max_b_frames = 0
    for tag, value in info.colour:
        if value:
            setattr(ctx, tag, value)
    return stream


def _ffmpeg_error() -> type[Exception]:
    import av

    return av.FFmpegError


def _known_space(space: int | None) -> int | None:
    """swscale converts into BT.601, BT.709 and BT.2020 matrices; others (unspecified) get its default."""
    return space if space in (1, 5, 6, 9, 10) else None


def mux(parts: list[Path], info: VideoInfo, destination: Path) -> None:
    """The segments' video and the source's audio and subtitle streams -> ``destination``, written
    to a temporary name first. Kept packets are those from the first frame to the end of the last."""
    import av

    def write(tmp: Path) -> None:
        with ExitStack() as stack:
            source = stack.enter_context(av.open(info.path))
            segments = [stack.enter_context(av.open(str(part))) for part in parts]
            out = stack.enter_context(av.open(str(tmp), "w"))
            video = out.add_stream_from_template(segments[0].streams.video[0])
            video.time_base = info.time_base
            video.metadata.update(source.streams.video[0].metadata)
            copied = {}
            for s in source.streams:
                if s.type in ("audio", "subtitle"):
                    copied[s.index] = out.add_stream_from_template(s)
                    copied[s.index].metadata.update(s.metadata)
            streams = [_packets(segment, segment.streams.video[0], video) for segment in segments]
            if copied:
                streams.append(_source_packets(source, info, copied))
            for _, _, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
                out.mux(packet)

    try:
        atomic_write(destination, write)
    except (av.FFmpegError, OSError) as err:
        raise VideoWriteError(f"{info.path}: cannot write {destination} ({first_line(err)})") from None


def _packets(container, stream, into) -> Iterator[tuple[float, int, object]]:
    for order, packet in enumerate(container.demux(stream)):
        if packet.size == 0:
            continue
        at = packet.dts if packet.dts is not None else packet.pts
        packet.stream = into
        yield float(at * stream.time_base), order, packet


def _source_packets(source, info: VideoInfo, copied: dict) -> Iterator[tuple[float, int, object]]:
    """The audio and subtitle packets between the first frame and the end of the last, shifted by
    the --start cut."""
    start, end = info.offset * info.time_base, info.end * info.time_base
    for order, packet in enumerate(source.demux([s for s in source.streams if s.index in copied])):
        if packet.size == 0 or packet.pts is None:
            continue
        tb = packet.stream.time_base
        at = packet.pts * tb
        if info.cut and not start <= at < end:
            continue
        shift = round(start / tb)
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        into = copied[packet.stream.index]
        packet.stream = into
        yield float((packet.dts if packet.dts is not None else packet.pts) * tb), order, packet

