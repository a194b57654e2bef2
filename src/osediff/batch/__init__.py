"""The batch runner as a library: one :class:`BatchConfig` in, a :class:`BatchSummary` out.

``osediff upscale`` and ``osediff eval --lr`` are thin front ends over :func:`run`; the Ray
engine (:mod:`osediff.batch.ray_engine`) runs the same per-image steps on a cluster.

    from osediff.batch import BatchConfig, run
    summary = run(BatchConfig(inputs=["photos/"], output=Path("out"), prompt_extractor="text"))
"""

from .config import (
    OUTPUT_FORMATS,
    BatchConfig,
    BatchConfigError,
    ModelOptions,
    output_clashes,
    output_name,
    output_path,
    validate,
)
from .models import ModelFilesError, ResolvedModels, load_pipeline, resolve_models
from .runner import FAILED, SKIPPED, WRITTEN, BatchSummary, ImageRecord, MissingPromptError, run

__all__ = [
    "FAILED",
    "OUTPUT_FORMATS",
    "SKIPPED",
    "WRITTEN",
    "BatchConfig",
    "BatchConfigError",
    "BatchSummary",
    "ImageRecord",
    "MissingPromptError",
    "ModelFilesError",
    "ModelOptions",
    "ResolvedModels",
    "load_pipeline",
    "output_clashes",
    "output_name",
    "output_path",
    "resolve_models",
    "run",
    "validate",
]
