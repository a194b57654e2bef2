"""One demo request: the page's settings as UpscaleParams, the per-image step, the PNG to download.

Kept free of gradio so the same code path can be tested directly. The model, the prompt
extractors and the bicubic "before" image all come from :class:`osediff.pipeline.Upscaler`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..images import LoadedImage, save_image_atomic
from ..limits import DEMO_LIMITS, RequestLimits
from ..outputs import output_name
from ..params import ParamError, TileConfig, UpscaleParams
from ..pipeline import OSEDiffPipeline, Upscaler
from ..prompts.offered import ExtractorUnavailableError
from .uploads import DemoInputError, check_request

STAGE_LABELS = {"extract": "prompt extraction", "prompt": "text encoder", "vae_encode": "VAE encode",
                "unet": "UNet", "vae_decode": "VAE decode", "colour": "colour fix"}


@dataclass(frozen=True)
class DemoSettings:
    """What the page lets a user choose for one run."""

    upscale: float = 4.0
    prompt: str = ""
    extractor: str = "text"
    align: str = "adain"
    tile_px: int = 768  # UNet tile side in output pixels; 0 switches tiling off
    strength: float = 1.0
    guidance: float = 1.0
    negative_prompt: str = ""

    def params(self) -> UpscaleParams:
        """The run these settings ask for (a refusal is worded for the page)."""
        try:
            return UpscaleParams(float(self.upscale), self.align, self.prompt or "", self.extractor,
                                 tiles=TileConfig.for_output_tile(int(self.tile_px or 0)), strength=self.strength,
                                 guidance=self.guidance, negative_prompt=self.negative_prompt or "")
        except ParamError as err:
            raise DemoInputError(f"{err.argument.replace('_', ' ')} {err.problem}") from None


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


def safe_stem(name: str | None) -> str:
    """A download file name stem from whatever the browser called the file (letters, digits, - and _)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name or "image").stem).strip("_")[:60]
    return stem or "image"


class UpscaleService:
    """The loaded model (an :class:`Upscaler`, which offers its prompt extractors) and the folder of
    finished PNGs. Without ``output_dir`` the results go to a temporary folder that :meth:`close`
    removes."""

    def __init__(self, upscaler: Upscaler | OSEDiffPipeline, limits: RequestLimits = DEMO_LIMITS,
                 output_dir: str | Path | None = None, keep_outputs: int = 32) -> None:
        self.upscaler = upscaler if isinstance(upscaler, Upscaler) else Upscaler(upscaler)
        self.limits = limits
        self._owns_output_dir = output_dir is None
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="osediff-demo-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.keep_outputs = keep_outputs
        self._lock = threading.Lock()

    @property
    def extractor_names(self) -> list[str]:
        return self.upscaler.extractors.names

    @property
    def unavailable(self) -> dict[str, str]:
        return self.upscaler.extractors.unavailable

    @property
    def device(self) -> str:
        return str(self.upscaler.device)

    def close(self) -> None:
        """Remove the temporary output folder (a folder given by the caller stays)."""
        if self._owns_output_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def upscale(self, loaded: LoadedImage, settings: DemoSettings, name: str | None = None) -> DemoResult:
        """Run OSEDiff on an already limit-checked image; the PNG is written before returning."""
        started = time.perf_counter()
        params = settings.params()
        check_request(loaded.rgb.width, loaded.rgb.height, params.upscale, self.limits)
        self._check_extractor(params.prompt_extractor)
        try:
            result = self.upscaler.upscale([(loaded, params)])[0]
        except ExtractorUnavailableError as err:  # the page gets no server paths: only the reason
            raise DemoInputError(f"prompt extractor {err.name!r} could not be loaded on this server "
                                 f"({err.reason})") from None
        png = self._write_png(result.image, output_name(safe_stem(name), "png"))
        return DemoResult(result.bicubic, result.image, result.prompt, png, result.timings,
                          time.perf_counter() - started)

    def _check_extractor(self, name: str) -> None:
        choices = ", ".join(self.extractor_names)
        if name in self.unavailable:
            raise DemoInputError(f"prompt extractor {name!r} is not offered on this server (its model files "
                                 f"are missing); choose one of {choices}")
        if name not in self.extractor_names:
            raise DemoInputError(f"unknown prompt extractor {name!r}; choose one of {choices}")

    def _write_png(self, image: Image.Image, filename: str) -> Path:
        # one folder per request keeps the file name unique under concurrency
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
