"""Layer-by-layer tiled execution of convolutional stacks, with image-wide GroupNorm statistics.

Every layer of the VAE runs over all tiles before the next layer starts. The feature map between
layers is kept whole (on ``store``, e.g. the CPU) as non-overlapping tile *cores*; each tile is
cut out with just the halo its layer needs (one pixel for a 3x3 convolution), moved to the
compute device, processed with the model's own modules, and only its core is written back. So:

* the result is the untiled one up to float rounding: every core pixel sees exactly the
  neighbours it would see in the full image, and zero padding happens only at the image border,
  where the untiled network pads too (a fixed-halo scheme would need a ~115 px halo on the
  SD encoder for that, and still be approximate at the attention layer);
* compute-device memory is bounded by one tile's activations, whatever the image size;
* the stored state is one copy of each live feature map, without halo duplication, written in
  place where the layer allows it: directly when the layer reads its input only pointwise, and
  with a lag when it reads neighbours (a tile's output is held back until no later tile reads
  the input pixels it replaces, about one row of tiles);
* maps are stored channels_last, the layout the convolutions run in, so cutting a tile, writing
  its core back and reducing statistics all read memory in order.

Statistics for the next GroupNorm are collected from each core as it is written, which costs no
extra pass over the map.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..device import release_free_heap
from .groupnorm import ChannelStats, group_norm

Box = tuple[int, int, int, int]  # top, bottom, left, right; bottom and right exclusive

# upper bound on query x key elements per attention call, in case SDPA falls back to its math kernel
_SCORE_BUDGET = 1 << 26


def split_axis(size: int, tile: int, align: int) -> list[tuple[int, int]]:
    """Near-equal spans covering ``[0, size)``, each at most ``tile`` long, bounds multiples of ``align``."""
    if size % align:
        raise ValueError(f"size {size} is not a multiple of {align}")
    tile = max(align, tile // align * align)
    count = -(-size // tile)
    units = size // align
    bounds = [round(i * units / count) * align for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


@dataclass(frozen=True)
class Grid:
    """Non-overlapping tile cores that cover a ``height`` x ``width`` map."""

    height: int
    width: int
    cores: tuple[Box, ...]

    @classmethod
    def cover(cls, height: int, width: int, tile: int, align: int = 1, row_tile: int | None = None) -> Grid:
        rows, cols = split_axis(height, row_tile or tile, align), split_axis(width, tile, align)
        return cls(height, width, tuple((t, b, left, r) for t, b in rows for left, r in cols))

    def refined(self, max_pixels: int, align: int = 1) -> Grid:
        """This grid, or one with smaller cores (bounds multiples of ``align``) of at most
        ``max_pixels`` each: rows of the full tile width where possible, as thin rows also keep
        lagged in-place passes cheap (about one row of outputs is held back)."""
        tile_h = max(b - t for t, b, _, _ in self.cores)
        tile_w = max(r - left for _, _, left, r in self.cores)
        if tile_h * tile_w <= max_pixels:
            return self
        if tile_w * align > max_pixels:
            tile_w = max(align, math.isqrt(max_pixels) // align * align)
        rows = max(align, max_pixels // tile_w // align * align)
        return Grid.cover(self.height, self.width, tile_w, align, row_tile=rows)

    def scaled(self, up: int, down: int) -> Grid:
        def scale(v: int) -> int:
            if (v * up) % down:
                raise ValueError(f"tile bound {v} does not survive a 1/{down} resize; align the tiles")
            return v * up // down

        return Grid(scale(self.height), scale(self.width),
                    tuple((scale(t), scale(b), scale(le), scale(r)) for t, b, le, r in self.cores))

    def resized(self, height: int, width: int) -> Grid:
        """This tiling on a ``height`` x ``width`` map, a scaled copy of the one it covers."""
        if (height, width) == (self.height, self.width):
            return self
        common = math.gcd(height, self.height)
        grid = self.scaled(height // common, self.height // common)
        if grid.width != width:
            raise ValueError(f"a {height}x{width} map is not a {self.height}x{self.width} one rescaled")
        return grid

    def expand(self, box: Box, halo: int) -> Box:
        t, b, left, r = box
        return max(0, t - halo), min(self.height, b + halo), max(0, left - halo), min(self.width, r + halo)


def _cut(src: torch.Tensor, box: Box) -> torch.Tensor:
    return src[:, :, box[0]:box[1], box[2]:box[3]]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _write_unread(out: torch.Tensor, held: list[tuple[Box, torch.Tensor]],
                  pending: Sequence[Box]) -> list[tuple[Box, torch.Tensor]]:
    """Write the held cores that no ``pending`` input region reads any more; return the others."""
    still = []
    for core, piece in held:
        if any(_overlaps(core, region) for region in pending):
            still.append((core, piece))
        else:
            _cut(out, core).copy_(piece)
    return still


class TiledRunner:
    """Runs layers over every tile of a feature map; see the module docstring.

    ``grid`` is the tiling of the input; the tiling of every later map is ``grid`` scaled to that
    map's size, so it depends on nothing but the map. Each pass cuts it further where one tile of
    its input would exceed ``max_tile_elements`` (pixels x channels, counted at the output's size
    for upsampling passes), so the tile temporaries stay bounded at the wide full-resolution
    layers; ``align`` is the downsampling the input still goes through, which every tile bound
    must divide (divided by the downsampling a map has had already).

    Three kinds of pass: :meth:`map` writes a new map (or one read only pointwise),
    :meth:`overwrite` writes over its input with a lag, :meth:`statistics` keeps only the
    output's statistics. ``fn`` gets private copies of its tiles and may overwrite them.
    ``image_stats=False`` normalises each tile with its own statistics instead (the naive tiled
    VAE); it exists only to measure what the image-wide statistics buy. ``recompute_above`` is
    the size in bytes from which callers recompute a map instead of storing it.
    """

    def __init__(self, grid: Grid, device: torch.device, dtype: torch.dtype, store: torch.device,
                 image_stats: bool = True, recompute_above: int = 1 << 30, max_tile_elements: int = 1 << 23,
                 align: int = 1) -> None:
        self.grid = grid
        self.align = align
        self.max_tile_elements = max_tile_elements
        self.device = device
        self.dtype = dtype
        self.store = store
        self.image_stats = image_stats
        self.recompute_above = recompute_above

    def tiles(self, inputs: Sequence[torch.Tensor], up: int = 1) -> Grid:
        """The grid of a pass over ``inputs`` (maps of one size) whose output is ``up`` times larger."""
        height, width = inputs[0].shape[-2:]
        grid = self.grid.resized(height, width)
        align = max(1, self.align // max(1, self.grid.height // height))
        channels = max(src.shape[1] for src in inputs)
        return grid.refined(max(1, self.max_tile_elements // (channels * up * up)), align)

    def norm(self, x: torch.Tensor, module: nn.GroupNorm, stats: ChannelStats | None) -> torch.Tensor:
        return group_norm(x, module, stats if self.image_stats else None)

    def norm_act(self, x: torch.Tensor, module: nn.GroupNorm, stats: ChannelStats | None,
                 act: nn.Module) -> torch.Tensor:
        """``act(norm(x))``, overwriting ``x``: for a tile or temporary of ``fn`` that nothing reads
        afterwards. The norm and SiLU then run in place: two tile-sized buffers fewer at the peak."""
        y = group_norm(x, module, stats if self.image_stats else None, inplace=True)
        return F.silu(y, inplace=True) if type(act) is nn.SiLU else act(y)

    def map(self, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], *, halo: int = 1,
            up: int = 1, down: int = 1, out: torch.Tensor | None = None) -> tuple[torch.Tensor, ChannelStats]:
        """``fn`` over every tile of ``inputs`` (cut with ``halo``): the output map and its statistics.

        ``fn`` must be local: output pixel p depends on input pixels within ``halo`` of p / scale;
        its output is ``up / down`` times the size of its input. The output goes to a new map on
        ``store``, or to ``out``, which may alias ``inputs[0]`` when ``fn`` reads that input only
        pointwise (a neighbour's halo read from it then lands in the halo of the output, which is
        discarded).
        """
        height, width = (side * up // down for side in inputs[0].shape[-2:])
        stats = ChannelStats()
        for core, piece, _ in self._each_tile(fn, inputs, halo, up, down):
            stats.update(piece)
            if out is None:
                out = torch.empty((*piece.shape[:2], height, width), dtype=self.dtype, device=self.store,
                                  memory_format=torch.channels_last)
            _cut(out, core).copy_(piece)
            del piece
        if out is None:
            raise ValueError("the grid has no tiles")
        return out, stats

    def overwrite(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, halo: int = 1,
                  out: torch.Tensor | None = None) -> tuple[torch.Tensor, ChannelStats]:
        """:meth:`map` for an ``fn`` that reads neighbours, written over ``x`` all the same.

        The output, of ``x``'s size, goes to ``out`` (default ``x``; e.g. a view of ``x``'s leading
        channels); each output core is held back until no later tile reads the input there.
        """
        out = x if out is None else out
        if out.shape[-2:] != x.shape[-2:]:
            raise ValueError("an overwriting pass needs an output map of the input's size")
        stats = ChannelStats()
        held: list[tuple[Box, torch.Tensor]] = []
        for core, piece, pending in self._each_tile(fn, [x], halo, 1, 1):
            stats.update(piece)
            held.append((core, piece.to(self.store, copy=True)))
            held = _write_unread(out, held, pending)
            del piece
        return out, stats

    def statistics(self, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], *, halo: int = 1,
                   up: int = 1) -> ChannelStats:
        """Only the statistics of :meth:`map`'s output, for a map recomputed where it is read."""
        stats = ChannelStats()
        for _, piece, _ in self._each_tile(fn, inputs, halo, up, 1):
            stats.update(piece)
            del piece
        return stats

    def _each_tile(self, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], halo: int, up: int,
                   down: int) -> Iterator[tuple[Box, torch.Tensor, Sequence[Box]]]:
        """Per tile: its core in output pixels, ``fn``'s output there, and the input regions that
        later tiles read. The caller drops the output before asking for the next tile."""
        if self.store.type == "cpu":
            release_free_heap()  # the last pass's tile temporaries, before this pass adds a map
        grid = self.tiles(inputs, up)
        regions = [grid.expand(core, halo) for core in grid.cores]
        for index, (core, new_core) in enumerate(zip(grid.cores, grid.scaled(up, down).cores, strict=True)):
            region = regions[index]
            y = fn(*(self._tile(src, region) for src in inputs))
            top, left = (core[0] - region[0]) * up // down, (core[2] - region[2]) * up // down
            piece = y[:, :, top:top + new_core[1] - new_core[0], left:left + new_core[3] - new_core[2]]
            yield new_core, piece, regions[index + 1:]
            del y, piece

    def _tile(self, src: torch.Tensor, region: Box) -> torch.Tensor:
        """A copy of ``src``'s ``region`` on the compute device, channels_last, that ``fn`` may overwrite."""
        return _cut(src, region).to(self.device, self.dtype, memory_format=torch.channels_last, copy=True)

    def attention(self, attn: nn.Module, x: torch.Tensor, stats: ChannelStats | None, mode: str,
                  margin: int) -> tuple[torch.Tensor, ChannelStats]:
        """diffusers' self-``Attention`` (with its group norm) over the map ``x``.

        ``mode="global"``: every query attends to every pixel of the image, which is exactly the
        untiled layer; keys and values of the whole map are held on the compute device (2 x
        pixels x channels at 1/8 scale, e.g. 64 MiB in fp16 for a 2048x2048 image) and the cost
        is quadratic in the pixel count, as untiled. ``mode="tile"``: each tile's queries attend
        only to keys within ``margin`` pixels of its core (the multidiffusion approximation:
        linear cost, visible only as slight global-context differences).
        """
        batch, channels = x.shape[:2]
        heads = attn.heads
        head_dim = channels // heads

        def tokens(region: torch.Tensor) -> torch.Tensor:
            return self.norm(region, attn.group_norm, stats).flatten(2).transpose(1, 2)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, heads, head_dim).transpose(1, 2)

        def keys_values(boxes: Sequence[Box]) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = [], []
            for box in boxes:
                t = tokens(_cut(x, box).to(self.device, self.dtype))
                keys.append(attn.to_k(t))
                values.append(attn.to_v(t))
                del t
            return split_heads(torch.cat(keys, 1)), split_heads(torch.cat(values, 1))

        grid = self.tiles([x])
        if mode == "global":
            key, value = keys_values(grid.cores)
            out = x  # safe in place: keys and values are fixed before any core is overwritten
        elif mode == "tile":
            out = torch.empty_like(x)  # neighbours' keys are read from x after a core is written
        else:
            raise ValueError(f"unknown attention mode {mode!r}; use 'global' or 'tile'")
        new_stats = ChannelStats()
        for core in grid.cores:
            if mode == "tile":
                key, value = keys_values([grid.expand(core, margin)])
            residual = _cut(x, core).to(self.device, self.dtype)
            queries = tokens(residual)
            chunk = max(256, _SCORE_BUDGET // key.shape[2])
            outs = []
            for start in range(0, queries.shape[1], chunk):
                q = split_heads(attn.to_q(queries[:, start:start + chunk]))
                o = F.scaled_dot_product_attention(q, key, value, scale=attn.scale)
                o = o.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(q.dtype)
                outs.append(attn.to_out[1](attn.to_out[0](o)))
                del q, o
            y = torch.cat(outs, 1).transpose(1, 2).reshape(residual.shape)
            del outs, queries
            if attn.residual_connection:
                y = y + residual
            y = y / attn.rescale_output_factor
            _cut(out, core).copy_(y)
            new_stats.update(y)
            del y, residual
        return out, new_stats
