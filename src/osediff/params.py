"""What one upscale asks for, as one frozen object every front end builds and checks once.

:class:`UpscaleParams` holds the factor, colour alignment, prompt and prompt extractor, latent mode
and seed, tiling (:class:`TileConfig`) and the output encoding. Both objects check every field when
they are made, so a value that cannot work is refused where it is given, in one
:class:`ParamError` naming the argument (``tiles.latent_overlap``), before any model loads; the
command line shows that argument as its flag. No torch here: the CLI, the service's request
parsing and the demo's controls use it without loading the model stack.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from .errors import OptionError

AlignMethod = Literal["adain", "wavelet", "none"]
ALIGN_METHODS: tuple[str, ...] = get_args(AlignMethod)
LatentMode = Literal["mode", "sample"]
LATENT_MODES: tuple[str, ...] = get_args(LatentMode)
VaeMaps = Literal["auto", "device", "cpu"]
VAE_MAPS: tuple[str, ...] = get_args(VaeMaps)
# encoding -> file suffix; "same" keeps an input file's own format (see osediff.outputs.output_name)
OUTPUT_FORMATS: dict[str, str] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
KEEP_FORMAT = "same"
MAX_GUIDANCE = 20.0
# automatic UNet tiles are at most this many latent pixels per side (2.25x SD's 64 training size): the
# UNet's attention has not seen wider contexts, and wider tiles are not cheaper per pixel anyway
MAX_AUTO_LATENT_TILE = 144  # far past where any prompt still helps; a typo like 75 is refused
# the tiled VAE's tiles when the memory budget cannot hold the whole image (encoder: image pixels,
# decoder: latent pixels); images no larger never tile
AUTO_VAE_ENCODER_TILE = 1024
AUTO_VAE_DECODER_TILE = 224


class ParamError(OptionError):
    """A parameter of an upscale that cannot work; ``argument`` names it (``tiles.latent_tile``)."""


def _require(ok: bool, argument: str, problem: str) -> None:
    if not ok:
        raise ParamError(problem, argument=argument)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TileConfig:
    """When and how to tile; every size is the largest processed in one piece.

    ``memory_budget`` (bytes) is what the tiling may use beyond the loaded model, by default 3/4 of
    the memory available when a stage starts (host memory on a CPU, free GPU memory on a GPU; see
    :mod:`osediff.tiling.budget`). From it come what is left unset: the UNet's tiles
    (``latent_tile=None``: the fewest, evenly sized tiles of at most 144 latent pixels that fit,
    overlapping by ``latent_overlap``), how many of them go through the network together (at most
    ``tiles_per_pass``) and which tiled-VAE maps are recomputed instead of stored. An explicit
    ``latent_tile`` is used as given (the authors' test script: 96 with overlap 32). The VAE runs
    on the whole image when the budget holds it (``vae_encoder_tile`` / ``vae_decoder_tile`` None),
    else in tiles of 1024 px (encoder) and 224 latent px (decoder); an explicit tile size tiles
    every image larger than it. Tiled equals untiled to float rounding either way; the whole image
    is faster (no per-tile copies and statistics passes).
    ``vae_maps`` is where the tiled VAE keeps its full-size feature maps between layers:
    ``"cpu"`` bounds GPU memory by one tile's work (slower: every layer's map crosses PCIe),
    ``"auto"`` picks it on a GPU when the maps of the image would take over a quarter of the free
    GPU memory.
    """

    enabled: bool = True
    latent_tile: int | None = None
    latent_overlap: int = 32
    vae_encoder_tile: int | None = None
    vae_decoder_tile: int | None = None
    tiles_per_pass: int = 4
    vae_maps: VaeMaps = "auto"
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "tiles.enabled", f"must be True or False, got {self.enabled!r}")
        for name in ("latent_tile", "vae_encoder_tile", "vae_decoder_tile", "tiles_per_pass", "memory_budget"):
            value = getattr(self, name)
            optional = name != "tiles_per_pass" and value is None
            _require(optional or (_is_int(value) and value >= 1), f"tiles.{name}",
                     f"must be an integer >= 1, got {value!r}")
        overlap, tile = self.latent_overlap, self.latent_tile
        if tile is None:
            most = MAX_AUTO_LATENT_TILE // 2 - 1
            _require(_is_int(overlap) and 0 <= overlap <= most, "tiles.latent_overlap",
                     f"must be 0..{most} (below half the largest automatic tile, {MAX_AUTO_LATENT_TILE}; or pass "
                     f"a latent tile), got {overlap!r}")
        else:
            _require(_is_int(overlap) and 0 <= overlap < tile, "tiles.latent_overlap",
                     f"must be 0..{tile - 1} (below the latent tile of {tile}), got {overlap!r}")
        _require(self.vae_maps in VAE_MAPS, "tiles.vae_maps",
                 f"must be one of {', '.join(VAE_MAPS)}, got {self.vae_maps!r}")

    @classmethod
    def for_output_tile(cls, pixels: int) -> TileConfig:
        """UNet tiles of ``pixels`` output pixels with the authors' 1/3 overlap (0: no tiling)."""
        if pixels <= 0:
            return cls(enabled=False)
        latent = max(16, int(pixels) // 8)
        return cls(latent_tile=latent, latent_overlap=latent // 3)


@dataclass(frozen=True)
class UpscaleParams:
    """Everything one image's upscale depends on besides the model and the image itself.

    ``upscale`` is the output/input size ratio (any value >= 1); ``prompt`` the user's text, which
    ``prompt_extractor`` (a registered name: ``text`` uses it alone, ``none`` drops it, ``dape``/
    ``ram``/``caption`` put it after what they see) turns into the UNet's prompt; ``latent`` the
    encoder's latent mean (``mode``, deterministic) or a sample drawn with ``seed``; ``format`` and
    ``quality`` how the result is encoded (``same``: an input file's own format).

    Fidelity against realism, with no other weights: ``strength`` S moves the decoded latent from
    the encoded input (S = 0, the most faithful) to the model's (S = 1, the paper's output),
    z = z_L + S (z_H - z_L); ``guidance`` W weighs the prompt against ``negative_prompt``,
    eps = eps(negative) + W (eps(prompt) - eps(negative)) (W = 1: the prompt alone, one UNet pass).
    """

    upscale: float = 4.0
    align: AlignMethod = "adain"
    prompt: str = ""
    prompt_extractor: str = "text"
    latent: LatentMode = "mode"
    seed: int | None = None
    tiles: TileConfig = field(default_factory=TileConfig)
    format: str = "png"
    quality: int = 95
    strength: float = 1.0
    guidance: float = 1.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        upscale = self.upscale
        _require(isinstance(upscale, int | float) and not isinstance(upscale, bool) and math.isfinite(upscale)
                 and upscale >= 1, "upscale", f"must be a number >= 1, got {upscale!r}")
        object.__setattr__(self, "upscale", float(upscale))
        _require(self.align in ALIGN_METHODS, "align", f"must be one of {', '.join(ALIGN_METHODS)}, got {self.align!r}")
        _require(isinstance(self.prompt, str), "prompt", f"must be text, got {type(self.prompt).__name__}")
        _require(isinstance(self.prompt_extractor, str) and bool(self.prompt_extractor), "prompt_extractor",
                 f"must be the name of a prompt extractor, got {self.prompt_extractor!r}")
        _require(self.latent in LATENT_MODES, "latent",
                 f"must be one of {', '.join(LATENT_MODES)}, got {self.latent!r}")
        _require(self.seed is None or _is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        _require(isinstance(self.tiles, TileConfig), "tiles", f"must be a TileConfig, got {self.tiles!r}")
        fmt = FORMAT_ALIASES.get(str(self.format).lower(), str(self.format).lower())
        _require(fmt in (*OUTPUT_FORMATS, KEEP_FORMAT), "format",
                 f"must be one of {', '.join((*OUTPUT_FORMATS, 'jpg', KEEP_FORMAT))}, got {self.format!r}")
        object.__setattr__(self, "format", fmt)
        _require(_is_int(self.quality) and 1 <= self.quality <= 100, "quality",
                 f"must be an integer 1-100, got {self.quality!r}")
        _require(_is_number(self.strength) and 0 <= self.strength <= 1, "strength",
                 f"must be a number from 0 to 1, got {self.strength!r}")
        _require(_is_number(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE, "guidance",
                 f"must be a number from 0 to {MAX_GUIDANCE:g}, got {self.guidance!r}")
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "guidance", float(self.guidance))
        _require(isinstance(self.negative_prompt, str), "negative_prompt",
                 f"must be text, got {type(self.negative_prompt).__name__}")

    def replace(self, **changes) -> UpscaleParams:
        """A copy with ``changes``, checked like any new one."""
        return dataclasses.replace(self, **changes)

    @property
    def model_key(self) -> tuple:
        """What images must share to go through the model in one call (their size aside)."""
        return (self.upscale, self.align, self.latent, self.seed, self.tiles, self.strength, self.guidance,
                self.negative_prompt if self.guidance != 1 else "")


def parse_memory_size(text: str) -> int | None:
    """``auto`` -> None; ``6``, ``6G``, ``6GiB``, ``512M``, ``512MiB`` -> bytes (a bare number is GiB)."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    if value == "auto":
        return None
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(value[-1:], 0)
    number = value[:-1] if scale else value
    try:
        size = float(number) * (scale or 1 << 30)
    except ValueError:
        size = math.nan
    if not math.isfinite(size) or size < 1:
        raise ParamError(f"must be 'auto' or a size such as 6G or 512M, got {text!r}", argument="tiles.memory_budget")
    return int(size)


def output_size(width: int, height: int, upscale: float) -> tuple[int, int]:
    """The size of the result: round(s * side) per side, as the bicubic pre-upscale makes it."""
    return max(1, round(width * upscale)), max(1, round(height * upscale))
