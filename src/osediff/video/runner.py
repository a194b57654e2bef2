"""One video through the per-image step: frames in same-size batches, in segments that survive an
interruption, then one mux.

    probe (packets only) -> segments of ~5 s -> for each missing segment:
        decode thread -> [bounded queue] -> Upscaler.upscale (the one step) -> [bounded queue] -> encode thread
    -> mux the segments with the source's audio and subtitles -> out/clip.mp4 (atomic)

The work folder ``out/.clip.mp4.parts/`` keeps the plan, the clip's prompt and each finished
segment; the same command run again does only the segments missing (a changed source or changed
options start the video again), and the folder goes once the final file is in place. Memory does
not grow with the clip's length: at most a few batches of frames are in flight.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..fileio import atomic_write
from ..images import LoadedImage
from ..params import UpscaleParams
from ..prompts.offered import ALWAYS_OFFERED
from .codec import choose_encoder, encode_segment, mux, output_size
from .options import VideoOptions
from .probe import VideoInfo, VideoReadError, decode_frames, probe

if TYPE_CHECKING:
    from ..pipeline import Upscaler

QUEUE_BATCHES = 2  # batches waiting on each side of the model: decoding and encoding overlap it


@dataclass
class VideoResult:
    output: Path
    frames: int
    segments: int
    reused: int  # segments an earlier, interrupted run had finished
    prompt: str
    seconds: float
    encoder: str


@dataclass
class VideoJob:
    """One video's plan: what its frames are, how they are cut and where the pieces go."""

    info: VideoInfo
    params: UpscaleParams
    options: VideoOptions
    encoder: str
    size: tuple[int, int]
    segments: list[tuple[int, int]]
    work: Path  # the work folder beside the output
    output: Path
    plan: dict = field(default_factory=dict)  # what the work folder's parts were made for

    def part(self, index: int) -> Path:
        # NUT keeps any time base exactly (MP4's edit lists round a segment's start to milliseconds)
        return self.work / f"{index:05d}.nut"

    def missing(self) -> list[int]:
        return [k for k in range(len(self.segments)) if not self.part(k).is_file()]


def plan_video(source: str | os.PathLike, output: Path, params: UpscaleParams, options: VideoOptions, *,
               max_pixels: int | None = None) -> VideoJob:
    """Probe ``source`` and plan its segments; nothing is written (:func:`prepare_work` does that)."""
    info = probe(source, options)
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise VideoReadError(f"{source}: {info.width}x{info.height} frames are over --max-pixels {max_pixels}")
    encoder = choose_encoder(options, output.suffix.lower())
    size = output_size(info, params.upscale)
    job = VideoJob(info, params, options, encoder, size, info.segments(options.segment_seconds),
                   output.parent / f".{output.name}.parts", output)
    stat = os.stat(source)
    job.plan = {"source": os.path.abspath(source), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "params": repr(params.model_key), "prompt": [params.prompt_extractor, params.prompt],
                "video": options.as_dict(), "encoder": encoder, "size": list(size), "segments": job.segments}
    return job


def prepare_work(job: VideoJob) -> None:
    """Take up the work folder an interrupted run left if its plan is this one, else start it
    afresh; remove what that run's atomic writes left half-written. Runs before any segment is
    done (and on Ray, on the driver before any replica starts)."""
    saved = job.work / "plan.json"
    try:
        same = json.loads(saved.read_text(encoding="utf-8")) == json.loads(json.dumps(job.plan))
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(job.work, ignore_errors=True)
        atomic_write(saved, lambda tmp: tmp.write_text(json.dumps(job.plan, indent=1), encoding="utf-8"))
    for partial in job.work.glob(".*"):
        partial.unlink(missing_ok=True)


def clip_prompt(upscaler: Upscaler, job: VideoJob) -> str | None:
    """The one prompt of the whole clip, made once and kept in the work folder: the tags found in
    most of ``prompt_frames`` evenly spaced frames (None: each frame's own, with ``prompt_every``;
    or no extractor to run)."""
    params = job.params
    if params.prompt_extractor in ALWAYS_OFFERED or job.options.prompt_every is not None:
        return None
    saved = job.work / "prompt.txt"
    if saved.is_file():
        return saved.read_text(encoding="utf-8")
    count = min(job.options.prompt_frames, len(job.info.frames))
    picks = sorted({round(i * (len(job.info.frames) - 1) / max(count - 1, 1)) for i in range(count)})
    frames = [next(decode_frames(job.info, index, index + 1))[1] for index in picks]
    prompt = merge_prompts(upscaler.prompts_for(frames, params))
    atomic_write(saved, lambda tmp: tmp.write_text(prompt, encoding="utf-8"))
    return prompt


def merge_prompts(prompts: list[str]) -> str:
    """The comma-separated tags of more than half of ``prompts``, in the order they first appear."""
    tags = [[tag.strip() for tag in prompt.split(",") if tag.strip()] for prompt in prompts]
    counts = Counter(tag for each in tags for tag in dict.fromkeys(each))
    ordered = dict.fromkeys(tag for each in tags for tag in each)
    return ", ".join(tag for tag in ordered if counts[tag] * 2 > len(prompts))


def upscale_segment(upscaler: Upscaler, job: VideoJob, index: int, prompt: str | None, batch_size: int) -> int:
    """Segment ``index`` through the step into its part file (atomic); the frames written."""
    first, end = job.segments[index]
    params = job.params if prompt is None else job.params.replace(prompt=prompt, prompt_extractor="text")
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(QUEUE_BATCHES)
    upscaled: queue.Queue = queue.Queue(QUEUE_BATCHES * batch_size)
    reader = threading.Thread(target=_fill, args=(decoded, _batches(decode_frames(job.info, first, end), batch_size),
                                                  stop), daemon=True)
    written: list[int] = []
    failures: list[BaseException] = []

    def encode() -> None:
        try:
            written.append(encode_segment(job.part(index), job.info, job.encoder, job.options, job.size,
                                          _drain(upscaled, stop)))
        except BaseException as err:  # handed to the caller below
            failures.append(err)
            stop.set()

    writer = threading.Thread(target=encode, daemon=True)
    reader.start()
    writer.start()
    every = job.options.prompt_every if params.prompt_extractor not in ALWAYS_OFFERED else None
    run_prompt = ""
    try:
        position = 0  # within the segment: a run of ``prompt_every`` frames starts at each segment
        for batch in _drain(decoded, stop):
            requests = []
            for _, image in batch:
                frame_params = params
                if every is not None:
                    if position % every == 0:
                        run_prompt = upscaler.prompts_for([image], params)[0]
                    frame_params = params.replace(prompt=run_prompt, prompt_extractor="text")
                requests.append((LoadedImage(image, None), frame_params))
                position += 1
            results = upscaler.upscale(requests, max_batch=batch_size)
            if not all(_put(upscaled, (pts, result.image), stop) for (pts, _), result in zip(batch, results,
                                                                                            strict=True)):
                break  # the encoder failed: its error is raised below
        else:
            _put(upscaled, _END, stop)
    except BaseException as err:
        stop.set()
        writer.join()
        if failures and isinstance(err, InterruptedError):  # stopped by the encoder's failure: that one
            raise failures[0] from None
        raise
    finally:
        writer.join()
        reader.join(timeout=5)
    if failures:
        raise failures[0]
    return written[0]


def upscale_video(upscaler: Upscaler, job: VideoJob, batch_size: int,
                  report: Callable[[str], None] = lambda line: None) -> VideoResult:
    """Every missing segment of ``job``, then the mux; progress (frames/s, ETA) through ``report``."""
    started = time.perf_counter()
    prepare_work(job)
    todo, total = job.missing(), len(job.info.frames)
    reused = len(job.segments) - len(todo)
    prompt = clip_prompt(upscaler, job)
    done_frames = sum(b - a for k, (a, b) in enumerate(job.segments) if k not in todo)
    new_frames = 0
    for index in todo:
        new_frames += upscale_segment(upscaler, job, index, prompt, batch_size)
        rate = new_frames / (time.perf_counter() - started)
        left = total - done_frames - new_frames
        report(f"{job.info.path}: segment {index + 1}/{len(job.segments)}, {done_frames + new_frames}/{total} "
               f"frames, {rate:.2f} frames/s, ETA {_clock(left / rate if rate else 0)}")
    finish_video(job)
    used = prompt if prompt is not None else job.params.prompt
    return VideoResult(job.output, total, len(job.segments), reused, used, time.perf_counter() - started,
                       job.encoder)


def finish_video(job: VideoJob) -> None:
    """Mux the segments into the output, then remove the work folder."""
    mux([job.part(k) for k in range(len(job.segments))], job.info, job.output)
    shutil.rmtree(job.work, ignore_errors=True)


_END = object()


def _batches(frames: Iterable[tuple[int, Image.Image]], size: int) -> Iterator[list[tuple[int, Image.Image]]]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _fill(into: queue.Queue, items: Iterable[Any], stop: threading.Event) -> None:
    """Producer thread: ``items`` then the end mark; an exception travels in their place."""
    try:
        for item in items:
            if not _put(into, item, stop):
                return
        _put(into, _END, stop)
    except BaseException as err:
        _put(into, err, stop)


def _put(into: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            into.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(source: queue.Queue, stop: threading.Event) -> Iterator[Any]:
    while True:
        try:
            item = source.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                raise InterruptedError("stopped") from None
            continue
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
