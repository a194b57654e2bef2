"""The gpu_suite row ``tensorrt_fp16``: `osediff export --format onnx` graphs built into TensorRT
engines (fp16, the shapes of a 128->512 image) and one 512 px image through them, against the
same image through the torch pipeline in fp16.

Needs the ``tensorrt`` Python package (TensorRT 10) and ``onnx`` where it runs; without them the
row is skipped and says which is missing. Engines are built with the TensorRT Python API (what
``trtexec --onnx=unet/model.onnx --fp16`` does), one optimisation profile each, fixed at the
image's shapes; the one-step update x0 = (z_L - sqrt(1 - abar) eps) / sqrt(abar) runs in torch
fp32 between the engines, as in every runtime of osediff.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path

import torch

from _common import PROMPT, lr_images


def missing_packages() -> list[str]:
    return [name for name in ("tensorrt", "onnx") if importlib.util.find_spec(name) is None]


def build_engine(onnx_path: Path, shapes: dict[str, tuple[int, ...]]):
    """An fp16 engine of ``onnx_path`` for exactly ``shapes`` (input name -> shape)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # the weights file beside it is found by the parser
        raise RuntimeError(f"{onnx_path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


class Engine:
    """One engine with its execution context, called with CUDA tensors; outputs fp32 CUDA tensors."""

    def __init__(self, engine) -> None:
        import tensorrt as trt

        self.engine, self.context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), device="cuda", dtype=torch.float32)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        return outputs


def tensorrt_row(suite, timed_runs, peak_gib) -> dict:
    """The row: engine build seconds, ms per 512 image, torch fp16's ms on the same image, drift."""
    import time

    from osediff.components import BaseComponents
    from osediff.diffusion import predict_x0
    from osediff.export.onnx import export_onnx
    from osediff.pipeline import OSEDiffPipeline
    from osediff.pipeline.step import bicubic_upscale, image_tensor

    missing = missing_packages()
    if missing or suite.device.type != "cuda":
        why = f"{', '.join(missing)} not installed" if missing else "needs a CUDA device"
        return {"status": "skipped", "reason": f"{why}: TensorRT engines are built from the ONNX export on NVIDIA GPUs"}
    c = suite.components
    cpu = OSEDiffPipeline(BaseComponents(copy.deepcopy(c.vae), copy.deepcopy(c.unet), copy.deepcopy(c.text_encoder),
                                         c.tokenizer, c.scheduler))
    cpu.load_weights(suite.weights)
    image = lr_images(suite.args.lr_size, 1)[0]
    x_l = image_tensor(bicubic_upscale(image, 4)).cuda()
    context = cpu.encode_prompt(PROMPT).cuda()
    side = x_l.shape[-1]
    with tempfile.TemporaryDirectory() as folder:
        meta = export_onnx(cpu, Path(folder))
        del cpu
        start = time.perf_counter()
        encoder = Engine(build_engine(Path(folder) / "vae_encoder/model.onnx", {"x": (1, 3, side, side)}))
        unet = Engine(build_engine(Path(folder) / "unet/model.onnx",
                                   {"z": (1, 4, side // 8, side // 8), "context": tuple(context.shape)}))
        decoder = Engine(build_engine(Path(folder) / "vae_decoder/model.onnx", {"z": (1, 4, side // 8, side // 8)}))
        build_s = time.perf_counter() - start

    def one_image() -> torch.Tensor:
        mean, _ = encoder(x=(x_l * 2 - 1).contiguous())
        z_l = mean * meta["scaling_factor"]
        z_h = predict_x0(z_l, unet(z=z_l.contiguous(), context=context.contiguous())[0], meta["alpha_bar"])
        return ((decoder(z=z_h.contiguous())[0] + 1) / 2).clamp(0, 1)

    for _ in range(suite.args.warmup):
        one_image()
    torch.cuda.synchronize()
    walls = []
    for _ in range(suite.args.repeats):
        start = time.perf_counter()
        out = one_image()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    ms = 1000 * sorted(walls)[len(walls) // 2]
    pipe = suite.pipeline()
    reference = pipe.super_resolve(x_l, pipe.encode_prompt(PROMPT), tiles=suite.tiles(enabled=False)).clamp(0, 1)
    torch_r = timed_runs(pipe, lambda: [pipe.run(image, 4, PROMPT)], suite.args.warmup, suite.args.repeats)
    levels = ((out - reference.float()).abs() * 255).max().item()
    return {"ms_per_image": ms, "torch_fp16_ms": 1000 * torch_r["seconds"], "engine_build_s": build_s,
            "max_levels_vs_torch_fp16": levels, "peak_gib": peak_gib(suite.device),
            "summary": f"{ms:.1f} ms/image (VAE encode + UNet + VAE decode engines, fp16) vs torch fp16 "
                       f"{1000 * torch_r['seconds']:.1f} ms end to end; engines built in {build_s:.0f} s; "
                       f"max {levels:.0f} levels from torch fp16 (before colour fix)"}
