"""The VAE graphs over overlapping tiles, for images larger than one graph call should hold.

The torch pipeline tiles the VAE layer by layer with whole-image GroupNorm statistics
(:mod:`osediff.tiling.vae`), which equals the untiled VAE; an exported graph runs as one piece, so
here each tile is encoded or decoded whole and the results are blended with Gaussian weights
where tiles overlap (as diffusers' ``enable_tiling`` does). GroupNorm then sees each tile's own
statistics, so the result differs slightly from the untiled one; ``benchmarks/backends.py``
and the tests state by how much. Tiles are capped (``MAX_ENCODER_TILE``, ``MAX_DECODER_TILE``)
because a whole graph keeps every full-size map of its tile and the mid-block attention's keys:
a 224-latent decoder tile, fine layer by layer in torch, would take ~10 GB in one graph call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..tiling.latent import gaussian_weights, tile_starts

MAX_ENCODER_TILE = 768  # image pixels a side
MAX_DECODER_TILE = 96  # latent pixels a side (768 image pixels)
LATENT_SCALE = 8


def encoder_tiling(tile: int) -> tuple[int, int]:
    """(tile, overlap) in image pixels for the encoder graph: multiples of 8, a quarter overlapping."""
    tile = max(LATENT_SCALE * 8, min(tile, MAX_ENCODER_TILE) // LATENT_SCALE * LATENT_SCALE)
    return tile, tile // 4 // LATENT_SCALE * LATENT_SCALE


def decoder_tiling(tile: int) -> tuple[int, int]:
    """(tile, overlap) in latent pixels for the decoder graph, a quarter overlapping."""
    tile = max(8, min(tile, MAX_DECODER_TILE))
    return tile, tile // 4


def blended_tiles(run: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, tile: int, overlap: int,
                  scale: float) -> list[torch.Tensor]:
    """``run`` (a tile -> outputs ``scale`` times its size) over ``x`` in overlapping tiles, each output
    blended with Gaussian weights; one call when ``x`` fits in a tile. Tile offsets times ``scale``
    must be whole numbers (the callers' tiles and overlaps are multiples of 8)."""
    n, _, height, width = x.shape
    if height <= tile and width <= tile:
        return run(x)
    th, tw = min(tile, height), min(tile, width)
    out_h, out_w = round(height * scale), round(width * scale)
    sums: list[torch.Tensor] = []
    norm = torch.zeros(1, 1, out_h, out_w)
    for y in tile_starts(height, th, overlap):
        for x0 in tile_starts(width, tw, overlap):
            outputs = run(x[:, :, y:y + th, x0:x0 + tw])
            oy, ox = round(y * scale), round(x0 * scale)
            oh, ow = outputs[0].shape[-2:]
            weight = gaussian_weights(oh, ow)
            if not sums:
                sums = [torch.zeros(n, o.shape[1], out_h, out_w) for o in outputs]
            for total, output in zip(sums, outputs, strict=True):
                total[:, :, oy:oy + oh, ox:ox + ow] += output.float() * weight
            norm[:, :, oy:oy + oh, ox:ox + ow] += weight
    return [total / norm for total in sums]
