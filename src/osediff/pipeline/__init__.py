"""The OSEDiff pipeline: the one-step model (:mod:`.model`) and the per-image step every front end
calls (:mod:`.step`); the parameters of an upscale live in :mod:`osediff.params` (no torch)."""

from ..params import LatentMode, TileConfig, UpscaleParams
from .model import OSEDiffPipeline, PromptNotEncodedError
from .step import PipelineInputError, PromptCache, SRResult, Upscaler, bicubic_upscale

__all__ = [
    "LatentMode",
    "OSEDiffPipeline",
    "PipelineInputError",
    "PromptCache",
    "PromptNotEncodedError",
    "SRResult",
    "TileConfig",
    "UpscaleParams",
    "Upscaler",
    "bicubic_upscale",
]
