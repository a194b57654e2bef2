"""The memory budget -> tiles choice (osediff.tiling.budget), and its use by the pipeline."""

from __future__ import annotations

import itertools

import pytest
import torch

from osediff.cli.flags import flag_for
from osediff.params import ParamError, TileConfig, parse_memory_size
from osediff.pipeline import OSEDiffPipeline
from osediff.tiling import budget as budget_module
from osediff.tiling.budget import (
    GIB,
    MAX_AUTO_TILE,
    UNET_BYTES_PER_LATENT_PIXEL,
    VAE_BYTES_PER_PIXEL,
    even_tile,
    memory_budget,
    unet_tiling,
    vae_recompute_above,
    vae_tile,
    vae_untiled_bytes,
)
from osediff.tiling.latent import tile_starts, tiled_apply

BIG = 64 * GIB


def test_explicit_latent_tile_keeps_todays_layout():
    plan = unet_tiling(TileConfig(latent_tile=96, latent_overlap=32), 256, 256, BIG)
    assert (plan.tile, plan.overlap, plan.counts, plan.per_pass) == ((96, 96), 32, (4, 4), 4)
    assert tile_starts(256, 96, 32) == [0, 64, 128, 160]  # 4 x 4 tiles of 96: 2.25x the latent
    assert unet_tiling(TileConfig(latent_tile=96), 64, 80, BIG).counts == (1, 1)


@pytest.mark.parametrize(("side", "counts", "tile"), [
    (64, (1, 1), 64),      # 512 px output: one forward, as before
    (128, (1, 1), 128),    # 1024: one forward of 128 beats 2 x 2 tiles of 80 (was 2 x 2 of 96)
    (256, (2, 2), 144),    # 2048: 4 tiles of 144 cover 1.27x the latent (was 16 of 96, 2.25x)
    (512, (5, 5), 128),    # 4096: 4 per side would be 152 wide, past the cap
])
def test_automatic_tiles_are_the_fewest_even_ones_under_the_cap(side, counts, tile):
    plan = unet_tiling(TileConfig(), side, side, BIG)
    assert plan.counts == counts and plan.tile == (tile, tile) and plan.overlap == 32
    assert max(plan.tile) <= MAX_AUTO_TILE


def test_every_automatic_layout_covers_the_latent_with_at_least_the_overlap():
    for length in [*range(1, 200, 7), 256, 300, 513]:
        for overlap in (0, 8, 32):
            for count in range(1, 6):
                tile = even_tile(length, count, overlap)
                if count > 1 and tile <= overlap:
                    continue
                starts = tile_starts(length, tile, overlap)
                assert len(starts) <= count
                assert starts[0] == 0 and starts[-1] + min(tile, length) == length
                assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_the_budget_bounds_the_tile_and_the_tiles_per_pass():
    tiles = TileConfig()
    one_96 = UNET_BYTES_PER_LATENT_PIXEL * 96 * 96
    plan = unet_tiling(tiles, 256, 256, one_96)  # 144 and 107 do not fit; 4 x 4 of 88 do
    assert plan.counts == (4, 4) and plan.tile == (88, 88) and plan.per_pass == 1
    assert unet_tiling(TileConfig(latent_tile=96), 256, 256, 3 * one_96).per_pass == 3
    # guidance runs two prompts per tile: the same budget holds half the tile
    assert unet_tiling(tiles, 256, 256, 2 * one_96, batch=2) == plan
    # nothing fits: the smallest tiles, one at a time
    tiny = unet_tiling(tiles, 256, 256, 1)
    assert tiny.per_pass == 1 and max(tiny.tile) == min(max(unet_tiling(tiles, 256, 256, b).tile)
                                                        for b in (1, one_96, BIG))
    assert unet_tiling(TileConfig(tiles_per_pass=2), 256, 256, BIG).per_pass == 2


def test_non_square_latents_get_their_own_counts_per_axis():
    plan = unet_tiling(TileConfig(), 256, 128, BIG)
    assert plan.counts == (2, 1) and plan.tile == (144, 128)


def test_vae_recomputes_only_what_the_budget_cannot_hold():
    px = 2048 * 2048
    full_map = 128 * px * 4  # one fp32 full-resolution map of the encoder: 2 GiB
    assert vae_recompute_above(5 * GIB, px, 4) > full_map  # stored: two maps fit
    assert vae_recompute_above(4 * GIB, px, 4) <= full_map  # recomputed
    assert vae_recompute_above(1, px, 4) == 0
    assert vae_recompute_above(3 * GIB, px, 2) > vae_recompute_above(3 * GIB, px, 4)


def test_memory_budget_is_the_given_one_or_three_quarters_of_what_is_available(monkeypatch):
    assert memory_budget(TileConfig(memory_budget=123), "cpu") == 123
    monkeypatch.setattr(budget_module, "available_memory", lambda device_type, index=None: 8 * GIB)
    assert memory_budget(TileConfig(), "cpu") == 6 * GIB
    monkeypatch.undo()
    assert 0 < budget_module.available_memory("cpu") < 1 << 50


def test_memory_budget_option_checks_and_flag():
    assert parse_memory_size("6G") == parse_memory_size("6") == parse_memory_size("6GiB") == 6 * GIB
    assert parse_memory_size("512M") == 512 << 20 and parse_memory_size("auto") is None
    for bad in ("lots", "-1G", "0", "nanG"):
        with pytest.raises(ParamError, match=r"^tiles\.memory_budget must be 'auto' or a size"):
            parse_memory_size(bad)
    with pytest.raises(ParamError, match=r"^tiles\.memory_budget must be an integer >= 1"):
        TileConfig(memory_budget=0)
    for overlap in (-1, 72):
        with pytest.raises(ParamError, match=r"^tiles\.latent_overlap must be 0\.\.71 \(below half the largest"):
            TileConfig(latent_overlap=overlap)
    assert flag_for("tiles.memory_budget") == "--memory-budget"


def test_rectangular_tiles_blend_to_the_untiled_result_of_a_pointwise_fn():
    z = torch.randn(2, 4, 40, 30)
    calls = []

    def fn(t):
        calls.append(tuple(t.shape))
        return t * 3 - 1

    out = tiled_apply(fn, z, (24, 30), 8, batch_size=1)
    assert calls == [(2, 4, 24, 30)] * 2 and torch.allclose(out, z * 3 - 1, atol=1e-5)


def test_pipeline_tiles_and_recomputes_from_its_budget(fresh_components, tiny_weights, monkeypatch):
    """The UNet gets the planned tiles; a 1-byte budget makes the tiled VAE recompute every map,
    which changes nothing but the time: the output equals the untiled VAE's to float rounding."""
    import osediff.tiling.vae as tiled_vae

    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    shapes = []
    fresh_components.unet.register_forward_hook(lambda _m, args, _o: shapes.append(tuple(args[0].shape)))
    thresholds = []
    for name in ("tiled_encode", "tiled_decode"):
        real = getattr(tiled_vae, name)
        monkeypatch.setattr(tiled_vae, name, lambda *a, _real=real, **k: thresholds.append(k["recompute_above"])
                            or _real(*a, **k))
    image = torch.rand(3, 24, 16, generator=torch.Generator().manual_seed(5))  # latent 12 x 8 at x4
    plain = TileConfig(enabled=False)
    untiled = pipe.run(image, 4, "", tiles=plain, output_type="pt").image
    # a latent overlap of 2 lets the tiny latent be tiled: the budget holds one 4 x 8 tile at a time
    budget = UNET_BYTES_PER_LATENT_PIXEL * 8 * 8
    starved = TileConfig(latent_overlap=2, vae_encoder_tile=32, vae_decoder_tile=4, memory_budget=budget)
    plan = unet_tiling(starved, 12, 8, budget)
    assert plan.tiled and plan.per_pass == 1
    shapes.clear()
    vae_only = pipe.run(image, 4, "", tiles=TileConfig(latent_tile=96, vae_encoder_tile=32, vae_decoder_tile=4,
                                                       memory_budget=1), output_type="pt").image
    assert thresholds == [0, 0] and shapes == [(1, 4, 12, 8)]
    assert (vae_only - untiled).abs().max().item() < 1e-4
    shapes.clear()
    pipe.run(image, 4, "", tiles=starved, output_type="pt")
    assert shapes == [(1, 4, *plan.tile)] * (plan.counts[0] * plan.counts[1])


CPU = torch.device("cpu")


@pytest.mark.parametrize(("stage", "side", "pixels", "auto"), [
    ("encoder", 2048, 2048 * 2048, 1024),   # image pixels
    ("decoder", 256, 2048 * 2048, 224),     # latent pixels
])
def test_vae_runs_whole_where_the_budget_holds_it(stage, side, pixels, auto):
    needed = vae_untiled_bytes(stage, pixels, 4)
    assert needed == VAE_BYTES_PER_PIXEL[stage, 4] * pixels
    assert vae_tile(TileConfig(memory_budget=needed), stage, side, pixels, 4, CPU) is None
    assert vae_tile(TileConfig(memory_budget=needed - 1), stage, side, pixels, 4, CPU) == auto
    # bf16 maps need less: the same budget that tiles fp32 holds the bf16 stage whole
    assert vae_untiled_bytes(stage, pixels, 2) < needed
    assert vae_tile(TileConfig(memory_budget=needed - 1), stage, side, pixels, 2, CPU) is None
    # no larger than one automatic tile: whole, whatever the budget; tiling off: whole
    assert vae_tile(TileConfig(memory_budget=1), stage, auto, auto * auto, 4, CPU) is None
    assert vae_tile(TileConfig(enabled=False, memory_budget=1), stage, side, pixels, 4, CPU) is None


def test_explicit_vae_tiles_tile_every_larger_image():
    tiles = TileConfig(vae_encoder_tile=512, vae_decoder_tile=32, memory_budget=BIG)
    assert vae_tile(tiles, "encoder", 520, 520 * 520, 4, CPU) == 512
    assert vae_tile(tiles, "encoder", 512, 512 * 512, 4, CPU) is None
    assert vae_tile(tiles, "decoder", 33, 33 * 33 * 64, 2, CPU) == 32
    with pytest.raises(ParamError) as error:
        TileConfig(vae_decoder_tile=0)
    assert error.value.argument == "tiles.vae_decoder_tile"


def test_pipeline_tiles_the_vae_only_past_its_budget(fresh_components, tiny_weights, monkeypatch):
    """With the automatic tile sizes made tiny-model sized, a budget that holds the image runs the
    VAE whole and one that does not runs it tiled, to the same image (float rounding)."""
    import osediff.tiling.vae as tiled_vae

    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    monkeypatch.setattr(budget_module, "AUTO_VAE_ENCODER_TILE", 32)
    monkeypatch.setattr(budget_module, "AUTO_VAE_DECODER_TILE", 4)
    tiled = []
    for name in ("tiled_encode", "tiled_decode"):
        real = getattr(tiled_vae, name)
        monkeypatch.setattr(tiled_vae, name, lambda *a, _real=real, _name=name, **k:
                            tiled.append((_name, k["tile_size"])) or _real(*a, **k))
    image = torch.rand(3, 24, 16, generator=torch.Generator().manual_seed(6))  # 96 x 64 at x4
    roomy = pipe.run(image, 4, "", tiles=TileConfig(latent_tile=96, memory_budget=BIG), output_type="pt").image
    assert tiled == []
    below_every_stage = 96 * 64 * min(VAE_BYTES_PER_PIXEL.values()) - 1
    tight = pipe.run(image, 4, "", tiles=TileConfig(latent_tile=96, memory_budget=below_every_stage),
                     output_type="pt").image
    assert tiled == [("tiled_encode", 32), ("tiled_decode", 4)]
    assert (tight - roomy).abs().max().item() < 1e-4
