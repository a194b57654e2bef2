"""The batch runner as a library: one :class:`BatchConfig` in, a :class:`BatchSummary` out.

``osediff upscale`` and ``osediff eval --lr`` are thin front ends over :func:`run`; the Ray
engine (:mod:`osediff.batch.ray_engine`) runs the same per-image step on a cluster.

    from osediff.batch import BatchConfig, run
    from osediff.params import UpscaleParams
    summary = run(BatchConfig(inputs=["photos/"], output="out", params=UpscaleParams(upscale=4)))
"""

from ..model_files import ModelOptions
from ..outputs import output_name
from .config import BatchConfig, BatchConfigError, validate
from .runner import (
    FAILED,
    SKIPPED,
    WRITTEN,
    BatchSummary,
    ImageRecord,
    MissingPromptError,
    find_batch_files,
    load_batch_upscaler,
    run,
)

__all__ = [
    "FAILED",
    "SKIPPED",
    "WRITTEN",
    "BatchConfig",
    "BatchConfigError",
    "BatchSummary",
    "ImageRecord",
    "MissingPromptError",
    "ModelOptions",
    "find_batch_files",
    "load_batch_upscaler",
    "output_name",
    "run",
    "validate",
]
