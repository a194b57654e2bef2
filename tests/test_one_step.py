"""The one per-image step: no state leaks between calls, and every local front end gives the same bytes.

(The Ray engine joins the same comparison in test_ray_batch.py, where a Ray instance is running.)
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.batch import BatchConfig, ModelOptions, run
from osediff.images import LoadedImage, load_image
from osediff.outputs import encode_image
from osediff.params import TileConfig, UpscaleParams
from osediff.pipeline import OSEDiffPipeline, Upscaler
from osediff.prompts.offered import PromptExtractors


def photo(width: int, height: int, seed: int = 0, alpha: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 4 if alpha else 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA" if alpha else "RGB").resize((width, height), Image.BILINEAR)


def png(image: Image.Image) -> bytes:
    return encode_image(image, "png", 95)


@pytest.fixture
def pipe(fresh_components, tiny_weights, single_thread) -> OSEDiffPipeline:
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    return pipe


def tagger(images, user_prompt=""):
    """A model-free extractor whose prompt depends on what it sees."""
    return [f"mean {np.asarray(image).mean():.0f}, {user_prompt}," for image in images]


def test_a_batch_run_leaves_the_pipeline_it_was_handed_as_it_was(pipe, tmp_path):
    # was: osediff.batch.run(config, pipe=p) freed p.text_encoder and p.prompt_extractor, and then
    # p(image, prompt="a new prompt") raised PromptNotEncodedError
    photo(16, 12).save(tmp_path / "a.png")
    before = pipe(photo(12, 8, 1), upscale=2, prompt="a new prompt")
    upscaler = Upscaler(pipe, PromptExtractors(built={"tags": tagger}))
    config = BatchConfig([str(tmp_path / "a.png")], tmp_path / "out", params=UpscaleParams(2, prompt_extractor="tags"))
    summary = run(config, upscaler=upscaler)
    assert summary.written == 1 and summary.records[0].prompt.startswith("mean ")
    assert pipe.text_encoder is not None and upscaler.extractors.get("tags") is tagger
    after = pipe(photo(12, 8, 1), upscale=2, prompt="a new prompt")
    assert png(after) == png(before)


def test_the_extractor_is_the_one_the_parameters_name_not_one_attached_earlier(pipe, tmp_path):
    # was: a pipe built with an extractor overrode BatchConfig(prompt_extractor="none") ('tags, ,')
    photo(16, 12).save(tmp_path / "a.png")
    upscaler = Upscaler(pipe, PromptExtractors(built={"tags": tagger}))
    prompts = {}
    for name in ("none", "text", "tags", "none"):
        config = BatchConfig([str(tmp_path / "a.png")], tmp_path / name,
                             params=UpscaleParams(2, prompt="user words", prompt_extractor=name))
        prompts[name] = run(config, upscaler=upscaler).records[0].prompt
    assert prompts["none"] == "" and prompts["text"] == "user words"
    assert prompts["tags"].startswith("mean ") and prompts["tags"].endswith(", user words,")


def test_tiling_is_chosen_per_call_also_for_the_preview_decoder(pipe):
    # was: decode_latent switched the preview decoder's tiling on and never off, so a small image
    # came out differently (by 0.0158) once a large one had gone through
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    taesd.tile_sample_min_size, taesd.tile_latent_min_size = 32, 4
    pipe.use_preview_decoder(taesd)
    tiles = TileConfig(vae_decoder_tile=6)
    small, large = photo(20, 12, 3), photo(40, 36, 4)  # latents 10x6 and 20x18 at x4
    first = pipe.run(small, 2, "", tiles=tiles, output_type="pt").image  # 5x3 latent: untiled
    tiled = pipe.run(large, 4, "", tiles=tiles, output_type="pt").image  # tiled TAESD decode
    again = pipe.run(small, 2, "", tiles=tiles, output_type="pt").image
    assert torch.equal(first, again) and not taesd.use_tiling
    untiled = pipe.run(large, 4, "", tiles=TileConfig(enabled=False), output_type="pt").image
    assert (tiled - untiled).abs().max() > 1e-4  # the large image really took the tiled path


def test_the_same_inputs_give_the_same_bytes_whatever_ran_before(pipe):
    upscaler = Upscaler(pipe, PromptExtractors(built={"tags": tagger}))
    image = load_image(png(photo(18, 14, 5, alpha=True)))
    params = UpscaleParams(2, "wavelet", "a cat", "tags")
    first = png(upscaler.upscale([(image, params)])[0].image)
    # other prompts, extractors, sizes, tiles, seeds and a batch in between
    upscaler.upscale([(LoadedImage(photo(30, 20, 6), None), UpscaleParams(3, prompt="dog", latent="sample", seed=1)),
                      (LoadedImage(photo(30, 20, 7), None), UpscaleParams(3, prompt="cow", latent="sample", seed=1)),
                      (LoadedImage(photo(40, 24, 8), None), UpscaleParams(2, tiles=TileConfig(latent_tile=6,
                                                                                         latent_overlap=2)))])
    pipe(photo(8, 8, 9), upscale=1.5, prompt="something else", align="none")
    assert png(upscaler.upscale([(image, params)])[0].image) == first
    assert png(pipe.run(image, 2, "a cat", align="wavelet", prompt_extractor=tagger).image) == first


def local_front_ends(source, out, base, weights, *, upscale: float, align: str, prompt: str) -> dict[str, bytes]:
    """The PNG each local front end makes of ``source``: the batch runner, the service's engine, the
    demo's service, the Python API (from a path and from a PIL image) and an Upscaler."""
    from osediff.demo.service import DemoSettings, UpscaleService
    from osediff.serve.engine import Engine, Job, ServeConfig
    from osediff.serve.limits import open_checked, parse_params

    model = ModelOptions(base=str(base), weights=str(weights), device="cpu", offline=True)
    params = UpscaleParams(upscale, align, prompt)
    outputs: dict[str, bytes] = {}

    assert run(BatchConfig([str(source)], out / "runner", params=params, model=model)).written == 1
    outputs["runner"] = (out / "runner" / f"{source.stem}.png").read_bytes()

    engine = Engine(ServeConfig.find(model, threads=1))
    request = parse_params({"upscale": f"{upscale:g}", "align": align, "prompt": prompt}, engine.config.extractors,
                           engine.config.limits)
    served = engine.run([Job(open_checked(source.read_bytes(), request, engine.config.limits), request)])[0]
    outputs["service"] = encode_image(served.image, request.format, request.quality)

    demo = UpscaleService(engine.upscaler, output_dir=out / "demo")
    result = demo.upscale(load_image(source), DemoSettings(upscale, prompt, "text", align, tile_px=768))
    outputs["demo"] = result.png_path.read_bytes()

    pipe = OSEDiffPipeline.from_pretrained(base, weights, device="cpu")
    outputs["python"] = png(pipe(str(source), upscale=upscale, prompt=prompt, align=align))
    outputs["python, PIL"] = png(pipe(Image.open(source), upscale=upscale, prompt=prompt, align=align))
    outputs["upscaler"] = png(Upscaler(pipe).upscale([(load_image(source), params)])[0].image)
    return outputs


def test_every_local_front_end_gives_the_same_bytes(tiny_base_dir, tiny_pkl, tmp_path, single_thread):
    source = tmp_path / "in" / "photo.png"
    source.parent.mkdir()
    photo(20, 14, 11, alpha=True).save(source)
    outputs = local_front_ends(source, tmp_path, tiny_base_dir, tiny_pkl, upscale=2, align="wavelet",
                               prompt="a photo")
    assert Image.open(io.BytesIO(outputs["runner"])).mode == "RGBA"
    assert {name: data == outputs["runner"] for name, data in outputs.items()} == dict.fromkeys(outputs, True)
