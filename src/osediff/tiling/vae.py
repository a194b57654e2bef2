"""Tiled VAE encode/decode for images larger than memory allows, equal to the untiled result.

The SD VAE's memory peak is its full-resolution feature maps (128-256 channels at the image
size: several GiB for a 2048x2048 decode). Here every layer runs tile by tile with the model's
own modules (so LoRA-merged weights and unmerged peft adapters work unchanged), as explained in
:mod:`osediff.tiling.layerwise`:

* convolutions see their true neighbours (a 1 px halo per layer, cut from the stored map), so
  no tile-border seams, and no wide fixed halo to recompute;
* every GroupNorm uses the statistics of the whole image (the idea of multidiffusion-upscaler's
  Tiled VAE), gathered from the tile cores while they are written;
* the mid-block self-attention is global by default (exact); ``attention="tile"`` restricts each
  tile's queries to keys within ``overlap`` pixels of it, making the cost linear in image size
  at the price of a small approximation.

* where a map would take ``recompute_above`` bytes or more, resnets recompute their inner map
  instead of storing it and write over their input, and the decoder recomputes the upsampled map
  inside the next resnet: one full-size map alive instead of two or three (peak RSS of a CPU
  512->2048 run: 12.3 GiB storing all, 7.2 GiB recomputing all, UNet weights included), for a
  second pass of the widest convolutions. The pipeline sets the threshold from its memory budget
  (:func:`osediff.tiling.budget.vae_recompute_above`), so only what does not fit is recomputed.

The result matches ``vae.quant_conv(vae.encoder(x))`` / ``vae.decoder(vae.post_quant_conv(z))``
to float rounding. Maps between layers live on ``offload_device`` (default: the VAE's device);
with ``offload_device="cpu"`` on a GPU, GPU memory is bounded by one tile's activations plus
the keys and values of global attention. Measured on an H200 in fp16 (benchmarks/tiled_vae.py,
before the memory-reuse tweaks): a 2048x2048 decode peaked at 9.8 GiB untiled and 0.6 GiB tiled
(tile 64, offload to CPU), but took 16 s instead of 0.6 s, as every layer's maps cross PCIe
through pageable memory; with the maps kept on the GPU (the default) the peak was 33-40 % of
untiled at 1.4-2.7x the time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .groupnorm import ChannelStats
from .layerwise import Grid, TiledRunner

AttentionMode = Literal["global", "tile"]
StatsMode = Literal["image", "tile"]


def _plain_encode(vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    moments = vae.encoder(x)
    return vae.quant_conv(moments) if vae.quant_conv is not None else moments


def _plain_decode(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    return vae.decoder(z)


def _unsupported(vae: nn.Module) -> str | None:
    """Why this VAE's structure cannot be tiled here (None if it can): anything but SD-style blocks."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    encoder, decoder = getattr(vae, "encoder", None), getattr(vae, "decoder", None)
    if not isinstance(encoder, Encoder) or not isinstance(decoder, Decoder):
        return "encoder/decoder are not diffusers' Encoder/Decoder"
    blocks = [*encoder.down_blocks, encoder.mid_block, decoder.mid_block, *decoder.up_blocks]
    for block in blocks:
        for resnet in block.resnets:
            if not isinstance(resnet, ResnetBlock2D) or resnet.upsample is not None \
                    or resnet.downsample is not None or resnet.time_emb_proj is not None \
                    or not isinstance(resnet.norm1, nn.GroupNorm) or not isinstance(resnet.norm2, nn.GroupNorm):
                return f"unsupported resnet {type(resnet).__name__}"
        for attn in getattr(block, "attentions", None) or []:
            if attn is not None and (not isinstance(attn, Attention) or attn.is_cross_attention
                                     or not isinstance(attn.group_norm, nn.GroupNorm)
                                     or attn.spatial_norm is not None or attn.norm_q is not None
                                     or attn.norm_k is not None):
                return "unsupported attention layer"
        for sampler in [*(getattr(block, "downsamplers", None) or []), *(getattr(block, "upsamplers", None) or [])]:
            if isinstance(sampler, Downsample2D) and sampler.norm is None:
                continue
            if isinstance(sampler, Upsample2D) and sampler.norm is None and sampler.interpolate \
                    and not sampler.use_conv_transpose:
                continue
            return f"unsupported resampler {type(sampler).__name__}"
    for block in [*encoder.down_blocks, *decoder.up_blocks]:
        if getattr(block, "attentions", None):
            return "attention inside down/up blocks"
    if not isinstance(encoder.conv_norm_out, nn.GroupNorm) or not isinstance(decoder.conv_norm_out, nn.GroupNorm):
        return "conv_norm_out is not a GroupNorm (spatial norm?)"
    return None


def _resnet(run: TiledRunner, block: nn.Module, x: torch.Tensor,
            stats: ChannelStats | None) -> tuple[torch.Tensor, ChannelStats | None]:
    """diffusers' ResnetBlock2D (no time embedding) as tiled passes, one per GroupNorm.

    The inner map h = conv1(act(norm1(x))) is stored between the passes, unless it would take
    ``run.recompute_above`` bytes or more: then the first pass keeps only h's statistics and the second
    recomputes h tile by tile (halo 2) and writes the block's output over x, held back until the
    neighbours have read x. One full-size map instead of two, for a second conv1.
    """
    # the block's output may take x's memory: x is either read only pointwise (the stored-h path)
    # or, in the recomputing path, overwritten with a lag
    out = x if block.conv_shortcut is None else _leading_channels(x, getattr(block, "out_channels", None))
    h_bytes = x.shape[0] * block.out_channels * x.shape[2] * x.shape[3] * x.element_size()
    if h_bytes < run.recompute_above:
        h, h_stats = run.map(lambda r: _inner(run, block, r, stats), [x])
        return run.map(lambda r, hr: _resnet_out(run, block, r, hr, h_stats), [x, h], out=out)
    h_stats = run.statistics(lambda r: _inner(run, block, r, stats), [x])

    def recomputed(r: torch.Tensor) -> torch.Tensor:
        return _recomputed_out(run, block, r, stats, h_stats)

    if out is None:
        return run.map(recomputed, [x], halo=2)
    return run.overwrite(recomputed, x, halo=2, out=out)


def _inner(run: TiledRunner, block: nn.Module, x: torch.Tensor, stats: ChannelStats | None) -> torch.Tensor:
    """A resnet's inner map conv1(act(norm1(x))) on one tile; overwrites ``x``."""
    return block.conv1(run.norm_act(x, block.norm1, stats, block.nonlinearity))


def _resnet_out(run: TiledRunner, block: nn.Module, x: torch.Tensor, h: torch.Tensor,
                h_stats: ChannelStats | None) -> torch.Tensor:
    """The block's output on one tile: (shortcut(x) + conv2(act(norm2(h)))) / scale; overwrites ``h``."""
    out = block.conv2(block.dropout(run.norm_act(h, block.norm2, h_stats, block.nonlinearity)))
    shortcut = block.conv_shortcut(x) if block.conv_shortcut is not None else x
    return out.add_(shortcut).div_(block.output_scale_factor)  # out is this tile's own


def _recomputed_out(run: TiledRunner, block: nn.Module, x: torch.Tensor, x_stats: ChannelStats | None,
                    h_stats: ChannelStats | None) -> torch.Tensor:
    """:func:`_resnet_out` with the inner map recomputed from ``x`` (not :func:`_inner`: the
    shortcut reads ``x`` again)."""
    h = block.conv1(block.nonlinearity(run.norm(x, block.norm1, x_stats)))
    return _resnet_out(run, block, x, h, h_stats)


def _upsampled_resnet(run: TiledRunner, sampler: nn.Module, block: nn.Module,
                      h: torch.Tensor) -> tuple[torch.Tensor, ChannelStats | None]:
    """``block(sampler(h))`` without storing the upsampled map (4x h's pixels at h's width).

    Each of the block's passes recomputes ``sampler`` on its tile of h: three sampler convolutions
    and two conv1 instead of the widest map of the decoder (256 channels at full resolution).
    """
    # halos in h's pixels: each 3x3 convolution at 2x reaches one more upsampled pixel
    x_stats = run.statistics(sampler, [h], up=2)
    h_stats = run.statistics(lambda r: _inner(run, block, sampler(r), x_stats), [h], up=2)
    return run.map(lambda r: _recomputed_out(run, block, sampler(r), x_stats, h_stats), [h], halo=2, up=2)


def _leading_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor | None:
    """A ``channels``-channel map aliasing the first channels of ``x`` (N=1, dense), if it fits.

    Writing a tile's output core there overwrites only x pixels that no later tile reads, so a
    channel-reducing resnet (256 -> 128 at full resolution in the decoder) needs no third
    full-size map; the memory is reused until the next resolution change.
    """
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if channels is None or channels > x.shape[1] or x.shape[0] != 1 or not dense:
        return None
    return x[:, :channels]


def _mid_block(run: TiledRunner, block: nn.Module, x: torch.Tensor, stats: ChannelStats | None,
               attention: str, margin: int) -> tuple[torch.Tensor, ChannelStats | None]:
    x, stats = _resnet(run, block.resnets[0], x, stats)
    for attn, resnet in zip(block.attentions, block.resnets[1:], strict=True):
        if attn is not None:
            x, stats = run.attention(attn, x, stats, attention, margin)
        x, stats = _resnet(run, resnet, x, stats)
    return x, stats


def _setup(coder: nn.Module, offload_device: torch.device | str | None) -> tuple[torch.device, torch.dtype,
                                                                                  torch.device]:
    """Device and dtype of the encoder or decoder (they may differ, e.g. a bf16 decoder on CPU)."""
    norm = coder.conv_norm_out  # a plain module whatever adapters wrap the convolutions
    device, dtype = norm.weight.device, norm.weight.dtype
    return device, dtype, torch.device(offload_device) if offload_device is not None else device


def _needs_tiles(vae: nn.Module, t: torch.Tensor, tile_size: int, what: str) -> bool:
    """False (with a warning) for a VAE that is not SD-shaped, and for inputs that fit in one tile."""
    reason = _unsupported(vae)
    if reason is not None:
        warnings.warn(f"tiled VAE {what} unavailable ({reason}); running it untiled", stacklevel=3)
        return False
    return t.shape[-2] > tile_size or t.shape[-1] > tile_size


def _check(images: torch.Tensor, tile_size: int, attention: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if attention not in ("global", "tile"):
        raise ValueError(f"unknown attention mode {attention!r}; use 'global' or 'tile'")


@torch.no_grad()
def tiled_encode(vae: nn.Module, x: torch.Tensor, tile_size: int = 1024, overlap: int | None = None,
                 offload_device: torch.device | str | None = None, attention: AttentionMode = "global",
                 group_norm_stats: StatsMode = "image", recompute_above: int = 1 << 30,
                 max_tile_elements: int = 1 << 23) -> torch.Tensor:
    """``vae.quant_conv(vae.encoder(x))`` computed in tiles of at most ``tile_size`` pixels.

    ``x``: (N, 3, H, W) in [-1, 1], H and W multiples of 8. Returns the (N, 2 * latent_channels,
    H / 8, W / 8) moments (mean, logvar) on the VAE's device and dtype. ``overlap`` (pixels, default
    ``tile_size // 4``) is the attention context beyond each tile for ``attention="tile"`` and
    unused otherwise: convolutions always see their exact neighbours. Resnet blocks whose inner
    map would take ``recompute_above`` bytes or more recompute it instead of storing it (see
    :func:`_resnet`): the peak drops by about one full-size map for 15-25 % more VAE compute
    (measured at 1024x1024 with the threshold scaled to match). Wide layers are cut into tiles
    of at most ``max_tile_elements`` pixels x channels (32 MiB in fp32 by default), which bounds
    the per-tile temporaries on top of the stored maps. ``group_norm_stats="tile"`` (naive
    per-tile statistics) exists only for comparison. An input that fits in one tile, or a VAE
    whose structure is not SD-like, takes the plain untiled path.
    """
    _check(x, tile_size, attention)
    device, dtype, store = _setup(vae.encoder, offload_device)
    if not _needs_tiles(vae, x, tile_size, "encode"):
        return _plain_encode(vae, x.to(device, dtype))
    height, width = x.shape[-2:]
    factor = 2 ** sum(block.downsamplers is not None for block in vae.encoder.down_blocks)
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not a multiple of {factor}")
    # cores aligned to the total downsampling so every stride-2 conv starts on an even pixel
    grid = Grid.cover(height, width, tile_size, align=factor)
    margin = max(1, (tile_size // 4 if overlap is None else overlap) // factor)
    run = TiledRunner(grid, device, dtype, store, image_stats=group_norm_stats == "image",
                      recompute_above=recompute_above, max_tile_elements=max_tile_elements, align=factor)
    return _per_sample(x, lambda sample: _encode_one(run, vae, sample, attention, margin), device, dtype)


def _per_sample(batch: torch.Tensor, one: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """``one`` on each sample: samples are independent, and one at a time bounds the stored maps
    (and keeps GroupNorm statistics per image)."""
    result = None
    for i in range(batch.shape[0]):
        h = one(batch[i:i + 1])
        if result is None:
            result = torch.empty((batch.shape[0], *h.shape[1:]), dtype=dtype, device=device)
        result[i:i + 1] = h
        del h
    assert result is not None
    return result


def _encode_one(run: TiledRunner, vae: nn.Module, x: torch.Tensor, attention: str, margin: int) -> torch.Tensor:
    encoder = vae.encoder
    quant = vae.quant_conv if vae.quant_conv is not None else nn.Identity()
    h, stats = run.map(encoder.conv_in, [x])
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            h, stats = _resnet(run, resnet, h, stats)
        for sampler in block.downsamplers or []:
            # halo 2 keeps each tile's start even, so its stride-2 grid is the image's
            h, stats = run.map(sampler, [h], halo=2, down=2)
    h, stats = _mid_block(run, encoder.mid_block, h, stats, attention, margin)
    norm = encoder.conv_norm_out
    h, _ = run.map(lambda r: quant(encoder.conv_out(run.norm_act(r, norm, stats, encoder.conv_act))), [h])
    return h


@torch.no_grad()
def tiled_decode(vae: nn.Module, z: torch.Tensor, tile_size: int = 224, overlap: int | None = None,
                 offload_device: torch.device | str | None = None, attention: AttentionMode = "global",
                 group_norm_stats: StatsMode = "image", recompute_above: int = 1 << 30,
                 max_tile_elements: int = 1 << 23) -> torch.Tensor:
    """``vae.decoder(vae.post_quant_conv(z))`` computed in tiles of at most ``tile_size`` latent pixels.

    ``z``: (N, latent_channels, h, w), unscaled (already divided by the scaling factor). Returns the
    (N, 3, 8h, 8w) image on the VAE's device and dtype. ``overlap`` (latent pixels, default
    ``tile_size // 4``) only matters for ``attention="tile"``; ``recompute_above`` and
    ``max_tile_elements`` bound memory as in :func:`tiled_encode`.
    """
    _check(z, tile_size, attention)
    device, dtype, store = _setup(vae.decoder, offload_device)
    if not _needs_tiles(vae, z, tile_size, "decode"):
        return _plain_decode(vae, z.to(device, dtype))
    height, width = z.shape[-2:]
    grid = Grid.cover(height, width, tile_size)
    margin = max(1, tile_size // 4 if overlap is None else overlap)
    run = TiledRunner(grid, device, dtype, store, image_stats=group_norm_stats == "image",
                      recompute_above=recompute_above, max_tile_elements=max_tile_elements)
    return _per_sample(z, lambda sample: _decode_one(run, vae, sample, attention, margin), device, dtype)


def _decode_one(run: TiledRunner, vae: nn.Module, z: torch.Tensor, attention: str, margin: int) -> torch.Tensor:
    decoder = vae.decoder
    post_quant = vae.post_quant_conv if vae.post_quant_conv is not None else nn.Identity()
    h, stats = run.map(lambda r: decoder.conv_in(post_quant(r)), [z])
    h, stats = _mid_block(run, decoder.mid_block, h, stats, attention, margin)
    pending = None  # an upsampler recomputed inside the next resnet instead of stored
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            if pending is not None:
                h, stats = _upsampled_resnet(run, pending, resnet, h)
                pending = None
            else:
                h, stats = _resnet(run, resnet, h, stats)
        for sampler in block.upsamplers or []:
            if 4 * h.numel() * h.element_size() > run.recompute_above:
                pending = sampler
            else:
                h, stats = run.map(sampler, [h], up=2)
    if pending is not None:
        h, stats = run.map(pending, [h], up=2)
    norm = decoder.conv_norm_out
    h, _ = run.map(lambda r: decoder.conv_out(run.norm_act(r, norm, stats, decoder.conv_act)), [h])
    return h
