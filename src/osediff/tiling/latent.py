"""UNet over overlapping latent tiles, blended with Gaussian weights (MultiDiffusion-style).

Each tile's noise prediction is weighted by a separable Gaussian centred on the tile, so seams
fade out; the blended prediction is sum(w * eps_tile) / sum(w) at every latent pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering ``[0, length)``; the last tile is aligned to the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def gaussian_weights(height: int, width: int, var: float = 0.01) -> torch.Tensor:
    """Outer product of 1-D Gaussians with variance ``var`` in tile-relative units (the authors' 0.01)."""

    def profile(n: int) -> torch.Tensor:
        x = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
        return torch.exp(-(x**2) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return torch.outer(profile(height), profile(width)).float()


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int | tuple[int, int],
                overlap: int, batch_size: int = 1) -> torch.Tensor:
    """``fn`` (latent tiles -> same-shaped predictions) over ``z`` in tiles, Gaussian-blended.

    ``tile`` is a square tile's side or (height, width). Tiles of one image are run ``batch_size``
    at a time. Falls back to a single call when ``z`` fits in one tile.
    """
    n, _, height, width = z.shape
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    if height <= tile_h and width <= tile_w:
        return fn(z)
    th, tw = min(tile_h, height), min(tile_w, width)
    boxes = [(y, x) for y in tile_starts(height, th, overlap) for x in tile_starts(width, tw, overlap)]
    weight = gaussian_weights(th, tw).to(z.device, torch.float32)
    out: torch.Tensor | None = None
    norm = torch.zeros(1, 1, height, width, device=z.device, dtype=torch.float32)
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first : first + batch_size]
        tiles = torch.cat([z[:, :, y : y + th, x : x + tw] for y, x in chunk])
        preds = fn(tiles).float().split(n)
        if out is None:
            out = torch.zeros(n, preds[0].shape[1], height, width, device=z.device, dtype=torch.float32)
        for (y, x), pred in zip(chunk, preds, strict=True):
            out[:, :, y : y + th, x : x + tw] += pred * weight
            norm[:, :, y : y + th, x : x + tw] += weight
    assert out is not None
    return (out / norm).to(z.dtype)
