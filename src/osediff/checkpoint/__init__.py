"""Weights I/O: the authors' checkpoint, our safetensors format, and hub/URL resolution."""

from .hub import (
    DEFAULT_BASE,
    DEFAULT_WEIGHTS,
    KNOWN_SHA256,
    ModelNotFoundError,
    Option,
    cache_dir,
    resolve_base,
    resolve_file,
)
from .weights import CheckpointError, OSEDiffWeights, convert_weights

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_WEIGHTS",
    "KNOWN_SHA256",
    "CheckpointError",
    "ModelNotFoundError",
    "OSEDiffWeights",
    "Option",
    "cache_dir",
    "convert_weights",
    "resolve_base",
    "resolve_file",
]
