"""One batch job described by one object, and every check that can run before a model loads."""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..images import DEFAULT_MAX_PIXELS
from ..model_files import ModelOptions
from ..params import UpscaleParams
from ..prompts import known_prompt_extractor
from ..video.options import VideoOptions

# extractors that need no model file: the user's text or nothing
TEXT_EXTRACTORS = ("none", "text")
GLOB_CHARS = "*?["


class BatchConfigError(OptionError):
    """An option or input of a batch job that cannot work; ``argument`` names the option."""


@dataclass
class BatchConfig:
    """Everything one ``osediff upscale`` run needs; see :func:`validate` for the allowed values.

    ``inputs`` are files, folders (non-recursive) and glob patterns; outputs are named
    ``<stem>.<params.format>`` in ``output``. ``params`` are every image's (with ``prompts_from``,
    each image's saved prompt replaces the extractor). ``rank``/``world`` take every ``world``-th
    input from ``rank`` on, as processes under ``accelerate launch`` do. Images go through the
    model ``batch_size`` of one size at a time, read ``model.prompt_batch_size`` at a time.
    ``video``: how video inputs are cut, prompted and encoded (:mod:`osediff.video`).
    ``storage_options`` (the Ray engine's URIs): options of the object stores its ``s3://``/``gs://``
    inputs and output live in (``endpoint_override``, ``region``, ``anonymous``, credentials...; see
    :mod:`osediff.batch.storage`); they travel with the config to every node.
    """

    inputs: list[str]
    output: Path | str
    params: UpscaleParams = field(default_factory=UpscaleParams)
    model: ModelOptions = field(default_factory=ModelOptions)
    prompt_fallback: str | None = None
    prompts_from: Path | None = None
    save_prompts: bool = False
    skip_existing: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    batch_size: int = 1
    rank: int = 0
    world: int = 1
    storage_options: dict[str, Any] = field(default_factory=dict)
    video: VideoOptions = field(default_factory=VideoOptions)

    @property
    def needs_extractor(self) -> bool:
        """An extractor looks at the images (not for fixed text, nor with saved prompts)."""
        return self.params.prompt_extractor not in TEXT_EXTRACTORS and self.prompts_from is None


def is_uri(spec: str | os.PathLike) -> bool:
    return "://" in str(spec)


def validate(config: BatchConfig, *, remote_ok: bool = False, offered: Sequence[str] | None = None) -> None:
    """Check every option and input that can be checked without a model; raise :class:`BatchConfigError`.

    A local output folder is checked without being made (:func:`check_writable_folder`): the first
    output written creates it, so a run that fails before then leaves nothing behind. ``remote_ok``
    accepts URIs (``s3://``...) for inputs and output and leaves the device to each replica: the
    Ray engine's case. ``offered``: the prompt extractors of models already loaded (else the
    registered ones are the choice).
    """
    _check_options(config, offered)
    if not remote_ok:  # on a cluster each replica picks its own device
        _check_device(config.model)
    if isinstance(config.inputs, str | os.PathLike) or not config.inputs:
        raise BatchConfigError("must be a non-empty list of files, folders or glob patterns", argument="inputs")
    for spec in config.inputs:
        spec = str(spec)
        if is_uri(spec):
            if not remote_ok:
                raise BatchConfigError(f"{spec}: URIs are read by the Ray engine only ({{argument}} ray); "
                                       "give a local path", argument="engine")
        elif not any(ch in spec for ch in GLOB_CHARS) and not os.path.lexists(Path(spec).expanduser()):
            raise BatchConfigError(f"{spec}: no such file or folder")
    if config.prompts_from is not None and not Path(config.prompts_from).is_dir():
        raise BatchConfigError(f"{config.prompts_from}: no such folder", argument="prompts_from")
    if is_uri(config.output) and not remote_ok:
        raise BatchConfigError(f"{config.output}: URIs are written by the Ray engine only ({{argument}} ray)",
                               argument="engine")
    if config.storage_options:
        from .storage import check_storage_options

        if not remote_ok:
            raise BatchConfigError("is for the s3:// and gs:// URIs that only the Ray engine reads",
                                   argument="storage_options")
        check_storage_options(config.storage_options, [*map(str, config.inputs), str(config.output)])
    if not is_uri(config.output) or str(config.output).startswith("file://"):
        check_writable_folder(Path(urllib.parse.unquote(urllib.parse.urlparse(str(config.output)).path)))


def check_writable_folder(folder: Path) -> None:
    """Refuse an output folder that could not be made or written, without making it: its nearest
    existing folder (itself, or the parent its creation would start from) must take a new file."""
    folder = Path(folder).expanduser()
    nearest = folder
    while not os.path.lexists(nearest) and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        where = "" if nearest == folder else f"{nearest} "
        raise BatchConfigError(f"{folder}: {where}exists and is not a folder", argument="output")
    try:
        with tempfile.TemporaryFile(dir=nearest):  # a real write (read-only mounts, ACLs), gone when closed
            pass
    except OSError as err:
        where = "" if nearest == folder else f"{nearest}: "
        raise BatchConfigError(f"{folder}: cannot write there ({where}{err.strerror or err})",
                               argument="output") from None


def _check_options(config: BatchConfig, offered: Sequence[str] | None) -> None:
    if not isinstance(config.params, UpscaleParams):
        raise BatchConfigError(f"must be an UpscaleParams, got {config.params!r}", argument="params")
    if not isinstance(config.video, VideoOptions):
        raise BatchConfigError(f"must be a VideoOptions, got {config.video!r}", argument="video")
    name = config.params.prompt_extractor
    if offered is None:
        known_prompt_extractor(name)
    elif name not in offered:
        raise BatchConfigError(f"{name!r} is not offered by the models given; choose one of {', '.join(offered)}",
                               argument="prompt_extractor")
    checks = [
        (config.prompt_fallback in (None, *TEXT_EXTRACTORS), "prompt_fallback",
         f"must be none or text, got {config.prompt_fallback!r}"),
        (config.max_pixels is None or config.max_pixels > 0, "max_pixels", f"must be > 0, got {config.max_pixels!r}"),
        (config.batch_size >= 1, "batch_size", f"must be >= 1, got {config.batch_size}"),
        (0 <= config.rank < config.world, "rank", f"{config.rank} is outside 0..{config.world - 1}"),
    ]
    for ok, argument, problem in checks:
        if not ok:
            raise BatchConfigError(problem, argument=argument)


def _check_device(model: ModelOptions) -> None:
    from ..device import pick_decoder_dtype, pick_device, pick_dtype

    device = pick_device(model.device)
    pick_decoder_dtype(model.decoder_dtype, device, pick_dtype(model.dtype, device))
