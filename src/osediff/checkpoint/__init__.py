"""Weights I/O: the authors' checkpoint, our safetensors format, and hub/URL resolution.

Resolution (``resolve_base``, ``resolve_file``, and ``ModelNotFoundError`` with its ``MissingFile``
and ``Option`` records) imports no torch, so a command can find out that a file is missing before paying
for the heavy imports; the weights classes are imported on first use. The models folder (``store``:
its layout and lookups; ``store_fill``: ``download``; ``store_inventory``: ``inventory``) is read
before every cache and the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hub import (
    DEFAULT_BASE,
    DEFAULT_WEIGHTS,
    KNOWN_SHA256,
    MissingFile,
    ModelNotFoundError,
    Option,
    cache_dir,
    resolve_base,
    resolve_file,
)
from .store import models_folder
from .store_fill import download
from .store_inventory import inventory

if TYPE_CHECKING:
    from .weights import CheckpointError, OSEDiffWeights, convert_weights

_WEIGHTS_NAMES = ("CheckpointError", "OSEDiffWeights", "convert_weights")


def __getattr__(name: str) -> Any:
    if name in _WEIGHTS_NAMES:
        from . import weights

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_WEIGHTS",
    "KNOWN_SHA256",
    "CheckpointError",
    "MissingFile",
    "ModelNotFoundError",
    "OSEDiffWeights",
    "Option",
    "cache_dir",
    "convert_weights",
    "download",
    "inventory",
    "models_folder",
    "resolve_base",
    "resolve_file",
]
