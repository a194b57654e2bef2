"""Where the tiled VAE keeps its full-size feature maps: on the compute device, or in host memory.

Host memory bounds GPU memory by one tile's work, but every layer's map then crosses PCIe, so it
is worth it only when the maps would crowd the GPU. The estimate below is the tiled SD decoder's
(its maps are the widest of the VAE), used for the encoder too.
"""

from __future__ import annotations

import torch

from ..params import VAE_MAPS, TileConfig, VaeMaps
from .budget import recompute_above_for

# full-resolution channels the tiled SD decoder stores at once when it does not recompute: the
# upsampled 256-channel map plus the first resnet's 128-channel inner map
_LIVE_MAP_CHANNELS = 256 + 128
_LATENT_SCALE = 8  # image pixels per latent pixel along each side (the SD VAE's three 2x resamplers)


def decoded_pixels(z: torch.Tensor) -> int:
    """Pixels of the image the VAE decodes from the latent ``z`` (N, C, h, w)."""
    return _LATENT_SCALE**2 * z.shape[-2] * z.shape[-1]


def tiled_vae_map_bytes(pixels: int, dtype: torch.dtype) -> int:
    """Bytes of feature maps the tiled VAE holds at once for an image of ``pixels`` pixels."""
    return _LIVE_MAP_CHANNELS * pixels * dtype.itemsize


def vae_map_store(vae_maps: VaeMaps, device: torch.device, pixels: int, dtype: torch.dtype) -> torch.device:
    """Where the tiled VAE of a ``pixels``-pixel image on ``device`` keeps its maps.

    ``"device"``: ``device`` itself; ``"cpu"``: host memory; ``"auto"``: host memory on a GPU where
    the maps would take over a quarter of its free memory, else ``device``.
    """
    if vae_maps not in VAE_MAPS:
        raise ValueError(f"vae_maps must be one of {', '.join(VAE_MAPS)}, got {vae_maps!r}")
    if vae_maps == "cpu" or (vae_maps == "auto" and device.type == "cuda"
                             and tiled_vae_map_bytes(pixels, dtype) > torch.cuda.mem_get_info(device)[0] / 4):
        return torch.device("cpu")
    return device


def vae_maps_plan(tiles: TileConfig, device: torch.device, pixels: int,
                  dtype: torch.dtype) -> tuple[torch.device, int]:
    """Where the tiled VAE of a ``pixels``-pixel image keeps its maps (:func:`vae_map_store`), and
    from which size it recomputes them instead, within the memory budget of ``tiles`` there."""
    store = vae_map_store(tiles.vae_maps, device, pixels, dtype)
    return store, recompute_above_for(tiles, store, pixels, dtype.itemsize)
