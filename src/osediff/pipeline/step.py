"""The one per-image step beneath every front end: image + :class:`UpscaleParams` -> result.

    normalised image (RGB + alpha, EXIF applied: osediff.images)
      -> x_L = bicubic(image, s)                       the model's input and the colour reference
      -> prompt = extractor(x_L, user prompt)          one call per (extractor, user prompt)
      -> c = CLIP(prompt)                               cached here, by the caller's Upscaler
      -> x_H = model(x_L, c)                            same-size images with one model_key together
      -> colour fix to x_L, alpha back (bicubic)

The batch runner, the Ray replicas, the service's replicas, the demo and ``OSEDiffPipeline.__call__``
all hand their images here; none of them calls an extractor or resizes an image itself. A failure
fails only the images of its extractor call or model call.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..color import align_colors
from ..device import release_free_heap
from ..errors import OSEDiffError
from ..images import LoadedImage
from ..params import LatentMode, TileConfig, UpscaleParams, output_size
from ..prompts.offered import PromptExtractors
from .timing import timed

Request = tuple[LoadedImage, UpscaleParams]


class OneStepModel(Protocol):
    """What the step needs of a model: :class:`~osediff.pipeline.OSEDiffPipeline`, or any runtime with
    the same three methods (an exported graph, say)."""

    text_encoder: Any  # None once freed

    @property
    def device(self) -> torch.device: ...

    def encode_prompt(self, prompt: str) -> torch.Tensor: ...

    def super_resolve(self, x_l: torch.Tensor, embedding: torch.Tensor, *, tiles: TileConfig,
                      latent: LatentMode = "mode", seed: int | None = None, strength: float = 1.0,
                      guidance: float = 1.0, negative: torch.Tensor | None = None,
                      timings: dict[str, float] | None = None) -> torch.Tensor: ...


class PipelineInputError(OSEDiffError, ValueError):
    """Arguments of the pipeline's methods that do not fit together (list lengths, ...)."""


@dataclass
class SRResult:
    """One result: the image (PIL, or a (3, H, W) tensor in [0, 1]), the prompt used, seconds per
    stage of its calls, the bicubic pre-upscale it started from, and how many images shared its
    model call."""

    image: Image.Image | torch.Tensor
    prompt: str
    timings: dict[str, float] = field(default_factory=dict)
    bicubic: Image.Image | None = None
    batch_size: int = 1


def bicubic_upscale(image: Image.Image, upscale: float) -> Image.Image:
    """The model's input and colour reference: RGB, bicubic, exactly round(s * size)."""
    return image.convert("RGB").resize(output_size(*image.size, upscale), Image.BICUBIC)


class PromptCache:
    """CLIP embeddings of recent prompts (least recently used dropped first), safe across threads."""

    def __init__(self, encode: Callable[[str], torch.Tensor], size: int = 64) -> None:
        self._encode = encode
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.size = size
        # encoding under the lock too: threads asking for one new prompt encode it once
        self._lock = threading.RLock()

    def get(self, prompt: str) -> torch.Tensor:
        with self._lock:
            if prompt in self._entries:
                self._entries.move_to_end(prompt)
                return self._entries[prompt]
            embedding = self._encode(prompt)
            self._entries[prompt] = embedding
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return embedding

    def keep(self, prompts: Sequence[str]) -> None:
        """Encode ``prompts`` now and keep them, whatever the size (before the text encoder goes)."""
        with self._lock:
            self.size = max(self.size, len(self._entries) + len(set(prompts)))
            for prompt in prompts:
                self.get(prompt)

    def batch(self, prompts: Sequence[str]) -> torch.Tensor:
        """(1, 77, d) when every image has the same prompt, else (n, 77, d)."""
        if len(set(prompts)) == 1:
            return self.get(prompts[0])
        return torch.cat([self.get(prompt) for prompt in prompts])


class Upscaler:
    """A loaded model with the prompt extractors it offers and the prompt embeddings it has made.

    ``owns_models``: made by the loader for one job, whose runner may free the prompt models before
    its last images (:meth:`run` with ``release_prompt_models``); a pipeline handed in is never changed.
    """

    def __init__(self, pipe: OneStepModel, extractors: PromptExtractors | None = None, *,
                 prompt_cache_size: int = 64, owns_models: bool = False) -> None:
        self.pipe = pipe
        self.extractors = extractors or PromptExtractors()
        self.prompts = PromptCache(pipe.encode_prompt, prompt_cache_size)
        self.owns_models = owns_models

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def upscale(self, requests: Sequence[Request], **options) -> list[SRResult]:
        """:meth:`run`, raising the first failure instead of returning it."""
        results = self.run(requests, **options)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def run(self, requests: Sequence[Request], **options) -> list[SRResult | Exception]:
        """Results in the order of ``requests``, an exception in place of each failed one; the
        options are those of :meth:`as_ready`."""
        results: list[SRResult | Exception | None] = [None] * len(requests)
        for index, result in self.as_ready(requests, **options):
            results[index] = result
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def as_ready(self, requests: Sequence[Request], *, max_batch: int | None = None, output_type: str = "pil",
                 release_prompt_models: bool = False) -> Iterator[tuple[int, SRResult | Exception]]:
        """``(index, result)`` for every request, model call by model call, failures first.

        Images of one size whose parameters share a ``model_key`` go through the model together,
        ``max_batch`` at a time (default: all). ``release_prompt_models`` (an Upscaler that owns its
        models, before its last images) frees the extractors and the text encoder once these
        images' prompts are encoded.
        """
        if output_type not in ("pil", "pt"):
            raise PipelineInputError(f"must be 'pil' or 'pt', got {output_type!r}", argument="output_type")
        upscaled = [bicubic_upscale(image.rgb, params.upscale) for image, params in requests]
        prompts, extract_s, failed = self._extract(requests, upscaled)
        yield from failed.items()
        if release_prompt_models:
            self.release_prompt_models([p for p in prompts if p is not None])
        for group in self._groups(requests, failed, max_batch):
            try:
                outputs = self._model(requests, upscaled, prompts, group, output_type)
            except Exception as err:  # handed to each image of the group; the caller decides what is fatal
                outputs = [err] * len(group)
            for index, output in zip(group, outputs, strict=True):
                if isinstance(output, SRResult):  # stages in the order they ran
                    output.timings = {"extract": extract_s[index], **output.timings}
                yield index, output

    def prompts_for(self, images: Sequence[Image.Image], params: UpscaleParams) -> list[str]:
        """The prompts the step would give ``images`` under ``params`` (one extractor call on their
        pre-upscales), for callers that fix one prompt for many images: a video's frames."""
        requests = [(LoadedImage(image.convert("RGB"), None), params) for image in images]
        prompts, _, failed = self._extract(requests, [bicubic_upscale(image, params.upscale) for image in images])
        if failed:
            raise next(iter(failed.values()))
        return [prompt or "" for prompt in prompts]

    def _extract(self, requests: Sequence[Request], upscaled: list[Image.Image]
                 ) -> tuple[list[str | None], list[float], dict[int, Exception]]:
        """Final prompts and seconds, one extractor call per (extractor, user prompt); and the failures."""
        prompts: list[str | None] = [None] * len(requests)
        seconds = [0.0] * len(requests)
        failed: dict[int, Exception] = {}
        calls: dict[tuple[str, str], list[int]] = {}
        for index, (_, params) in enumerate(requests):
            calls.setdefault((params.prompt_extractor, params.prompt), []).append(index)
        for (name, user_prompt), indices in calls.items():
            started = time.perf_counter()
            try:
                extracted = self.extractors.get(name)([upscaled[i] for i in indices], user_prompt)
            except Exception as err:
                failed.update(dict.fromkeys(indices, err))
                continue
            for index, prompt in zip(indices, extracted, strict=True):
                prompts[index], seconds[index] = prompt, time.perf_counter() - started
        return prompts, seconds, failed

    @staticmethod
    def _groups(requests: Sequence[Request], failed: dict[int, Exception], max_batch: int | None) -> list[list[int]]:
        """Indices of the images still to run, by size and model key (in order of first appearance)."""
        by_key: dict[tuple, list[int]] = {}
        for index, (image, params) in enumerate(requests):
            if index not in failed:
                by_key.setdefault((image.rgb.size, params.model_key), []).append(index)
        step = max_batch or len(requests) or 1
        return [group[i:i + step] for group in by_key.values() for i in range(0, len(group), step)]

    def _model(self, requests: Sequence[Request], upscaled: list[Image.Image], prompts: list[str | None],
               group: list[int], output_type: str) -> list[SRResult]:
        params = requests[group[0]][1]
        pipe, timings = self.pipe, {}
        with timed(timings, "prompt", pipe.device):
            embedding = self.prompts.batch([prompts[i] or "" for i in group])
            negative = self.prompts.get(params.negative_prompt) if params.guidance != 1 else None
        x_l = torch.cat([image_tensor(upscaled[i]) for i in group])
        x_h = pipe.super_resolve(x_l, embedding, tiles=params.tiles, latent=params.latent, seed=params.seed,
                                 strength=params.strength, guidance=params.guidance, negative=negative,
                                 timings=timings)
        with timed(timings, "colour", pipe.device):
            out = align_colors(x_h, x_l.to(x_h.device), params.align).clamp(0, 1).cpu()
        if output_type == "pt":
            images: list = list(out)
        else:
            pixels = (out.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
            images = [_with_alpha(Image.fromarray(array), requests[i][0].alpha) for array, i in zip(pixels, group,
                                                                                                   strict=True)]
        return [SRResult(image, prompts[i] or "", dict(timings), upscaled[i], len(group))
                for image, i in zip(images, group, strict=True)]

    def release_prompt_models(self, keep: Sequence[str]) -> None:
        """Encode ``keep`` now, then free the prompt extractors and the text encoder.

        For the end of a job: the last images' prompts are known, so the models that make and
        encode prompts (DAPE's RAM-Swin-L and CLIP's text encoder, ~2.9 GB in fp32) need not stay
        resident while the UNet and VAE run. Afterwards only these and earlier cached prompts work.
        """
        if not self.owns_models:
            raise PipelineInputError("release_prompt_models changes the models: only for an Upscaler that "
                                     "loaded them itself (owns_models=True)")
        self.prompts.keep(list(dict.fromkeys(keep)))
        self.extractors.release_models()
        self.pipe.text_encoder = None
        gc.collect()
        release_free_heap()


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as the (1, 3, H, W) float tensor in [0, 1] that ``super_resolve`` takes."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _with_alpha(image: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """The result with the input's alpha channel, bicubic-upscaled to its size."""
    if alpha is not None:
        image.putalpha(alpha.resize(image.size, Image.BICUBIC))
    return image
