"""One demo request: limits, prompt, the pipeline call, the bicubic reference and the PNG to download.

Kept free of gradio so the same code path can be tested directly and reused by other front ends.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..checkpoint import ModelNotFoundError
from ..color import ALIGN_METHODS
from ..images import LoadedImage, save_image_atomic
from ..limits import DEMO_LIMITS, RequestLimits
from ..pipeline import OSEDiffPipeline, TileConfig
from ..prompts import (
    PromptExtractor,
    available_prompt_extractors,
    create_prompt_extractor,
    extractor_needs_model,
    resolve_extractor_files,
)
from .limits import DemoInputError, check_request

STAGE_LABELS = {"extract": "prompt extraction", "prompt": "text encoder", "vae_encode": "VAE encode",
                "unet": "UNet", "vae_decode": "VAE decode"}


@dataclass
class DemoSettings:
    """What the page lets a user choose for one run."""

    upscale: float = 4.0
    prompt: str = ""
    extractor: str = "text"
    align: str = "adain"
    tile_px: int = 768  # UNet tile side in output pixels; 0 switches tiling off


@dataclass
class DemoResult:
    bicubic: Image.Image
    image: Image.Image
    prompt: str
    png_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0

    def summary(self, device: str = "") -> str:
        """One line for the page: total wall time, then each stage."""
        stages = ", ".join(f"{STAGE_LABELS.get(k, k)} {v:.2f} s" for k, v in self.timings.items())
        # what the stages leave out: bicubic resize and PNG encoding (about 1 s at 2048x2048)
        stages += f", resize and PNG {max(0.0, self.total_s - sum(self.timings.values())):.2f} s"
        where = f" on {device}" if device else ""
        return f"{self.total_s:.2f} s total{where} ({stages}); output {self.image.width}x{self.image.height}"


def tile_config(tile_px: int) -> TileConfig:
    """A UNet tile of ``tile_px`` output pixels with the authors' 1/3 overlap; VAE tiles stay at their defaults."""
    if tile_px <= 0:
        return TileConfig(enabled=False)
    latent = max(16, int(tile_px) // 8)
    return TileConfig(enabled=True, latent_tile=latent, latent_overlap=latent // 3)


def resolve_extractors(preferred: str | None = None, *,
                       local_files_only: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The prompt extractors a server can offer, with their files resolved, and why the others cannot.

    Run once at start-up, so that the page offers only what works and no request waits on a
    download. ``preferred`` (the page's initial choice) may be downloaded; the others are taken
    from the local cache only: a page should not fetch gigabytes nobody asked for.
    """
    offered: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for name in available_prompt_extractors():
        if not extractor_needs_model(name):
            offered[name] = {}
            continue
        try:
            offered[name] = resolve_extractor_files(name, local_files_only=local_files_only or name != preferred)
        except ModelNotFoundError as err:
            missing[name] = err.reason
    return offered, missing


def safe_stem(name: str | None) -> str:
    """A download file name stem from whatever the browser called the file (letters, digits, - and _)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name or "image").stem).strip("_")[:60]
    return stem or "image"


class UpscaleService:
    """Holds the loaded pipeline, built prompt extractors and the folder of finished PNGs.

    ``extractors`` maps the extractors to offer to their resolved files (see
    :func:`resolve_extractors`); by default only those without a model. ``unavailable`` names the
    others with the reason, for the server's log. Without ``output_dir`` the results go to a
    temporary folder that :meth:`close` removes.
    """

    def __init__(self, pipe: OSEDiffPipeline, limits: RequestLimits = DEMO_LIMITS,
                 output_dir: str | Path | None = None, keep_outputs: int = 32,
                 extractor_kwargs: dict[str, Any] | None = None,
                 extractors: dict[str, dict[str, Any]] | None = None,
                 unavailable: dict[str, str] | None = None) -> None:
        self.pipe = pipe
        self.limits = limits
        self._owns_output_dir = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="osediff-demo-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.keep_outputs = keep_outputs
        self.extractor_kwargs = extractor_kwargs or {}
        if extractors is None:
            extractors = {name: {} for name in available_prompt_extractors() if not extractor_needs_model(name)}
        self.extractor_files = extractors
        self.unavailable = dict(unavailable or {})
        self._extractors: dict[str, PromptExtractor] = {}
        self._failed: dict[str, str] = {}  # a model that failed to load is not tried again
        self._building: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._lock = threading.Lock()

    @property
    def extractor_names(self) -> list[str]:
        return sorted(self.extractor_files)

    def close(self) -> None:
        """Remove the temporary output folder (a folder given by the caller stays)."""
        if self._owns_output_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    @property
    def device(self) -> str:
        return str(self.pipe.device)

    def extractor(self, name: str) -> PromptExtractor:
        """Build each extractor once (they can be large networks) and reuse it for every request.

        Only the extractor being built is locked: requests using others (or ``text``) go on.
        """
        choices = ", ".join(self.extractor_names)
        if name in self.unavailable:
            raise DemoInputError(f"prompt extractor {name!r} is not offered on this server (its model files "
                                 f"are missing); choose one of {choices}")
        if name not in self.extractor_files:
            raise DemoInputError(f"unknown prompt extractor {name!r}; choose one of {choices}")
        with self._building[name]:
            if name in self._failed:
                raise DemoInputError(self._failed[name])
            if name not in self._extractors:
                kwargs = {**self.extractor_kwargs, **self.extractor_files[name]} if extractor_needs_model(name) else {}
                try:
                    self._extractors[name] = create_prompt_extractor(name, **kwargs)
                except Exception as err:  # unreadable weights, a missing optional package, out of memory, ...
                    # the page gets no server paths: the whole message goes to the server's log only
                    print(f"prompt extractor {name!r} failed to load: {err}", file=sys.stderr, flush=True)
                    reason = err.reason if isinstance(err, ModelNotFoundError) else type(err).__name__
                    self._failed[name] = f"prompt extractor {name!r} could not be loaded on this server ({reason})"
                    raise DemoInputError(self._failed[name]) from None
            return self._extractors[name]

    def upscale(self, loaded: LoadedImage, settings: DemoSettings, name: str | None = None) -> DemoResult:
        """Run OSEDiff on an already limit-checked image; the PNG is written before returning."""
        started = time.perf_counter()
        rgb = loaded.rgb
        out_w, out_h = check_request(rgb.width, rgb.height, float(settings.upscale), self.limits)
        if settings.align not in ALIGN_METHODS:
            raise DemoInputError(f"unknown colour alignment {settings.align!r}")
        # the same bicubic pre-upscale the pipeline starts from: the fair "before" picture
        bicubic = rgb.resize((out_w, out_h), Image.BICUBIC)

        extract_start = time.perf_counter()
        prompt = self.extractor(settings.extractor)([bicubic], settings.prompt or "")[0]
        extract_s = time.perf_counter() - extract_start

        result = self.pipe.run(rgb, float(settings.upscale), prompt, extract_prompt=False, align=settings.align,
                               tiles=tile_config(int(settings.tile_px)), alpha=loaded.alpha)
        png = self._write_png(result.image, f"{safe_stem(name)}_osediff_x{settings.upscale:g}.png")
        timings = {"extract": extract_s, **result.timings}
        return DemoResult(bicubic, result.image, result.prompt, png, timings, time.perf_counter() - started)

    def _write_png(self, image: Image.Image, filename: str) -> Path:
        # one folder per request keeps the friendly file name unique under concurrency
        folder = self.output_dir / uuid.uuid4().hex
        path = save_image_atomic(image, folder / filename)
        self._prune()
        return path

    def _prune(self) -> None:
        """Keep only the newest ``keep_outputs`` results; gradio has its own copy of anything it served."""
        with self._lock:
            folders = sorted((p for p in self.output_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
            for old in folders[: max(0, len(folders) - self.keep_outputs)]:
                shutil.rmtree(old, ignore_errors=True)
