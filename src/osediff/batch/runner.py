"""The batch loop: inputs -> prompts -> same-size groups through the model -> atomic writes -> a summary.

A bad input fails only its own record; the loop goes on. The prompt extractor looks at a chunk
of decoded images at once (``prompt_batch_size``); images of one size within a chunk go through
the model ``batch_size`` at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import OSEDiffError
from ..images import ImageLoadError, LoadedImage, collect_inputs, load_image
from .config import BatchConfig, BatchConfigError, output_clashes, output_name, validate
from .storage import Folder

WRITTEN, FAILED, SKIPPED = "written", "failed", "skipped"


class MissingPromptError(OSEDiffError):
    """``prompts_from`` has no saved prompt for an image."""


@dataclass
class ImageRecord:
    """What happened to one input; ``seconds`` is its share of its group's model time."""

    input: str
    output: str
    status: str
    error: str = ""
    prompt: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


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


def run(config: BatchConfig, *, pipe=None, on_start: Callable[[int], None] | None = None,
        on_record: RecordHook | None = None) -> BatchSummary:
    """Upscale every input of ``config``; ``pipe`` (already loaded) skips resolving and loading.

    Raises :class:`~osediff.errors.OSEDiffError` for what stops the whole job (a bad option, no
    inputs, a missing model file); a bad image only gets a failed record. ``on_start`` gets the
    number of inputs, ``on_record`` each record as it is made (progress, messages).
    """
    from .models import load_pipeline, resolve_models

    started = time.perf_counter()
    validate(config)
    inputs = collect_inputs(config.inputs)
    clashes = output_clashes(inputs, config.format)  # over all inputs: ranks must agree
    files = inputs[config.rank::config.world]
    if not files:
        raise BatchConfigError("no input images found")
    out = Folder(config.output)
    summary = BatchSummary(str(config.output), on_record=on_record)
    record = summary.add

    done = [src for src in files if config.skip_existing and out.exists(output_name(src, config.format))]
    skip = set(done)
    todo = [src for src in files if src not in skip]
    user_prompt = config.user_prompt
    if todo and pipe is None:
        resolved = resolve_models(config)
        user_prompt = resolved.user_prompt
        pipe = load_pipeline(config, resolved)
    if on_start is not None:
        on_start(len(files))
    for src in done:
        record(ImageRecord(str(src), out.path(output_name(src, config.format)), SKIPPED))
    chunk_size = max(config.prompt_batch_size if pipe is not None and pipe.prompt_extractor else 1,
                     config.batch_size)
    for first in range(0, len(todo), chunk_size):
        loaded = []
        for src in todo[first:first + chunk_size]:
            dst = out.path(output_name(src, config.format))
            if src in clashes:
                record(ImageRecord(str(src), dst, FAILED, f"{src}: its output {dst} is already that of "
                                   f"{clashes[src]}; rename one of them or run it separately"))
                continue
            try:
                loaded.append((str(src), load_image(src, max_pixels=config.max_pixels)))
            except ImageLoadError as err:
                record(ImageRecord(str(src), dst, FAILED, str(err)))
        last = first + chunk_size >= len(todo)
        for rec in upscale_loaded(pipe, config, loaded, out, user_prompt, free_prompt_models=last):
            record(rec)
    summary.seconds = time.perf_counter() - started
    return summary


def upscale_loaded(pipe, config: BatchConfig, loaded: Sequence[tuple[str, LoadedImage]], out: Folder,
                   user_prompt: str, *, free_prompt_models: bool = False) -> Iterator[ImageRecord]:
    """Prompts for decoded images, then the model on same-size groups, then the writes; one record
    each, yielded group by group (so progress moves while a chunk runs).

    ``free_prompt_models``: no prompts are needed after these, so the extractor and text encoder go.
    """
    prompts = {}
    for key, prompt in _prompts(pipe, config, loaded, user_prompt).items():
        if isinstance(prompt, Exception):
            yield ImageRecord(key, out.path(output_name(key, config.format)), FAILED, f"{key}: {_first_line(prompt)}")
        else:
            prompts[key] = prompt
    if pipe.prompt_extractor is not None and free_prompt_models:
        pipe.keep_only_prompts(prompts.values())
    ready = [(key, image) for key, image in loaded if key in prompts]
    for group in _same_size_groups(ready, config.batch_size):
        yield from _upscale_group(pipe, config, group, prompts, out)


def _prompts(pipe, config: BatchConfig, loaded, user_prompt: str) -> dict[str, str | Exception]:
    """Saved prompts (read per image, so one missing file fails only its image), else one batched
    extractor call for the chunk, else the user's text."""
    from ..pipeline import bicubic_upscale

    if config.prompts_from is not None:
        return {key: _saved_prompt(Path(config.prompts_from), key) for key, _ in loaded}
    if pipe.prompt_extractor is None or not loaded:
        return {key: user_prompt for key, _ in loaded}
    upscaled = [bicubic_upscale(image.rgb, config.upscale) for _, image in loaded]
    try:
        extracted = pipe.prompt_extractor(upscaled, user_prompt)
    except (OSEDiffError, OSError) as err:
        return {key: err for key, _ in loaded}
    return dict(zip([key for key, _ in loaded], extracted, strict=True))


def _saved_prompt(folder: Path, src: str) -> str | Exception:
    path = folder / f"{Path(src).stem}.txt"
    if not path.is_file():
        return MissingPromptError(f"no saved prompt {path}")
    return path.read_text(encoding="utf-8").rstrip("\n")


def _same_size_groups(items: list[tuple[str, LoadedImage]], batch_size: int) -> list[list]:
    """Items grouped by image size (in order of first appearance), each group cut to ``batch_size``."""
    by_size: dict[tuple[int, int], list] = {}
    for item in items:
        by_size.setdefault(item[1].rgb.size, []).append(item)
    return [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def _upscale_group(pipe, config: BatchConfig, group, prompts: dict[str, str], out: Folder) -> list[ImageRecord]:
    import torch

    started = time.perf_counter()
    names = [output_name(key, config.format) for key, _ in group]
    try:
        results = pipe.run_batch([image.rgb for _, image in group], config.upscale,
                                 [prompts[key] for key, _ in group], extract_prompt=False, align=config.align,
                                 tiles=config.tiles, latent=config.latent, seed=config.seed,
                                 alphas=[image.alpha for _, image in group])
    except (OSEDiffError, torch.cuda.OutOfMemoryError) as err:
        return [ImageRecord(key, out.path(name), FAILED, f"{key}: {_first_line(err)}")
                for (key, _), name in zip(group, names, strict=True)]
    seconds = (time.perf_counter() - started) / len(group)
    records = []
    for (key, _), name, result in zip(group, names, results, strict=True):
        write_started = time.perf_counter()
        try:
            dst = out.write_image(name, result.image, config.quality)
            if config.save_prompts:
                out.write_text(str(Path(name).with_suffix(".txt")), result.prompt + "\n")
        except OSError as err:
            records.append(ImageRecord(key, out.path(name), FAILED, f"{key}: cannot write {name} ({err})",
                                       result.prompt))
            continue
        records.append(ImageRecord(key, dst, WRITTEN, "", result.prompt,
                                   seconds + time.perf_counter() - write_started))
    return records


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
