"""The batch loop: inputs -> chunks of decoded images -> the per-image step -> atomic writes -> a summary.

A bad input fails only its own record; the loop goes on. A chunk (``model.prompt_batch_size``
images when an extractor runs, else ``batch_size``) goes through
:meth:`osediff.pipeline.Upscaler.as_ready`, which prompts it in one extractor call and runs
same-size images ``batch_size`` at a time; each result is written as soon as its call finishes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint.hub import ModelNotFoundError, Option
from ..errors import OSEDiffError
from ..fileio import first_line
from ..images import ImageLoadError, LoadedImage, collect_inputs, is_video, load_image
from ..model_files import ModelFiles, find_model_files
from ..outputs import OutputPlan, output_name, plan_outputs
from ..params import UpscaleParams
from .config import TEXT_EXTRACTORS, BatchConfig, BatchConfigError, validate
from .storage import Folder

if TYPE_CHECKING:
    from ..pipeline import OSEDiffPipeline, SRResult, Upscaler

WRITTEN, FAILED, SKIPPED = "written", "failed", "skipped"


class MissingPromptError(OSEDiffError):
    """``prompts_from`` has no saved prompt for an image."""


@dataclass
class ImageRecord:
    """What happened to one input; ``seconds`` is its share of its model call, and its write."""

    input: str
    output: str
    status: str
    error: str = ""
    prompt: str = ""
    seconds: float = 0.0
    frames: int | None = None  # videos: frames written, and the segments they were done in
    segments: int | None = None

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


RecordHook = Callable[[ImageRecord], None]


@dataclass
class BatchSummary:
    output: str
    records: list[ImageRecord] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole run, model loading included
    on_record: RecordHook | None = field(default=None, repr=False, compare=False)  # progress, messages

    def add(self, record: ImageRecord) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def count(self, status: str) -> int:
        return sum(record.status == status for record in self.records)

    @property
    def written(self) -> int:
        return self.count(WRITTEN)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def skipped(self) -> int:
        return self.count(SKIPPED)

    @property
    def image_seconds(self) -> float:
        return sum(record.seconds for record in self.records if record.status == WRITTEN)


def run(config: BatchConfig, *, upscaler: Upscaler | OSEDiffPipeline | None = None,
        on_start: Callable[[int], None] | None = None, on_record: RecordHook | None = None) -> BatchSummary:
    """Upscale every input of ``config``; an ``upscaler`` (or pipeline) already loaded is used as it
    is and never changed, else the models are found and loaded here.

    Raises :class:`~osediff.errors.OSEDiffError` for what stops the whole job (a bad option, no
    inputs, a missing model file); a bad image only gets a failed record. ``on_start`` gets the
    number of inputs, ``on_record`` each record as it is made (progress, messages).
    """
    started = time.perf_counter()
    if upscaler is not None and not hasattr(upscaler, "as_ready"):
        from ..pipeline import Upscaler

        upscaler = Upscaler(upscaler)
    validate(config, offered=upscaler.extractors.names if upscaler is not None else None)
    inputs = collect_inputs(config.inputs)
    out = Folder(config.output)
    plan = plan_outputs(inputs, config.params.format, exists=out.exists, skip_existing=config.skip_existing,
                        share=slice(config.rank, None, config.world))
    if not (plan.todo or plan.skipped or plan.clashes):
        raise BatchConfigError("no input images found")
    summary = BatchSummary(str(config.output), on_record=on_record)
    note_removed(remove_stale_temporaries(config, out, plan.todo, time.time()))
    params, owned = config.params, upscaler is None
    videos = plan_videos(config, [src for src in plan.todo if is_video(src)], out, summary.add)
    if plan.todo and upscaler is None:
        files, params = find_batch_files(config)
        upscaler = load_batch_upscaler(config, files, params)
    if on_start is not None:
        on_start(len(plan.todo) + len(plan.skipped) + len(plan.clashes))
    for src in plan.skipped:
        summary.add(ImageRecord(str(src), out.path(output_name(src, params.format)), SKIPPED))
    pending = [src for src in inputs[config.rank::config.world] if src not in set(plan.skipped) and not is_video(src)]
    chunk = chunk_size(config, params)
    for first in range(0, len(pending), chunk):
        loaded = list(_load(config, pending[first:first + chunk], plan, out, summary.add))
        last = first + chunk >= len(pending) and not videos
        for record in upscale_chunk(upscaler, config, params, loaded, out, release_prompt_models=owned and last):
            summary.add(record)
    for src, job in videos.items():
        summary.add(upscale_one_video(upscaler, config, src, job))
    summary.seconds = time.perf_counter() - started
    return summary


def plan_videos(config: BatchConfig, videos: Sequence, out: Folder, record: RecordHook) -> dict:
    """Each video's plan (probed, its work folder set up) before any model loads; a video that
    cannot be read gets its failed record here. An unusable encoder stops the job."""
    from ..video.probe import VideoReadError
    from ..video.runner import plan_video

    jobs = {}
    for src in videos:
        dst = out.path(output_name(src, config.params.format))
        try:
            jobs[src] = plan_video(src, Path(dst), config.params, config.video, max_pixels=config.max_pixels)
        except (VideoReadError, OSError) as err:
            record(ImageRecord(str(src), dst, FAILED, first_line(err) if isinstance(err, OSError) else str(err)))
    return jobs


def upscale_one_video(upscaler: Upscaler, config: BatchConfig, src, job) -> ImageRecord:
    """One planned video through the step; a read, write or model failure fails this video only."""
    import torch

    from ..video.runner import upscale_video

    try:
        result = upscale_video(upscaler, job, config.batch_size, report=lambda line: print(line, file=sys.stderr))
    except (OSEDiffError, OSError, torch.cuda.OutOfMemoryError) as err:
        said = first_line(err)
        return ImageRecord(str(src), str(job.output), FAILED, said if said.startswith(str(src)) else f"{src}: {said}")
    note = f" (resumed: {result.reused} of {result.segments} segments were done)" if result.reused else ""
    print(f"{src}: {result.frames} frames in {result.segments} segments with {result.encoder}{note}", file=sys.stderr)
    return ImageRecord(str(src), str(result.output), WRITTEN, "", result.prompt, result.seconds,
                       frames=result.frames, segments=result.segments)


def find_batch_files(config: BatchConfig) -> tuple[ModelFiles, UpscaleParams]:
    """The job's model files, and its parameters with ``prompt_fallback`` applied when the
    extractor's files are missing (a warning says so; without a fallback, a miss is an error)."""
    params = config.params
    extractor = [params.prompt_extractor] if config.needs_extractor else []
    optional = extractor if config.prompt_fallback else []
    try:
        files = find_model_files(config.model, [] if optional else extractor, optional=optional)
    except ModelNotFoundError as err:
        if extractor and not optional:
            err.instead = (Option("prompt_fallback", "text"), f"the {params.prompt_extractor} files")
        raise
    if params.prompt_extractor in files.unavailable:
        print(f"warning: prompt extractor {params.prompt_extractor!r} unavailable "
              f"({files.unavailable[params.prompt_extractor]}); using {config.prompt_fallback!r}", file=sys.stderr)
        params = params.replace(prompt_extractor=config.prompt_fallback)
    return files, params


def load_batch_upscaler(config: BatchConfig, files: ModelFiles, params: UpscaleParams) -> Upscaler:
    """The job's models; with a fixed prompt (text or none, no saved prompts) the text encoder goes
    once it (and the negative prompt, with guidance) is encoded, and under torchrun each process
    takes its own GPU."""
    import torch

    from ..device import pick_device
    from ..loading import load_upscaler

    device = pick_device(config.model.device)
    if config.world > 1 and device.type == "cuda":  # one GPU per process under accelerate/torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", config.rank)) % torch.cuda.device_count())
    fixed = params.prompt_extractor in TEXT_EXTRACTORS and config.prompts_from is None
    prompts = [params.prompt if params.prompt_extractor == "text" else ""]
    if params.guidance != 1:
        prompts.append(params.negative_prompt)
    return load_upscaler(config.model, files, device=device, fixed_prompts=prompts if fixed else None)


def remove_stale_temporaries(config: BatchConfig, out: Folder, inputs: Sequence, before: float) -> list[str]:
    """Delete the hidden temporaries a killed run's atomic writes of these inputs' outputs (and saved
    prompts) left, if older than ``before``; their paths. Nothing else is touched."""
    names = [output_name(src, config.params.format) for src in inputs]
    if config.save_prompts:
        names += [str(Path(name).with_suffix(".txt")) for name in names]
    return [out.path(name) for name in out.remove_stale_temporaries(names, before)]


def note_removed(paths: Sequence[str]) -> None:
    if paths:
        print(f"note: removed {len(paths)} partial file(s) an interrupted run left: {', '.join(paths)}",
              file=sys.stderr)


def chunk_size(config: BatchConfig, params: UpscaleParams) -> int:
    """Images read and prompted together: the extractor's batch when one runs, else ``batch_size``."""
    extracting = params.prompt_extractor not in TEXT_EXTRACTORS and config.prompts_from is None
    return max(config.model.prompt_batch_size if extracting else 1, config.batch_size)


def _load(config: BatchConfig, sources: Sequence, plan: OutputPlan, out: Folder,
          record: RecordHook) -> Iterator[tuple[str, LoadedImage]]:
    """Decoded images of ``sources``; a failed record for each clash or unreadable file."""
    for src in sources:
        dst = out.path(output_name(src, config.params.format))
        if src in plan.clashes:
            record(ImageRecord(str(src), dst, FAILED, f"{src}: its output {dst} is already that of "
                               f"{plan.clashes[src]}; rename one of them or run it separately"))
            continue
        try:
            yield str(src), load_image(src, max_pixels=config.max_pixels)
        except ImageLoadError as err:
            record(ImageRecord(str(src), dst, FAILED, str(err)))


def upscale_chunk(upscaler: Upscaler, config: BatchConfig, params: UpscaleParams,
                  loaded: Sequence[tuple[str, LoadedImage]], out: Folder, *,
                  release_prompt_models: bool = False) -> Iterator[ImageRecord]:
    """Decoded images through the step, then the writes; one record each, yielded as each model
    call finishes (so progress moves while a chunk runs)."""
    import torch

    requests, keys = [], []
    for key, image in loaded:
        image_params = params
        if config.prompts_from is not None:  # read per image, so one missing file fails only its image
            saved = _saved_prompt(Path(config.prompts_from), key)
            if isinstance(saved, Exception):
                yield ImageRecord(key, out.path(output_name(key, params.format)), FAILED, f"{key}: {saved}")
                continue
            image_params = params.replace(prompt=saved, prompt_extractor="text")
        requests.append((image, image_params))
        keys.append(key)
    for index, result in upscaler.as_ready(requests, max_batch=config.batch_size,
                                           release_prompt_models=release_prompt_models):
        key, name = keys[index], output_name(keys[index], params.format)
        if isinstance(result, Exception):
            if not isinstance(result, OSEDiffError | OSError | torch.cuda.OutOfMemoryError):
                raise result  # a bug: its traceback, not a failed record per image
            yield ImageRecord(key, out.path(name), FAILED, f"{key}: {first_line(result)}")
        else:
            yield _write(config, result, key, name, out)


def _write(config: BatchConfig, result: SRResult, key: str, name: str, out: Folder) -> ImageRecord:
    started = time.perf_counter()
    try:
        dst = out.write_image(name, result.image, config.params.quality)
        if config.save_prompts:
            out.write_text(str(Path(name).with_suffix(".txt")), result.prompt + "\n")
    except OSError as err:
        return ImageRecord(key, out.path(name), FAILED, f"{key}: cannot write {name} ({err})", result.prompt)
    model_seconds = sum(v for k, v in result.timings.items() if k != "extract") / result.batch_size
    return ImageRecord(key, dst, WRITTEN, "", result.prompt, model_seconds + time.perf_counter() - started)


def _saved_prompt(folder: Path, src: str) -> str | Exception:
    path = folder / f"{Path(src).stem}.txt"
    if not path.is_file():
        return MissingPromptError(f"no saved prompt {path}")
    return path.read_text(encoding="utf-8").rstrip("\n")
