"""OSEDiffPipeline.optimize: option checks, channels_last, in-place compilation, the fp16 overflow guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.pipeline import OSEDiffPipeline, TileConfig

UNTILED = TileConfig(enabled=False)
TILED = TileConfig(vae_encoder_tile=32, vae_decoder_tile=4)


def lq_image(size: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)).resize(
        (size, size), Image.BILINEAR)


def is_nhwc(module: torch.nn.Module) -> bool:
    return module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous()


@pytest.mark.parametrize("options, message", [
    ({"compile_mode": "fastest"}, "unknown compile mode 'fastest'"),
    ({"compile_mode": "reduce-overhead", "compile_backend": "eager"}, "needs the inductor backend"),
    ({"decoder_dtype": torch.int8}, "decoder_dtype must be a floating"),
    ({"decoder_dtype": "bf16"}, "decoder_dtype must be a floating"),
])
def test_bad_options_fail_before_anything_changes(fresh_components, options, message):
    pipe = OSEDiffPipeline(fresh_components)
    with pytest.raises(ValueError, match=message):
        pipe.optimize(compile_unet=True, upcast_decoder=True, **options)
    assert not is_nhwc(pipe.vae.decoder.conv_in)
    assert pipe.vae.decoder.conv_out.weight.dtype == torch.float32
    assert pipe.unet._compiled_call_impl is None


def test_optimize_models_works_on_bare_models_and_its_errors_are_user_errors(fresh_components):
    from osediff.acceleration import COMPILE_MODES, OptimizeOptionError, optimize_models
    from osediff.errors import OSEDiffError

    assert OSEDiffPipeline.COMPILE_MODES == COMPILE_MODES == ("default", "reduce-overhead", "max-autotune")
    vae, unet = fresh_components.vae, fresh_components.unet
    optimize_models(vae, unet, torch.device("cpu"), decoder_dtype=torch.bfloat16)
    assert is_nhwc(vae.decoder.conv_out) and vae.decoder.conv_out.weight.dtype == torch.bfloat16
    assert vae.post_quant_conv.weight.dtype == torch.bfloat16 and vae.encoder.conv_in.weight.dtype == torch.float32
    with pytest.raises(OptimizeOptionError) as err:
        optimize_models(vae, unet, torch.device("cpu"), compile_mode="fast")
    assert isinstance(err.value, OSEDiffError) and "\n" not in str(err.value)


def test_channels_last_converts_the_vae_but_not_the_unet_on_cpu(fresh_components):
    pipe = OSEDiffPipeline(fresh_components).optimize()
    assert is_nhwc(pipe.vae.encoder.conv_in) and is_nhwc(pipe.vae.decoder.conv_out)
    assert not is_nhwc(pipe.unet.conv_in)  # on CPU the UNet gained nothing and its copy cost 2.3 GB


def test_attention_runs_through_scaled_dot_product_attention(fresh_components):
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = OSEDiffPipeline(fresh_components).optimize()
    processors = {**pipe.unet.attn_processors, **pipe.vae.attn_processors}
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def test_compilation_is_in_place_and_lazy(fresh_components):
    from diffusers import UNet2DConditionModel

    pipe = OSEDiffPipeline(fresh_components).optimize(compile_unet=True, compile_vae=True,
                                                      compile_mode="max-autotune")
    assert type(pipe.unet) is UNet2DConditionModel and pipe.dtype == torch.float32
    for model in (pipe.unet, pipe.vae.encoder, pipe.vae.decoder):
        assert model._compiled_call_impl is not None
    assert "conv_in.weight" in pipe.unet.state_dict()  # no "_orig_mod." prefix: weights load as before


def test_compiled_vae_is_traced_and_gives_the_eager_output(fresh_components, single_thread):
    torch.compiler.reset()
    traced = []

    def recording_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        traced.append(graph)
        return graph.forward

    image = lq_image(16)
    pipe = OSEDiffPipeline(fresh_components)
    eager = pipe.run(image, 4, "", tiles=UNTILED, output_type="pt").image
    # the VAE only: tracing the UNet costs a minute here, and it compiles the same way
    pipe.optimize(compile_vae=True, compile_backend=recording_backend)
    compiled = pipe.run(image, 4, "", tiles=UNTILED, output_type="pt").image
    assert len(traced) >= 2  # VAE encoder and decoder (more if dynamo splits a graph)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    torch.compiler.reset()


@pytest.mark.parametrize("tiles", [UNTILED, TILED], ids=["untiled", "tiled"])
def test_upcast_decoder_runs_the_up_blocks_in_fp32_and_drifts_less(fresh_components, tiny_weights, tiles,
                                                                   single_thread):
    import copy

    image = lq_image(16)
    reference_pipe = OSEDiffPipeline(copy.deepcopy(fresh_components))
    reference_pipe.load_weights(tiny_weights)
    reference = reference_pipe.run(image, 4, "", tiles=UNTILED, output_type="pt").image
    drifts = {}
    for upcast in (False, True):
        pipe = OSEDiffPipeline(copy.deepcopy(fresh_components))
        pipe.load_weights(tiny_weights)
        pipe.optimize(decoder_dtype=torch.bfloat16, upcast_decoder=upcast)
        out = pipe.run(image, 4, "", tiles=tiles, output_type="pt").image
        drifts[upcast] = (out - reference).abs().max().item()
    decoder = pipe.vae.decoder
    assert decoder.up_blocks[0].resnets[0].conv1.weight.dtype == torch.float32
    assert decoder.conv_out.weight.dtype == decoder.conv_norm_out.weight.dtype == torch.float32
    assert decoder.mid_block.resnets[0].conv1.weight.dtype == decoder.conv_in.weight.dtype == torch.bfloat16
    assert pipe.vae.post_quant_conv.weight.dtype == torch.bfloat16
    assert 0 < drifts[True] < drifts[False]


def test_upcast_decoder_keeps_fp16_activations_past_65504_finite(fresh_components):
    """A decoder whose up blocks overflow fp16 gives NaN in fp16 and a finite image with the guard."""
    import copy

    up = fresh_components.vae.decoder.up_blocks[0]
    with torch.no_grad():  # weights that fit fp16, activations (~1e5 here) that do not
        up.resnets[0].conv2.weight.mul_(1e4)
        up.upsamplers[0].conv.weight.mul_(1e2)
    z = torch.randn(1, 4, 8, 8)
    reference = OSEDiffPipeline(fresh_components).decode_latent(z, UNTILED)
    outputs = {}
    for upcast in (False, True):
        pipe = OSEDiffPipeline(copy.deepcopy(fresh_components)).to(dtype=torch.float16)
        outputs[upcast] = pipe.optimize(channels_last=False, upcast_decoder=upcast).decode_latent(z, UNTILED)
    assert torch.isfinite(reference).all()
    assert not torch.isfinite(outputs[False]).all()
    assert torch.isfinite(outputs[True]).all()
    assert (outputs[True] - reference).abs().max() < 0.05


def test_optimize_twice_registers_the_input_casts_once(fresh_components):
    pipe = OSEDiffPipeline(fresh_components).optimize(decoder_dtype=torch.bfloat16, upcast_decoder=True)
    pipe.optimize(upcast_decoder=True)
    assert len(pipe.vae.post_quant_conv._forward_pre_hooks) == 1
    assert len(pipe.vae.decoder.up_blocks[0]._forward_pre_hooks) == 1
