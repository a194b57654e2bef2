"""Tile sizes and recomputation chosen from the memory a run may use (``TileConfig.memory_budget``).

Large images cost more per pixel than small ones for two reasons this module can act on: UNet tiles
that overlap (96-pixel latent tiles with 32 of overlap cover a 2048x2048 output 2.25 times over), and
tiled-VAE maps recomputed to save memory (each recomputation is a second pass of the widest
convolutions). The functions here are pure: they take the budget in bytes and the sizes, so the
choice is easy to test; :func:`available_memory` is the one that reads the machine.

The UNet's cost per pixel is not flat in the tile size, because its self-attention is quadratic in
the tile's pixel count: per tile, cost ~ P (1 + a P / 64^2) for P latent pixels, with ``a`` the
attention's share at SD's training size (:data:`UNET_ATTENTION_SHARE`, measured on the CPU the
README's table ran on). :func:`unet_tiling` picks the tile counts per axis that minimise
tiles x cost, with every tile the same size (the layout covers the latent with the smallest
overlap the configured one allows, instead of a fixed tile whose last one overhangs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..params import AUTO_VAE_DECODER_TILE, AUTO_VAE_ENCODER_TILE, TileConfig
from ..params import MAX_AUTO_LATENT_TILE as MAX_AUTO_TILE
from .latent import tile_starts

GIB = 1 << 30
# share of available memory the automatic budget takes: the rest is left to the process's own
# buffers (images, outputs) and to whatever else the machine runs
AUTO_BUDGET_FRACTION = 0.75
# the attention's share of a UNet forward at 64x64 latent pixels: SD-2.1's full-resolution
# self-attention is about 8 % of the forward's FLOPs there, in line with the seconds per latent
# pixel measured on a 2-core Xeon (benchmarks/large_images.py --unet-sweep: 1.21 ms at 64, 1.24 at 96,
# 1.52 at 144, on a busy machine)
UNET_ATTENTION_SHARE = 0.08
# peak resident growth of one fp32 UNet forward per latent pixel of its input (measured 64-144 px)
UNET_BYTES_PER_LATENT_PIXEL = 40 << 10
_VAE_ATTENTION_CHANNELS = 512  # the SD VAE mid-block attention width (keys and values held whole)
# peak resident growth of the untiled SD VAE per image pixel, by stage and bytes per map element:
# measured (ru_maxrss over the loaded model, diffusers' Encoder / Decoder with torch's CPU SDPA) at
# 512-1536 px as fp32 encoder 2566-2608, bf16 encoder 1554, fp32 decoder 4053-4928, bf16 decoder
# 2449-3029; each figure below is the large-image one plus 10 % (per byte of a map element the bf16
# stages need more than the fp32 ones, hence one figure per dtype); an H200's fp16 2048 px decode
# peaked at 9.8 GiB (2500 per pixel), in line
VAE_BYTES_PER_PIXEL = {("encoder", 4): 2850, ("encoder", 2): 1750, ("decoder", 4): 4500, ("decoder", 2): 2700}


@dataclass(frozen=True)
class UnetTiling:
    """UNet tiles of ``tile`` = (height, width) latent pixels, overlapping by at least ``overlap``,
    ``per_pass`` of them through the network at once; ``tile`` is the latent's size when untiled."""

    tile: tuple[int, int]
    overlap: int
    per_pass: int
    counts: tuple[int, int]

    @property
    def tiled(self) -> bool:
        return self.counts != (1, 1)


def even_tile(length: int, count: int, overlap: int) -> int:
    """The smallest tile side with which ``count`` tiles overlapping by ``overlap`` cover ``length``."""
    if count <= 1:
        return length
    return -(-(length + (count - 1) * overlap) // count)


def unet_tile_cost(height: int, width: int) -> float:
    """Relative cost of one UNet forward over a ``height`` x ``width`` latent (1.0 = per pixel at P -> 0)."""
    pixels = height * width
    return pixels * (1 + UNET_ATTENTION_SHARE * pixels / 64**2)


def unet_tiling_for(tiles: TileConfig, z: torch.Tensor, batch: int) -> UnetTiling:
    """:func:`unet_tiling` of the latent ``z`` within the budget of ``tiles`` on ``z``'s device."""
    return unet_tiling(tiles, z.shape[-2], z.shape[-1], memory_budget(tiles, z.device.type, z.device.index), batch)


def unet_tiling(tiles: TileConfig, height: int, width: int, budget: int, batch: int = 1) -> UnetTiling:
    """How the UNet covers a ``height`` x ``width`` latent of ``batch`` samples within ``budget`` bytes.

    An explicit ``tiles.latent_tile`` is used as it is (square tiles, the last one aligned to the
    end, as always). Otherwise the tile counts per axis minimise the total cost
    (:func:`unet_tile_cost`) with tiles no wider than :data:`MAX_AUTO_TILE` and one forward of
    ``batch`` tiles within the budget; then as many tiles go per pass as the budget holds, up to
    ``tiles.tiles_per_pass``.
    """
    overlap = tiles.latent_overlap
    per_pixel = UNET_BYTES_PER_LATENT_PIXEL * max(1, batch)
    if tiles.latent_tile is not None:
        tile_h, tile_w = min(tiles.latent_tile, height), min(tiles.latent_tile, width)
    else:
        largest = max(1, budget // per_pixel)  # latent pixels of one forward within the budget
        sizes = {(even_tile(height, n_h, overlap), even_tile(width, n_w, overlap))
                 for n_h in range(1, _max_count(height, overlap) + 1)
                 for n_w in range(1, _max_count(width, overlap) + 1)}
        fitting = [size for size in sizes if max(size) <= MAX_AUTO_TILE and size[0] * size[1] <= largest]
        # nothing fits: the smallest tiles there are, one at a time
        tile_h, tile_w = min(fitting or [min(sizes, key=lambda size: size[0] * size[1])],
                             key=lambda size: _count(height, size[0], overlap) * _count(width, size[1], overlap)
                             * unet_tile_cost(*size))
    counts = (_count(height, tile_h, overlap), _count(width, tile_w, overlap))
    per_pass = max(1, min(tiles.tiles_per_pass, budget // (per_pixel * tile_h * tile_w)))
    return UnetTiling((tile_h, tile_w), overlap, per_pass, counts)


def _count(length: int, tile: int, overlap: int) -> int:
    """How many tiles :func:`osediff.tiling.latent.tile_starts` lays along ``length``."""
    return len(tile_starts(length, tile, overlap))


def _max_count(length: int, overlap: int) -> int:
    """The most tiles worth trying along ``length``: tiles at least twice the overlap (and 4 more
    than it), so that every tile has a core of its own."""
    smallest = max(2 * overlap, overlap + 4)
    if length <= smallest:
        return 1
    return max(1, (length - overlap) // (smallest - overlap))


def vae_recompute_above(budget: int, pixels: int, itemsize: int, max_tile_elements: int = 1 << 23) -> int:
    """The map size in bytes from which the tiled VAE recomputes instead of storing (see
    :func:`osediff.tiling.vae.tiled_encode`), for an image of ``pixels`` pixels.

    Storing costs two maps of the widest size at once (a resnet's input and its inner map, or a
    map and its upsampled copy), so maps up to half of what the budget leaves after the tile
    temporaries and the global attention's keys and values are stored.
    """
    keys_values = 2 * _VAE_ATTENTION_CHANNELS * (pixels // 64) * itemsize
    temporaries = 8 * max_tile_elements * itemsize
    return max(0, (budget - keys_values - temporaries) // 2)


def vae_untiled_bytes(stage: str, pixels: int, itemsize: int) -> int:
    """Peak memory of the untiled VAE ``stage`` ("encoder" or "decoder") for an image of ``pixels``
    pixels with ``itemsize``-byte maps: a few of its 128-256 channel full-resolution maps at once."""
    per_pixel = VAE_BYTES_PER_PIXEL.get((stage, itemsize), VAE_BYTES_PER_PIXEL[stage, 4] * itemsize // 4)
    return per_pixel * pixels


def vae_tile(tiles: TileConfig, stage: str, side: int, pixels: int, itemsize: int,
             device: torch.device) -> int | None:
    """The tile size the VAE ``stage`` runs at on an image whose longer side is ``side`` (image
    pixels for the encoder, latent pixels for the decoder) and which has ``pixels`` image pixels;
    None for the whole image at once.

    An explicit ``tiles.vae_encoder_tile`` / ``vae_decoder_tile`` tiles every image larger than it.
    Unset, the whole image runs when the budget on ``device`` holds :func:`vae_untiled_bytes`
    (faster: the tiled VAE's per-tile copies and statistics passes cost up to 2x on a CPU), else
    tiles of :data:`~osediff.params.AUTO_VAE_ENCODER_TILE` / ``AUTO_VAE_DECODER_TILE``.
    """
    if not tiles.enabled:
        return None
    given = tiles.vae_encoder_tile if stage == "encoder" else tiles.vae_decoder_tile
    if given is not None:
        return given if side > given else None
    auto = AUTO_VAE_ENCODER_TILE if stage == "encoder" else AUTO_VAE_DECODER_TILE
    if side <= auto or vae_untiled_bytes(stage, pixels, itemsize) <= memory_budget(tiles, device.type, device.index):
        return None
    return auto


def available_memory(device_type: str, device_index: int | None = None) -> int:
    """Bytes of memory free for this run's work on a ``device_type`` device, now.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``). Otherwise the host's available
    memory (``MemAvailable``: free plus reclaimable caches), within this process's cgroup limit if
    it has one; ``os.sysconf`` where neither can be read.
    """
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device_index)[0])
    available = _meminfo_available()
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_headroom()
    return min(available, cgroup) if cgroup is not None else available


def recompute_above_for(tiles: TileConfig, store: torch.device, pixels: int, itemsize: int) -> int:
    """:func:`vae_recompute_above` within the budget of ``tiles`` on ``store``, where the maps live."""
    return vae_recompute_above(memory_budget(tiles, store.type, store.index), pixels, itemsize)


def memory_budget(tiles: TileConfig, device_type: str, device_index: int | None = None) -> int:
    """``tiles.memory_budget`` when given, else :data:`AUTO_BUDGET_FRACTION` of :func:`available_memory`."""
    if tiles.memory_budget is not None:
        return tiles.memory_budget
    return int(available_memory(device_type, device_index) * AUTO_BUDGET_FRACTION)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    """cgroup v2 memory.max - memory.current of this process's group, None without a limit."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((folder / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return None
