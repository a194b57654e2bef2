"""The model side of the service, free of Ray and HTTP: load once, run a batch of checked requests.

A batch from the queue may mix sizes, factors and options; the per-image step
(:meth:`osediff.pipeline.Upscaler.run`) runs images of one size and one ``model_key`` in one model
call and fails only the requests of a call that failed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from ..fileio import file_sha256
from ..images import LoadedImage
from ..limits import SERVE_LIMITS, RequestLimits
from ..model_files import ModelFiles, ModelOptions, find_model_files
from ..params import UpscaleParams
from ..prompts.offered import ALWAYS_OFFERED


@dataclass(frozen=True)
class ServeConfig:
    """Everything a replica needs; ``files`` were found by the command before Ray started, so
    replicas load from local paths only."""

    model: ModelOptions
    files: ModelFiles
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

    @classmethod
    def find(cls, model: ModelOptions, extractors: Sequence[str] = ("text",), **settings) -> ServeConfig:
        """The files of ``model`` and the ``extractors`` found (or one error naming each miss); the
        first extractor is the requests' default, ``text`` and ``none`` are always offered."""
        files = find_model_files(model, [*extractors, *ALWAYS_OFFERED])
        settings.setdefault("defaults", UpscaleParams(prompt_extractor=extractors[0]))
        settings.setdefault("weights_sha256", file_sha256(files.weights) if files.weights else None)
        return cls(model, files, **settings)

    @property
    def extractors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.defaults.prompt_extractor, *self.files.extractors, *ALWAYS_OFFERED]))


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


class Engine:
    """The loaded model and prompt extractors of one replica."""

    def __init__(self, config: ServeConfig) -> None:
        import torch

        from ..loading import describe_precision, load_upscaler
        from ..quiet import quiet_libraries

        quiet_libraries()  # a replica is a process of its own: its load bars would flood the driver's log
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        # every extractor now: no request waits for a model to load
        self.upscaler = load_upscaler(config.model, config.files, build_extractors=True)
        self.pipe = self.upscaler.pipe
        self.device, self.dtype = str(self.pipe.device), describe_precision(self.pipe)

    def run(self, jobs: list[Job]) -> list[JobResult | BaseException]:
        """Results in the order of ``jobs``; an exception in place of each request of a failed call."""
        started = time.perf_counter()
        results = self.upscaler.run([(job.image, job.params) for job in jobs])
        return [result if isinstance(result, BaseException) else
                JobResult(result.image, result.prompt, {"queue": started - job.queued_at, **result.timings},
                          result.batch_size)
                for job, result in zip(jobs, results, strict=True)]
