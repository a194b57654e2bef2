"""The model side of the service, free of Ray and HTTP: load once, run a batch of checked requests.

A batch from the queue may mix sizes, factors and options. Requests with the same input size,
factor and alignment share one :meth:`OSEDiffPipeline.run_batch` call (one VAE encode, one UNet
and one decode); each other group gets its own call. A failing group fails only its requests.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..images import LoadedImage
from ..limits import SERVE_LIMITS, RequestLimits
from ..prompts import extractor_needs_model
from .limits import UpscaleParams

ALWAYS_LOADED = ("text", "none")


@dataclass(frozen=True)
class ServeConfig:
    """Everything a replica needs, with every model file already resolved to a local path."""

    base: str
    weights: str | None
    device: str = "cpu"
    dtype: str = "auto"
    decoder_dtype: str = "auto"
    extractors: tuple[str, ...] = ALWAYS_LOADED
    # per model extractor, its factory's file arguments as local paths (prompts.resolve_extractor_files)
    extractor_files: dict[str, dict] = field(default_factory=dict)
    # what a request leaves out: the preset's factor and alignment, the first --prompt-extractor
    defaults: UpscaleParams = field(default_factory=UpscaleParams)
    limits: RequestLimits = SERVE_LIMITS
    max_batch_size: int = 4
    batch_wait_s: float = 0.02
    api_key_sha256: str | None = None  # the key itself never leaves the process that read it
    threads: int | None = None
    weights_sha256: str | None = None
    # what /v1/info shows: the names the operator gave, not server paths
    base_label: str = ""
    weights_label: str = ""


@dataclass
class Job:
    """One checked request waiting for the model."""

    image: LoadedImage
    params: UpscaleParams
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    image: Image.Image
    prompt: str
    timings: dict[str, float]
    batch_size: int


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Engine:
    """The loaded pipeline and prompt extractors of one replica."""

    def __init__(self, config: ServeConfig) -> None:
        import torch

        from ..device import pick_decoder_dtype, pick_device, pick_dtype
        from ..pipeline import OSEDiffPipeline, TileConfig
        from ..prompts import create_prompt_extractor
        from ..quiet import quiet_libraries

        quiet_libraries()  # a replica is a process of its own: its load bars would flood the driver's log
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        device = pick_device(config.device)
        dtype = pick_dtype(config.dtype, device)
        # the same construction as ``osediff upscale``, but keeping the text encoder: any prompt may come
        self.pipe = OSEDiffPipeline.from_pretrained(
            config.base, config.weights, device=device, dtype=dtype, local_files_only=True,
            decoder_dtype=pick_decoder_dtype(config.decoder_dtype, device, dtype))
        self.tiles = TileConfig()
        dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        common = {"device": str(device), "dtype": dtype_name, "local_files_only": True}
        self.extractors = {name: create_prompt_extractor(name, **({**config.extractor_files[name], **common}
                                                                  if extractor_needs_model(name) else {}))
                           for name in config.extractors}
        self.device, self.dtype = str(device), str(dtype).removeprefix("torch.")

    def run(self, jobs: list[Job]) -> list[JobResult | BaseException]:
        """Results in the order of ``jobs``; an exception in place of each request of a failed group."""
        started = time.perf_counter()
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            groups[(job.image.rgb.size, job.params.upscale, job.params.align)].append(index)
        results: list[JobResult | BaseException] = [RuntimeError("not run")] * len(jobs)
        for indices in groups.values():
            try:
                for index, result in zip(indices, self._run_group([jobs[i] for i in indices], started), strict=True):
                    results[index] = result
            except Exception as err:  # handed to each waiting request, which reports it
                for index in indices:
                    results[index] = err
        return results

    def _run_group(self, jobs: list[Job], started: float) -> list[JobResult]:
        from ..pipeline import bicubic_upscale

        params = jobs[0].params
        extract_start = time.perf_counter()
        prompts = self._prompts(jobs, params.upscale, bicubic_upscale)
        extract_s = time.perf_counter() - extract_start
        outputs = self.pipe.run_batch([job.image.rgb for job in jobs], params.upscale, prompts,
                                      align=params.align, tiles=self.tiles, extract_prompt=False,
                                      alphas=[job.image.alpha for job in jobs])
        return [JobResult(out.image, out.prompt,
                          {"queue": started - job.queued_at, "extract": extract_s, **out.timings}, len(jobs))
                for job, out in zip(jobs, outputs, strict=True)]

    def _prompts(self, jobs: list[Job], upscale: float, bicubic_upscale) -> list[str]:
        """As ``osediff upscale``: an extractor sees the bicubic pre-upscaled image and the user's text."""
        prompts = [""] * len(jobs)
        calls: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            calls[(job.params.prompt_extractor, job.params.prompt)].append(index)
        for (name, user_prompt), indices in calls.items():
            extractor = self.extractors[name]
            images = ([bicubic_upscale(jobs[i].image.rgb, upscale) for i in indices]
                      if extractor_needs_model(name) else [jobs[i].image.rgb for i in indices])
            for index, prompt in zip(indices, extractor(images, user_prompt), strict=True):
                prompts[index] = prompt
        return prompts


def encode_image(image: Image.Image, params: UpscaleParams) -> bytes:
    """The response body; JPEG drops alpha as ``osediff upscale`` does."""
    import io

    buffer = io.BytesIO()
    if params.format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=params.quality)
    elif params.format == "webp":
        image.save(buffer, format="WEBP", quality=params.quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()
