"""Fidelity against realism at inference: ``strength`` (latent blend) and ``guidance`` (prompt vs negative)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.params import ParamError, TileConfig, UpscaleParams
from osediff.pipeline import OSEDiffPipeline, bicubic_upscale


def photo(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)).resize(
        (width, height), Image.BILINEAR)


@pytest.fixture
def pipe(fresh_components, tiny_weights) -> OSEDiffPipeline:
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    return pipe


def unet_batches(pipe: OSEDiffPipeline) -> list[int]:
    calls: list[int] = []
    pipe.unet.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    return calls


def run(pipe, image, **options) -> torch.Tensor:
    return pipe.run(image, 2, "a sharp photo", align="none", output_type="pt", **options).image


def test_strength_one_and_guidance_one_are_the_plain_output_in_one_unet_pass(pipe):
    image = photo()
    calls = unet_batches(pipe)
    plain = run(pipe, image)
    explicit = run(pipe, image, strength=1.0, guidance=1.0, negative_prompt="ignored at 1")
    assert torch.equal(plain, explicit) and calls == [1, 1]


def test_strength_zero_decodes_the_encoded_input_and_detail_grows_with_strength(pipe):
    image = photo(seed=3)
    x_l = torch.from_numpy(np.asarray(bicubic_upscale(image, 2), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    tiles = TileConfig()
    with torch.no_grad():
        expected = (pipe.decode_latent(pipe.encode_latent(x_l * 2 - 1, tiles), tiles)[0] + 1) / 2
    faithful = run(pipe, image, strength=0.0)
    assert torch.allclose(faithful, expected, atol=1e-6)
    # the distance to the input as the VAE reconstructs it (a random VAE reconstructs nothing, so the
    # bicubic image itself is no reference here) falls as S falls; in latent space it is S |z_H - z_L|
    distances = [(run(pipe, image, strength=s) - faithful).abs().mean().item() for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    print("mean |x_S - x_0| at S = 0, 0.25, 0.5, 0.75, 1:", [f"{d:.4f}" for d in distances])
    assert distances[0] == 0 and all(a < b for a, b in itertools.pairwise(distances)), distances
    latents: list[torch.Tensor] = []
    decode = pipe.decode_latent
    pipe.decode_latent = lambda z, tiles: latents.append(z) or decode(z, tiles)
    for strength in (0.0, 0.5, 1.0):
        run(pipe, image, strength=strength)
    z_l, z_half, z_h = latents
    assert torch.allclose(z_half, z_l + 0.5 * (z_h - z_l), atol=1e-5)


def test_guidance_runs_prompt_and_negative_as_one_batch_of_two(pipe):
    image = photo(seed=5)
    calls = unet_batches(pipe)
    guided = run(pipe, image, guidance=3.0, negative_prompt="blurry")
    assert calls == [2]  # one UNet call: the negative and the positive prompt together
    assert (guided - run(pipe, image)).abs().max() > 1e-3
    # W = 0 is the negative prompt alone
    only_negative = run(pipe, image, guidance=0.0, negative_prompt="blurry")
    alone = pipe.run(image, 2, "blurry", align="none", output_type="pt").image
    assert (only_negative - alone).abs().max() < 1e-4  # a batch of two may round differently in the last bits


def test_every_tile_gets_the_same_guidance(pipe):
    image = photo(40, 24, seed=7)  # latent 6x10 at x2: two tiles of 6x8
    tiles = TileConfig(latent_tile=8, latent_overlap=4, tiles_per_pass=2)
    shapes: list[tuple] = []
    pipe.unet.register_forward_hook(lambda _m, args, kwargs, _o: shapes.append(
        (tuple(args[0].shape), tuple(kwargs["encoder_hidden_states"].shape[:1]))), with_kwargs=True)
    guided = pipe.run(image, 2, "a sharp photo", tiles=tiles, guidance=2.0, negative_prompt="blurry",
                      output_type="pt").image
    assert shapes == [((4, 4, 6, 8), (4,))]  # 2 tiles x (negative, positive) in one pass
    assert guided.shape == (3, 48, 80)


def test_the_controls_are_checked_where_they_are_given(pipe):
    for change, message in [({"strength": 1.5}, "strength must be a number from 0 to 1, got 1.5"),
                            ({"strength": float("nan")}, "strength must be a number from 0 to 1"),
                            ({"guidance": -1}, "guidance must be a number from 0 to 20, got -1"),
                            ({"negative_prompt": 3}, "negative_prompt must be text, got int")]:
        with pytest.raises(ParamError, match=message):
            UpscaleParams(**change)
    key = UpscaleParams().model_key
    assert UpscaleParams(negative_prompt="x").model_key == key  # ignored at W = 1: same model call
    assert UpscaleParams(guidance=2, negative_prompt="x").model_key != UpscaleParams(guidance=2).model_key


def test_the_command_line_takes_the_controls(tiny_base_dir, tiny_pkl, tmp_path, capsys, single_thread):
    from osediff.cli import main

    photo().save(tmp_path / "a.png")
    common = ["upscale", str(tmp_path / "a.png"), "-s", "2", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
              "--offline", "--prompt-extractor", "text", "--prompt", "a sharp photo", "--align", "none"]
    assert main([*common, "-o", str(tmp_path / "bad"), "--strength", "1.5"]) == 2
    assert capsys.readouterr().err == "error: --strength must be a number from 0 to 1, got 1.5\n"
    assert main([*common, "-o", str(tmp_path / "out"), "--strength", "0.5", "--guidance", "2",
                 "--negative-prompt", "blurry"]) == 0
    pipe = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu")
    expected = pipe(photo(), upscale=2, prompt="a sharp photo", align="none", strength=0.5, guidance=2.0,
                    negative_prompt="blurry")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), np.asarray(expected))
