"""One batch job described by one object, and every check that can run before a model loads."""

from __future__ import annotations

import math
import os
import tempfile
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import OSEDiffError
from ..images import DEFAULT_MAX_PIXELS

if typing.TYPE_CHECKING:
    from ..pipeline import TileConfig

OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
# extractors that need no model file: the user's text or nothing
TEXT_EXTRACTORS = ("none", "text")
GLOB_CHARS = "*?["


class BatchConfigError(OSEDiffError, ValueError):
    """An option or input of a batch job that cannot work; the message names it."""


@dataclass
class ModelOptions:
    """Which model to load and how; ``None``/``"auto"`` pick the defaults of the pipeline."""

    base: str | None = None
    weights: str | None = None  # None: the preset's published weights
    preset: str = "osediff"
    device: str = "auto"
    dtype: str = "auto"
    offline: bool = False
    merge_lora: bool = True
    decoder_dtype: str = "auto"
    preview_decoder: str | None = None
    compile_unet: bool = False


def _default_tiles() -> TileConfig:
    from ..pipeline import TileConfig  # torch: only when a config is built without tiles

    return TileConfig()


@dataclass
class BatchConfig:
    """Everything one ``osediff upscale`` run needs; see :func:`validate` for the allowed values.

    ``inputs`` are files, folders (non-recursive) and glob patterns; outputs are named
    ``<stem>.<format>`` in ``output``. ``rank``/``world`` take every ``world``-th input from
    ``rank`` on, as processes under ``accelerate launch`` do. ``batch_size`` images of one size go
    through the model together (1: one at a time).
    """

    inputs: list[str]
    output: Path
    upscale: float = 4.0
    prompt: str = ""
    prompt_extractor: str = "dape"
    prompt_fallback: str | None = None
    dape: str | None = None
    ram: str | None = None
    ram_tags: str | None = None
    captioner: str | None = None
    prompt_batch_size: int = 8
    prompts_from: Path | None = None
    save_prompts: bool = False
    align: str = "adain"
    latent: str = "mode"
    seed: int | None = None
    tiles: TileConfig = field(default_factory=_default_tiles)
    format: str = "png"
    quality: int = 95
    skip_existing: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    batch_size: int = 1
    rank: int = 0
    world: int = 1
    model: ModelOptions = field(default_factory=ModelOptions)

    @property
    def user_prompt(self) -> str:
        return "" if self.prompt_extractor == "none" else self.prompt

    @property
    def needs_extractor(self) -> bool:
        """An image-to-text model runs (not for fixed text, nor with saved prompts)."""
        return self.prompt_extractor not in TEXT_EXTRACTORS and self.prompts_from is None


def output_name(src: str | os.PathLike, fmt: str) -> str:
    """The output file name of input ``src`` (a path or URI): its stem and the format's suffix."""
    src = PurePosixPath(str(src).replace(os.sep, "/"))
    suffix = src.suffix.lower() if fmt == "same" else OUTPUT_FORMATS[fmt]
    if fmt == "same" and suffix in (".gif", ".bmp", ".jpeg"):
        suffix = {".gif": ".png", ".bmp": ".png", ".jpeg": ".jpg"}[suffix]
    return f"{src.stem}{suffix}"


def output_path(src: Path, outdir: Path, fmt: str) -> Path:
    return Path(outdir) / output_name(src, fmt)


def output_clashes(files: list, fmt: str) -> dict:
    """Inputs whose output name an earlier input already claims (a.png and a.jpg, or one name in
    two folders), mapped to that earlier input: writing them would replace its result."""
    owner: dict[str, typing.Any] = {}
    clashes = {}
    for src in files:
        name = output_name(src, fmt)
        if name in owner:
            clashes[src] = owner[name]
        else:
            owner[name] = src
    return clashes


def is_uri(spec: str | os.PathLike) -> bool:
    return "://" in str(spec)


def validate(config: BatchConfig, *, remote_ok: bool = False) -> None:
    """Check every option and input that can be checked without a model; raise :class:`BatchConfigError`.

    Creates the output folder (it is needed anyway) to prove it can be written. ``remote_ok``
    accepts URIs (``s3://``...) for inputs and output and leaves the device to each replica: the
    Ray engine's case.
    """
    _check_options(config)
    _check_tiles(config.tiles)
    if not remote_ok:  # on a cluster each replica picks its own device
        _check_model(config.model)
    if isinstance(config.inputs, str | os.PathLike) or not config.inputs:
        raise BatchConfigError("inputs: give a non-empty list of files, folders or glob patterns")
    for spec in config.inputs:
        spec = str(spec)
        if is_uri(spec):
            if not remote_ok:
                raise BatchConfigError(f"{spec}: URIs are read by --engine ray only; give a local path")
        elif not any(ch in spec for ch in GLOB_CHARS) and not os.path.lexists(Path(spec).expanduser()):
            raise BatchConfigError(f"{spec}: no such file or folder")
    if config.prompts_from is not None and not Path(config.prompts_from).is_dir():
        raise BatchConfigError(f"--prompts-from {config.prompts_from}: no such folder")
    if is_uri(config.output) and not remote_ok:
        raise BatchConfigError(f"output {config.output}: URIs are written by --engine ray only")
    if not is_uri(config.output) or str(config.output).startswith("file://"):
        check_writable_folder(Path(urllib.parse.unquote(urllib.parse.urlparse(str(config.output)).path)))


def check_writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise BatchConfigError(f"output {folder}: exists and is not a folder") from None
    except OSError as err:
        raise BatchConfigError(f"output {folder}: cannot write there ({err.strerror or err})") from None


def _check_options(config: BatchConfig) -> None:
    from ..color import ALIGN_METHODS
    from ..pipeline import LatentMode
    from ..prompts import available_prompt_extractors

    checks = [
        (isinstance(config.upscale, int | float) and math.isfinite(config.upscale) and config.upscale >= 1,
         f"upscale factor must be a number >= 1, got {config.upscale!r}"),
        (config.align in ALIGN_METHODS, f"align must be one of {', '.join(ALIGN_METHODS)}, got {config.align!r}"),
        (config.latent in typing.get_args(LatentMode),
         f"latent must be one of {', '.join(typing.get_args(LatentMode))}, got {config.latent!r}"),
        (config.prompt_extractor in available_prompt_extractors(),
         f"prompt extractor {config.prompt_extractor!r} is unknown; choose "
         f"{', '.join(available_prompt_extractors())}"),
        (config.prompt_fallback in (None, *TEXT_EXTRACTORS),
         f"prompt fallback must be none or text, got {config.prompt_fallback!r}"),
        (config.format in (*OUTPUT_FORMATS, "same"),
         f"format must be one of {', '.join((*OUTPUT_FORMATS, 'same'))}, got {config.format!r}"),
        (isinstance(config.quality, int) and 1 <= config.quality <= 100,
         f"quality must be 1-100, got {config.quality!r}"),
        (config.max_pixels is None or config.max_pixels > 0, f"max pixels must be > 0, got {config.max_pixels!r}"),
        (config.prompt_batch_size >= 1, f"prompt batch size must be >= 1, got {config.prompt_batch_size}"),
        (config.batch_size >= 1, f"batch size must be >= 1, got {config.batch_size}"),
        (0 <= config.rank < config.world, f"rank {config.rank} is outside 0..{config.world - 1}"),
        (config.seed is None or isinstance(config.seed, int), f"seed must be an integer, got {config.seed!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise BatchConfigError(message)


def _check_tiles(tiles: TileConfig) -> None:
    from ..pipeline import TileConfig

    maps = typing.get_args(typing.get_type_hints(TileConfig)["vae_maps"])
    positive = ("latent_tile", "vae_encoder_tile", "vae_decoder_tile", "batch_size")
    for name in positive:
        if getattr(tiles, name) < 1:
            raise BatchConfigError(f"tiles.{name} must be >= 1, got {getattr(tiles, name)}")
    if not 0 <= tiles.latent_overlap < tiles.latent_tile:
        raise BatchConfigError(f"latent tile overlap must be 0..{tiles.latent_tile - 1} (below the tile), "
                               f"got {tiles.latent_overlap}")
    if tiles.vae_maps not in maps:
        raise BatchConfigError(f"vae maps must be one of {', '.join(maps)}, got {tiles.vae_maps!r}")


def _check_model(model: ModelOptions) -> None:
    from ..device import pick_decoder_dtype, pick_device, pick_dtype
    from ..presets import get_preset

    get_preset(model.preset)
    try:
        device = pick_device(model.device)
        dtype = pick_dtype(model.dtype, device)
        pick_decoder_dtype(model.decoder_dtype, device, dtype)
    except (RuntimeError, ValueError) as err:  # torch.device("bogus") is a RuntimeError
        raise BatchConfigError(str(err).splitlines()[0]) from None
