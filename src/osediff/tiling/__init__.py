"""Tiled execution for large images: latent tiles for the UNet, global-statistics tiles for the VAE."""

from .latent import gaussian_weights, tile_starts, tiled_apply

__all__ = ["gaussian_weights", "tile_starts", "tiled_apply"]
