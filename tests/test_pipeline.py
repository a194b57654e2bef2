"""The one-step pipeline against an independent diffusers + peft computation, and its geometry."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from peft import LoraConfig
from PIL import Image

from osediff.components import encode_text
from osediff.images import LoadedImage
from osediff.params import ParamError, UpscaleParams
from osediff.pipeline import OSEDiffPipeline, PromptCache, TileConfig, Upscaler
from osediff.tiling.memory import vae_map_store


def lq_image(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.BILINEAR)


def direct_reference(components, weights, image: Image.Image, prompt: str, scale: int = 4) -> torch.Tensor:
    """The authors' recipe written directly with diffusers' peft integration and DDPMScheduler.step."""
    c = copy.deepcopy(components)
    for adapter, names in weights.unet_targets.items():
        c.unet.add_adapter(LoraConfig(r=weights.rank_unet, init_lora_weights="gaussian", target_modules=names),
                           adapter_name=adapter)
    c.unet.set_adapter(list(weights.unet_targets))
    c.vae.add_adapter(LoraConfig(r=weights.rank_vae, init_lora_weights="gaussian",
                                 target_modules=sorted(set(weights.vae_targets))), adapter_name="default_encoder")
    with torch.no_grad():
        for name, param in c.unet.named_parameters():
            if "lora" in name or "conv_in" in name:
                param.copy_(weights.unet_state[name])
        for name, param in c.vae.named_parameters():
            if "lora" in name:
                param.copy_(weights.vae_state[name])
        upscaled = image.resize((image.width * scale, image.height * scale), Image.BICUBIC)
        x = torch.tensor(np.asarray(upscaled), dtype=torch.float32).permute(2, 0, 1)[None] / 255 * 2 - 1
        z = c.vae.encode(x).latent_dist.mode() * c.vae.config.scaling_factor
        ids = c.tokenizer(prompt, max_length=77, padding="max_length", truncation=True, return_tensors="pt").input_ids
        eps = c.unet(z, torch.tensor([999]), encoder_hidden_states=c.text_encoder(ids)[0]).sample
        c.scheduler.set_timesteps(timesteps=[999])
        x0 = c.scheduler.step(eps, 999, z).pred_original_sample
        out = c.vae.decode(x0 / c.vae.config.scaling_factor).sample.clamp(-1, 1)
    return ((out + 1) / 2)[0]


@pytest.mark.parametrize("merge", [True, False])
def test_output_equals_direct_diffusers_peft_computation(fresh_components, tiny_components, tiny_weights, merge):
    image = lq_image()
    reference = direct_reference(tiny_components, tiny_weights, image, "a red bus")
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights, merge=merge)
    ours = pipe.run(image, 4, "a red bus", align="none", output_type="pt").image
    diff = (ours - reference).abs().max().item()
    print(f"max |ours({'merged' if merge else 'unmerged'}) - direct| = {diff:.2e}")
    assert ours.shape == reference.shape == (3, 96, 128)
    assert diff < 1e-4
    # the LoRA really matters: without it the output is far away
    plain = OSEDiffPipeline(copy.deepcopy(tiny_components)).run(image, 4, "a red bus", align="none", output_type="pt")
    assert (plain.image - reference).abs().max().item() > 0.05


def test_merged_equals_unmerged_from_files(tiny_base_dir, tiny_pkl):
    image = lq_image(40, 28, seed=3)
    merged = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", dtype="fp32")
    unmerged = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", dtype="fp32", merge_lora=False)
    a = merged.run(image, 4, "", output_type="pt").image
    b = unmerged.run(image, 4, "", output_type="pt").image
    diff = (a - b).abs().max().item()
    print(f"max |merged - unmerged| = {diff:.2e}")
    assert diff < 1e-4
    assert not any("lora" in name for name, _ in merged.unet.named_parameters())
    assert any("lora" in name for name, _ in unmerged.unet.named_parameters())


@pytest.mark.parametrize(("size", "scale"), [((37, 29), 1), ((37, 29), 2), ((37, 29), 4), ((21, 50), 2.5), ((8, 8), 4)])
def test_output_size_is_exactly_scale_times_input(fresh_components, tiny_weights, size, scale):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    out = pipe(lq_image(*size), upscale=scale)
    assert out.size == (round(size[0] * scale), round(size[1] * scale))
    assert out.mode == "RGB"


def test_list_input_and_rgba_alpha_is_kept(fresh_components):
    pipe = OSEDiffPipeline(fresh_components)
    rgba = lq_image(16, 16).convert("RGBA")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1)))
    rgba.putalpha(alpha)
    outs = pipe([rgba, lq_image(12, 20)], upscale=2)
    assert [o.size for o in outs] == [(32, 32), (24, 40)]
    assert outs[0].mode == "RGBA" and outs[1].mode == "RGB"
    expected = np.asarray(alpha.resize((32, 32), Image.BICUBIC))
    assert np.array_equal(np.asarray(outs[0].getchannel("A")), expected)


def test_latent_sampling_is_seeded(fresh_components, tiny_weights):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    image = lq_image()
    run = lambda **kw: pipe.run(image, 2, "", output_type="pt", **kw).image  # noqa: E731
    a, b, c, mode = run(latent="sample", seed=1), run(latent="sample", seed=1), run(latent="sample", seed=2), run()
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert (a - mode).abs().max() > 1e-3


def test_mode_latent_is_the_distribution_mean(fresh_components):
    pipe = OSEDiffPipeline(fresh_components)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = pipe.encode_latent(x, TileConfig())
    moments = fresh_components.vae.quant_conv(fresh_components.vae.encoder(x))
    expected = DiagonalGaussianDistribution(moments).mean * fresh_components.vae.config.scaling_factor
    assert torch.allclose(z, expected, atol=1e-6)


def test_denoise_matches_the_scheduler_step(fresh_components):
    pipe = OSEDiffPipeline(fresh_components)
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    scheduler = fresh_components.scheduler
    scheduler.set_timesteps(timesteps=[999])
    expected = scheduler.step(eps, 999, z).pred_original_sample
    assert torch.allclose(pipe.denoise(z, eps), expected, atol=1e-5)
    assert pipe.alpha_bar == pytest.approx(0.0046601, abs=1e-6)


def test_the_callers_upscaler_encodes_each_prompt_once_and_the_pipeline_keeps_nothing(fresh_components):
    pipe = OSEDiffPipeline(fresh_components)
    calls = []
    fresh_components.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    upscaler = Upscaler(pipe)
    image = LoadedImage(lq_image(8, 8), None)
    for _ in range(3):
        upscaler.upscale([(image, UpscaleParams(2, prompt="same prompt"))])
    upscaler.upscale([(image, UpscaleParams(2, prompt="another prompt"))] * 2)
    assert len(calls) == 2
    pipe.run(lq_image(8, 8), 2, "same prompt")  # a plain call owns no cache: it encodes again
    assert len(calls) == 3


def test_prompt_extractor_sees_the_upscaled_image(fresh_components):
    seen = []

    def extractor(images, user_prompt=""):
        seen.extend(img.size for img in images)
        return [f"tag, {user_prompt},"] * len(images)

    pipe = OSEDiffPipeline(fresh_components)
    result = pipe.run(lq_image(10, 6), 3, "user", prompt_extractor=extractor)
    assert seen == [(30, 18)]
    assert result.prompt == "tag, user,"
    assert result.bicubic.size == (30, 18) and result.image.size == (30, 18)
    assert pipe.run(lq_image(10, 6), 3, "saved").prompt == "saved"  # text: the prompt as given
    assert pipe.run(lq_image(10, 6), 3, "dropped", prompt_extractor="none").prompt == ""


def test_latent_tiling_runs_the_unet_per_tile(fresh_components, tiny_weights):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    shapes = []
    fresh_components.unet.register_forward_hook(lambda _m, args, _o: shapes.append(tuple(args[0].shape)))
    tiles = TileConfig(latent_tile=8, latent_overlap=4, tiles_per_pass=2)
    out = pipe.run(lq_image(24, 24), 2, "", tiles=tiles, output_type="pt").image  # latent 6x6 -> no tiles
    assert shapes == [(1, 4, 6, 6)]
    shapes.clear()
    out = pipe.run(lq_image(40, 24), 2, "", tiles=tiles, output_type="pt").image  # latent 6x10 -> 2 tiles
    assert out.shape == (3, 48, 80)
    assert shapes == [(2, 4, 6, 8)]


def test_bad_arguments_are_refused_naming_them(fresh_components):
    pipe = OSEDiffPipeline(fresh_components)
    for kwargs, message in [({"upscale": 0.5}, "upscale must be a number >= 1, got 0.5"),
                            ({"upscale": "abc"}, "upscale must be a number >= 1, got 'abc'"),
                            ({"align": "histogram"}, "align must be one of adain, wavelet, none, got 'histogram'"),
                            ({"latent": "mean"}, "latent must be one of mode, sample, got 'mean'"),
                            ({"tiles": TileConfig(latent_tile=8, latent_overlap=2), "seed": 1.5},
                             "seed must be an integer, got 1.5")]:
        with pytest.raises(ParamError, match=f"^{message}$") as info:
            pipe(lq_image(8, 8), **kwargs)
        assert info.value.argument == message.split()[0]
    with pytest.raises(ParamError, match=r"^tiles\.latent_overlap must be 0\.\.7 \(below the latent tile of 8\)") \
            as info:
        TileConfig(latent_tile=8, latent_overlap=8)
    assert info.value.message(lambda argument: "--latent-overlap").startswith("--latent-overlap must be 0..7")


def test_preview_decoder_replaces_the_sd_decoder(fresh_components, tiny_weights):
    from diffusers import AutoencoderTiny

    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    sd_decoder_calls = []
    fresh_components.vae.decoder.register_forward_hook(lambda *_: sd_decoder_calls.append(1))
    pipe.use_preview_decoder(taesd)
    image = lq_image(20, 12)
    out = pipe.run(image, 4, "", align="none", output_type="pt").image
    assert out.shape == (3, 48, 80) and not sd_decoder_calls
    x = torch.tensor(np.asarray(image.resize((80, 48), Image.BICUBIC)), dtype=torch.float32)
    z_l = pipe.encode_latent(x.permute(2, 0, 1)[None] / 255 * 2 - 1, TileConfig())
    z_h = pipe.denoise(z_l, pipe.predict_noise(z_l, pipe.encode_prompt(""), TileConfig()))
    with torch.no_grad():
        expected = (taesd.decode(z_h).sample.clamp(-1, 1)[0] + 1) / 2
    assert torch.allclose(out, expected, atol=1e-5)
    pipe.use_preview_decoder(None)
    pipe.run(image, 4, "")
    assert sd_decoder_calls


def test_tiled_vae_through_the_pipeline_matches_untiled(fresh_components, tiny_weights):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    image = lq_image(24, 16, seed=5)  # 96x64 px, latent 12x8
    untiled = pipe.run(image, 4, "", tiles=TileConfig(enabled=False), output_type="pt").image
    vae_tiles = TileConfig(vae_encoder_tile=32, vae_decoder_tile=4)  # UNet untiled (latent < 96)
    tiled = pipe.run(image, 4, "", tiles=vae_tiles, output_type="pt").image
    diff = (tiled - untiled).abs().max().item()
    print(f"max |tiled VAE - untiled| = {diff:.2e}")
    assert diff < 1e-4


def test_releasing_the_prompt_models_keeps_the_prompts_needed_and_only_for_owned_models(fresh_components):
    from osediff.pipeline import PipelineInputError, PromptNotEncodedError

    pipe = OSEDiffPipeline(fresh_components)
    expected = encode_text(pipe.tokenizer, pipe.text_encoder, "b")
    with pytest.raises(PipelineInputError, match="owns_models=True"):
        Upscaler(pipe).release_prompt_models(["a"])  # a pipeline handed in is never changed
    assert pipe.text_encoder is not None
    upscaler = Upscaler(pipe, prompt_cache_size=1, owns_models=True)
    upscaler.release_prompt_models(["a", "b", "a"])
    assert pipe.text_encoder is None
    assert torch.equal(upscaler.prompts.get("b"), expected) and upscaler.prompts.get("a").shape == expected.shape
    with pytest.raises(PromptNotEncodedError, match="not among the prompts"):
        upscaler.prompts.get("c")


def test_tiled_vae_keeps_its_maps_on_the_cpu_when_they_would_crowd_the_gpu(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    auto = TileConfig().vae_maps
    # 2048x2048 fp16: 384 channels x 4 Mpx x 2 B = 3 GiB > 8 GiB free / 4; 1024x1024: 0.75 GiB
    assert vae_map_store(auto, cuda, 2048 * 2048, torch.float16) == cpu
    assert vae_map_store(auto, cuda, 1024 * 1024, torch.float16) == cuda
    assert vae_map_store(auto, cpu, 8192 * 8192, torch.float32) == cpu
    assert vae_map_store("device", cuda, 8192 * 8192, torch.float16) == cuda
    assert vae_map_store("cpu", cuda, 64, torch.float16) == cpu
    with pytest.raises(ParamError, match=r"tiles\.vae_maps must be one of auto, device, cpu"):
        TileConfig(vae_maps="disk")  # type: ignore[arg-type]


def test_bf16_decoder_leaves_the_encoder_in_fp32(fresh_components):
    pipe = OSEDiffPipeline(fresh_components).optimize(channels_last=False, decoder_dtype=torch.bfloat16)
    seen = []
    fresh_components.vae.encoder.conv_in.register_forward_hook(lambda _m, args, _o: seen.append(args[0].dtype))
    fresh_components.vae.decoder.conv_in.register_forward_hook(lambda _m, args, _o: seen.append(args[0].dtype))
    out = pipe.run(lq_image(24, 16), 4, "", tiles=TileConfig(vae_encoder_tile=32, vae_decoder_tile=4),
                   output_type="pt").image
    assert out.dtype == torch.float32 and out.shape == (3, 64, 96)
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16


def test_fixed_prompts_are_encoded_at_load_and_the_text_encoder_is_not_kept(tiny_base_dir, tiny_pkl):
    image = lq_image(16, 12)
    full = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", dtype="fp32")
    lean = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", dtype="fp32", prompts=["a cat"])
    assert lean.text_encoder is None and full.text_encoder is not None
    a = full.run(image, 2, "a cat", output_type="pt").image
    b = lean.run(image, 2, "a cat", output_type="pt").image
    assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="not among the prompts encoded at load time"):
        lean.run(image, 2, "a dog")


def _decoder_state(pipe: OSEDiffPipeline) -> tuple[bool, torch.dtype]:
    weight = pipe.vae.decoder.conv_in.weight
    return weight.is_contiguous(memory_format=torch.channels_last), weight.dtype


def test_from_pretrained_gives_the_fast_settings_by_default(tiny_base_dir, tiny_pkl, monkeypatch):
    monkeypatch.setattr("osediff.device.cpu_has_native_bf16", lambda: True)  # a CPU where bf16 decoding pays
    default = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu")
    assert _decoder_state(default) == (True, torch.bfloat16)
    assert default.vae.encoder.conv_in.weight.dtype == torch.float32
    fp32 = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", decoder_dtype=torch.float32)
    assert _decoder_state(fp32) == (True, torch.float32)
    plain = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", optimize=False)
    assert _decoder_state(plain) == (False, torch.float32)


def test_from_pretrained_is_quiet_and_leaves_library_logging_as_it_was(tiny_base_dir, tiny_pkl, capfd):
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", merge_lora=False)
        out, err = capfd.readouterr()
        assert "Loading weights" not in out + err and "kept in float32" not in out + err
        assert hf_logging.get_verbosity() == hf_logging.INFO and hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity_warning()


def test_from_pretrained_finds_every_file_before_loading(tiny_base_dir, tmp_path, monkeypatch):
    from osediff.checkpoint import ModelNotFoundError

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded a model before every file was found")

    monkeypatch.setattr("osediff.pipeline.model.load_base_components", must_not_load)
    with pytest.raises(ModelNotFoundError) as info:
        OSEDiffPipeline.from_pretrained(tiny_base_dir, tmp_path / "osediff.pkl", device="cpu")
    assert "file not found; pass weights=" in str(info.value) and "--weights" not in str(info.value)
    # every missing file in one error, raised from from_pretrained itself (no traceback from deep inside)
    with pytest.raises(ModelNotFoundError) as info:
        OSEDiffPipeline.from_pretrained(tmp_path / "no-sd21", tmp_path / "osediff.pkl", device="cpu")
    message = str(info.value)
    assert "no-sd21: folder not found" in message and "osediff.pkl: file not found" in message
    assert message.endswith("pass base=<diffusers folder or hub id>, weights=<path to osediff.pkl>")
    assert info.traceback[-1].name == "from_pretrained" and info.value.__cause__ is None


def test_prompt_cache_is_safe_across_threads():
    import threading
    import time

    encoded: list[str] = []

    def slow_encode(prompt):
        encoded.append(prompt)
        time.sleep(0.02)  # lets the other threads in between the cache check and the insert
        return torch.full((1, 77, 8), float(len(prompt)))

    cache = PromptCache(slow_encode, size=3)
    prompts = ["a", "bb", "ccc"] * 4
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = cache.get(prompts[i])
        except BaseException as err:  # a KeyError from a racing eviction would land here
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(float(results[i][0, 0, 0]) == len(p) for i, p in enumerate(prompts))
    assert sorted(encoded) == ["a", "bb", "ccc"]  # each new prompt encoded once, however many threads ask


def test_the_python_api_takes_what_diffusers_users_pass_and_refuses_the_rest(fresh_components, tmp_path):
    from osediff.images import ImageLoadError

    pipe = OSEDiffPipeline(fresh_components)
    image = lq_image(12, 8, seed=4)
    image.save(tmp_path / "photo.png")
    array = np.array(image)
    expected = np.asarray(pipe(image, upscale=2))
    for given in (str(tmp_path / "photo.png"), tmp_path / "photo.png", array,
                  torch.from_numpy(array).permute(2, 0, 1).float() / 255, torch.from_numpy(array).permute(2, 0, 1)):
        assert np.array_equal(np.asarray(pipe(given, upscale=2)), expected), type(given)
    grey = pipe(array[..., 0], upscale=2)
    assert grey.mode == "RGB" and grey.size == (24, 16)
    for bad, problem in ((42, "is a int; give a PIL image, a path"), (np.zeros((4, 4, 2), np.uint8), "has shape"),
                         (np.zeros((4, 4, 3), np.int64), "has dtype int64")):
        with pytest.raises(ImageLoadError, match=problem):
            pipe(bad)
    with pytest.raises(ImageLoadError, match=r"missing\.png: no such file"):
        pipe(str(tmp_path / "missing.png"))
