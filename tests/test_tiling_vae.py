"""Tiled VAE: equal to the untiled VAE, and the image-wide GroupNorm statistics are what make it so."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from osediff.lora import VAE_ADAPTER, attach_lora_adapters
from osediff.testing import random_weights
from osediff.tiling.groupnorm import ChannelStats, group_norm
from osediff.tiling.layerwise import Grid, TiledRunner, split_axis
from osediff.tiling.memory import decoded_pixels, tiled_vae_map_bytes, vae_map_store
from osediff.tiling.vae import tiled_decode, tiled_encode


def plain_encode(vae, x):
    return vae.quant_conv(vae.encoder(x))


def plain_decode(vae, z):
    return vae.decoder(vae.post_quant_conv(z))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run hundreds of tiny convolutions; on a shared, busy CPU a second OpenMP thread
    turns each into a ~20 ms barrier wait (measured: 6.5 s vs 0.24 s for one tiled encode)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae(tiny_components):
    return tiny_components.vae  # read-only here


@pytest.fixture(scope="module")
def vae32():
    """SD's 32-group GroupNorm and two resnets per block, at a size that still runs in a second."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    model = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                          block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=32,
                          latent_channels=4)
    return model.eval().requires_grad_(False)


def image(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth content plus noise: tiles then really differ in their statistics, as in photos."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 3, 4, generator=gen), size=(h, w), mode="bilinear")
    return (coarse * 1.6 - 0.8 + 0.2 * torch.randn(n, 3, h, w, generator=gen)).clamp(-1, 1)


def latent(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(n, 4, 2, 3, generator=gen) * 2, size=(h, w), mode="bilinear")
    return coarse + torch.randn(n, 4, h, w, generator=gen)


def test_refined_grid_is_aligned_bounded_and_covers_the_map():
    grid = Grid.cover(64, 96, 64, align=8)
    fine = grid.refined(max_pixels=600, align=8)
    assert all((b - t) * (r - left) <= 600 for t, b, left, r in fine.cores)
    assert all(v % 8 == 0 for core in fine.cores for v in core)
    covered = torch.zeros(64, 96, dtype=torch.int32)
    for t, b, left, r in fine.cores:
        covered[t:b, left:r] += 1
    assert torch.equal(covered, torch.ones_like(covered)) and grid.refined(10**6, 8) is grid


def test_split_axis_covers_aligned_and_bounded():
    for size, tile, align in [(136, 32, 8), (96, 48, 8), (20, 8, 1), (7, 3, 1), (64, 1000, 8), (40, 5, 8)]:
        spans = split_axis(size, tile, align)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert all(s % align == 0 and e > s and e - s <= max(tile // align * align, align) for s, e in spans)
    assert split_axis(20, 8, 1) == [(0, 7), (7, 13), (13, 20)]  # balanced, not 8 + 8 + 4
    grid = Grid.cover(20, 28, 8).scaled(8, 1)
    assert (grid.height, grid.width) == (160, 224) and len(grid.cores) == 12


def test_channel_stats_merge_matches_whole_map_and_group_norm():
    gen = torch.Generator().manual_seed(0)
    x = 50 + torch.randn(2, 8, 12, 10, generator=gen)  # large mean: sum/sum-of-squares would lose digits
    stats = ChannelStats()
    for box in Grid.cover(12, 10, 5).cores:
        stats.update(x[:, :, box[0]:box[1], box[2]:box[3]])
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    assert torch.allclose(stats.mean, mean, atol=1e-5) and torch.allclose(stats.m2 / 120, var, atol=1e-4)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight, generator=gen)
    torch.nn.init.normal_(norm.bias, generator=gen)
    with torch.no_grad():
        assert max_diff(group_norm(x, norm, stats), norm(x)) < 1e-4


@pytest.mark.parametrize("model", ["vae", "vae32"])
def test_tiled_encode_equals_untiled_and_global_stats_matter(model, request):
    vae = request.getfixturevalue(model)
    x = image(2, 64, 104)  # N=2, non-square, not a multiple of the tile: 2 x 4 tiles of <= 32 px
    with torch.no_grad():
        ref = plain_encode(vae, x)
    before = x.clone()
    tiled = tiled_encode(vae, x, tile_size=32)
    assert torch.equal(x, before)  # in-place work stays inside private tile copies
    naive = tiled_encode(vae, x, tile_size=32, group_norm_stats="tile")
    err, naive_err = max_diff(tiled, ref), max_diff(naive, ref)
    print(f"\n{model} encode: tiled vs untiled {err:.2e}, per-tile GroupNorm stats {naive_err:.2e}, "
          f"|moments| max {ref.abs().max().item():.2f}")
    assert tiled.shape == ref.shape == (2, 8, 8, 13)
    assert err < 1e-4
    assert naive_err > 1e-2 and naive_err > 100 * err


@pytest.mark.parametrize("model", ["vae", "vae32"])
def test_tiled_decode_equals_untiled_and_global_stats_matter(model, request):
    vae = request.getfixturevalue(model)
    z = latent(2, 12, 20)
    with torch.no_grad():
        ref = plain_decode(vae, z)
    before = z.clone()
    tiled = tiled_decode(vae, z, tile_size=7)  # 2 x 3 tiles
    assert torch.equal(z, before)
    naive = tiled_decode(vae, z, tile_size=7, group_norm_stats="tile")
    err, naive_err = max_diff(tiled, ref), max_diff(naive, ref)
    print(f"\n{model} decode: tiled vs untiled {err:.2e}, per-tile GroupNorm stats {naive_err:.2e}, "
          f"|image| max {ref.abs().max().item():.2f}")
    assert tiled.shape == ref.shape == (2, 3, 96, 160)
    assert err < 1e-4
    assert naive_err > 1e-2 and naive_err > 100 * err


@pytest.mark.parametrize("model", ["vae", "vae32"])
def test_recomputing_resnets_and_smaller_tiles_change_nothing(model, request):
    """recompute_above=0: every resnet keeps one full-size map (lagged in-place writes, channel-
    increasing and channel-reducing shortcuts included); max_tile_elements re-cuts each wide pass
    into rows aligned to the downsampling still to come. The result is still the untiled one."""
    vae = request.getfixturevalue(model)
    x, z = image(1, 64, 104, seed=3), latent(1, 12, 20, seed=3)
    with torch.no_grad():
        ref_x, ref_z = plain_encode(vae, x), plain_decode(vae, z)
    # tiles of at most 1024 elements also cut the wide layers into thin rows (several per core)
    enc = tiled_encode(vae, x, tile_size=32, recompute_above=0, max_tile_elements=1024)
    dec = tiled_decode(vae, z, tile_size=7, recompute_above=0, max_tile_elements=1024)
    print(f"\n{model} recomputing resnets: encode {max_diff(enc, ref_x):.2e}, decode {max_diff(dec, ref_z):.2e}")
    assert max_diff(enc, ref_x) < 1e-4 and max_diff(dec, ref_z) < 1e-4


def test_lagged_in_place_pass_reads_every_neighbour_before_overwriting_it():
    x = torch.randn(1, 3, 37, 29).contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(3, 3, 5, 5)
    expected = F.conv2d(x, kernel, padding=2)
    run = TiledRunner(Grid.cover(37, 29, 8, row_tile=5), torch.device("cpu"), torch.float32, torch.device("cpu"))
    out, stats = run.overwrite(lambda r: F.conv2d(r, kernel, padding=2), x, halo=2)
    assert out is x and torch.allclose(x, expected, atol=1e-5)
    assert torch.allclose(stats.mean, expected.mean(dim=(2, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="input's size"):
        run.overwrite(lambda r: r, x, out=torch.empty(1, 3, 10, 10))


def test_each_pass_tiles_a_map_by_its_size_alone():
    """The runner keeps no grid between passes: a map at half or twice the input's size gets the
    input's tiling scaled to it, aligned to the downsampling still to come."""
    cpu = torch.device("cpu")
    grid = Grid.cover(64, 96, 32, align=8)
    run = TiledRunner(grid, cpu, torch.float32, cpu, align=8)
    assert run.tiles([torch.zeros(1, 4, 64, 96)]) is grid
    assert run.tiles([torch.zeros(1, 4, 32, 48)]) == grid.scaled(1, 2)
    assert run.tiles([torch.zeros(1, 4, 128, 192)]) == grid.scaled(2, 1)
    with pytest.raises(ValueError, match="rescaled"):
        run.tiles([torch.zeros(1, 4, 32, 40)])
    # 4-channel tiles of at most 48 pixels at half size: bounds multiples of 4 (8 / 2), not all of 8
    narrow = TiledRunner(grid, cpu, torch.float32, cpu, align=8, max_tile_elements=4 * 48)
    bounds = [v for core in narrow.tiles([torch.zeros(1, 4, 32, 48)]).cores for v in core]
    assert all(v % 4 == 0 for v in bounds) and any(v % 8 for v in bounds)
    x = torch.randn(1, 4, 32, 48)
    first, _ = run.map(lambda r: r * 2, [x])
    second, _ = run.map(lambda r: r * 2, [x])  # the same tiling again: nothing carried over
    assert torch.equal(first, x * 2) and torch.equal(second, first)


def test_per_tile_attention_is_an_approximation_that_becomes_exact_with_full_context(vae):
    z = latent(1, 12, 20, seed=3)
    with torch.no_grad():
        ref = plain_decode(vae, z)
    narrow = max_diff(tiled_decode(vae, z, tile_size=7, attention="tile", overlap=1), ref)
    full = max_diff(tiled_decode(vae, z, tile_size=7, attention="tile", overlap=20), ref)
    print(f"\nper-tile attention: context 1 px {narrow:.2e}, context covering the image {full:.2e}")
    assert full < 1e-4 < narrow


def test_small_input_takes_the_plain_path_bit_for_bit(vae):
    x = image(1, 32, 24)
    with torch.no_grad():
        assert torch.equal(tiled_encode(vae, x, tile_size=32), plain_encode(vae, x))
        z = latent(1, 6, 5)
        assert torch.equal(tiled_decode(vae, z, tile_size=6), plain_decode(vae, z))


def test_bf16_on_cpu(vae):
    vae16 = copy.deepcopy(vae).to(torch.bfloat16)
    x, z = image(1, 48, 80, seed=5), latent(1, 10, 14, seed=5)
    with torch.no_grad():
        ref_x, ref_z = plain_encode(vae, x), plain_decode(vae, z)  # fp32 truth
        plain_x = plain_encode(vae16, x.bfloat16())
        plain_z = plain_decode(vae16, z.bfloat16())
    tiled_x = tiled_encode(vae16, x, tile_size=24)  # fp32 input is cast to the model's dtype
    tiled_z = tiled_decode(vae16, z.bfloat16(), tile_size=5)
    assert tiled_x.dtype == tiled_z.dtype == torch.bfloat16
    errs = {name: (max_diff(t, p), max_diff(p, r), max_diff(t, r)) for name, t, p, r in
            [("encode", tiled_x, plain_x, ref_x), ("decode", tiled_z, plain_z, ref_z)]}
    for name, (tiled_plain, plain_fp32, tiled_fp32) in errs.items():
        print(f"\nbf16 {name}: tiled vs untiled bf16 {tiled_plain:.2e}; vs fp32: untiled {plain_fp32:.2e}, "
              f"tiled {tiled_fp32:.2e}")
        # tiling adds no more error than bf16 itself already has (measured: 4e-3 encode, 6e-2 decode
        # on an image of range +-2, while untiled bf16 is 1e-2 and 6e-2 away from fp32)
        assert tiled_plain < 0.2 and tiled_fp32 < 2 * plain_fp32 + 0.02


def test_unmerged_peft_lora_adapters_are_used(tiny_components):
    components = copy.deepcopy(tiny_components)
    weights = random_weights(components, rank_vae=4, lora_std=0.2)
    x = image(1, 48, 64, seed=7)
    with torch.no_grad():
        before = plain_encode(components.vae, x)
    vae = attach_lora_adapters(components.vae, {VAE_ADAPTER: weights.vae_targets}, weights.vae_state,
                               weights.rank_vae)
    with torch.no_grad():
        ref = plain_encode(vae, x)
    tiled = tiled_encode(vae, x, tile_size=24, offload_device="cpu")
    print(f"\nLoRA encode: adapters change the moments by {max_diff(ref, before):.2e}, "
          f"tiled vs untiled {max_diff(tiled, ref):.2e}")
    assert max_diff(ref, before) > 1e-2 and max_diff(tiled, ref) < 1e-4


def test_rejects_bad_input(vae):
    with pytest.raises(ValueError, match="multiple of 8"):
        tiled_encode(vae, torch.zeros(1, 3, 60, 64), tile_size=32)
    with pytest.raises(ValueError, match="attention"):
        tiled_decode(vae, torch.zeros(1, 4, 16, 16), tile_size=8, attention="none")  # type: ignore[arg-type]


def test_map_memory_estimate_decides_where_the_maps_live(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert decoded_pixels(torch.zeros(1, 4, 256, 128)) == 2048 * 1024
    # 2048x2048 in fp16: 384 full-resolution channels x 4 Mpx x 2 B
    assert tiled_vae_map_bytes(2048 * 2048, torch.float16) == 3 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12 * 2**30 + 4, 80 * 2**30))
    assert vae_map_store("auto", cuda, 2048 * 2048, torch.float16) == cuda  # not over a quarter of it
    assert vae_map_store("auto", cuda, 2048 * 2048, torch.float32) == cpu
    assert vae_map_store("auto", cpu, 8192 * 8192, torch.float32) == cpu
    with pytest.raises(ValueError, match="vae_maps"):
        vae_map_store("disk", cuda, 64, torch.float16)  # type: ignore[arg-type]
