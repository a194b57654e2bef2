"""The batch runner and the service load the decoder in the dtype asked for, without a detour.

Before e9c151b both loaded the pipeline optimised with the "auto" decoder dtype, then called
``optimize()`` again with the dtype asked for: with ``--decoder-dtype fp32`` on a CPU where "auto"
picks bf16, the decoder weights went fp32 -> bf16 -> fp32 and lost their low mantissa bits.
"""

from __future__ import annotations

import pytest
import torch

from osediff.batch import BatchConfig, ModelOptions, find_batch_files, load_batch_upscaler
from osediff.pipeline import OSEDiffPipeline
from osediff.serve.engine import Engine, ServeConfig


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU on which the "auto" decoder dtype is bf16 (AVX-512 BF16 / AMX), whatever this one has."""
    monkeypatch.setattr("osediff.device.cpu_has_native_bf16", lambda: True)


@pytest.fixture(scope="module")
def unoptimised_decoder(tiny_base_dir, tiny_pkl) -> dict[str, torch.Tensor]:
    pipe = OSEDiffPipeline.from_pretrained(tiny_base_dir, tiny_pkl, device="cpu", dtype="fp32", optimize=False)
    return decoder_state(pipe)


def decoder_state(pipe: OSEDiffPipeline) -> dict[str, torch.Tensor]:
    return {f"post_quant_conv.{k}": v for k, v in pipe.vae.post_quant_conv.state_dict().items()} | {
        f"decoder.{k}": v for k, v in pipe.vae.decoder.state_dict().items()}


def assert_bit_identical(loaded: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        assert loaded[name].dtype == torch.float32, name
        assert torch.equal(loaded[name], tensor), f"{name} differs from the weights loaded unoptimised"


def batch_pipe(tmp_path, tiny_base_dir, tiny_pkl, decoder_dtype: str) -> OSEDiffPipeline:
    config = BatchConfig(inputs=[str(tmp_path)], output=tmp_path / "out",
                         model=ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl), device="cpu",
                                            dtype="fp32", offline=True, decoder_dtype=decoder_dtype))
    files, params = find_batch_files(config)
    return load_batch_upscaler(config, files, params).pipe


def test_auto_decoder_dtype_is_bf16_on_the_patched_cpu(bf16_cpu, tmp_path, tiny_base_dir, tiny_pkl):
    # the control: without it the test below would pass on a CPU where "auto" means fp32 anyway
    pipe = batch_pipe(tmp_path, tiny_base_dir, tiny_pkl, "auto")
    assert pipe.vae.decoder.conv_out.weight.dtype == torch.bfloat16
    assert pipe.vae.encoder.conv_in.weight.dtype == pipe.dtype == torch.float32


def test_batch_loads_an_fp32_decoder_bit_for_bit(bf16_cpu, tmp_path, tiny_base_dir, tiny_pkl, unoptimised_decoder):
    pipe = batch_pipe(tmp_path, tiny_base_dir, tiny_pkl, "fp32")
    assert_bit_identical(decoder_state(pipe), unoptimised_decoder)


def test_service_loads_an_fp32_decoder_bit_for_bit(bf16_cpu, tiny_base_dir, tiny_pkl, unoptimised_decoder):
    engine = Engine(ServeConfig.find(ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl), device="cpu",
                                                  dtype="fp32", decoder_dtype="fp32", offline=True)))
    assert_bit_identical(decoder_state(engine.pipe), unoptimised_decoder)
