"""``osediff export --format onnx``: the one-step model as four ONNX graphs and what running them needs.

    vae_encoder/   x (N, 3, H, W) in [-1, 1]        -> mean, std of q(z | x)   (z_L = sf * mean)
    unet/          z (N, 4, h, w), c (N, 77, d)     -> eps at t = 999          (LoRA merged, conv_in tuned)
    vae_decoder/   z_H (N, 4, h, w), scaled by sf   -> x in [-1, 1]
    text_encoder/  input_ids (1, 77)                -> CLIP last hidden state  (prompts at run time)
    tokenizer/, osediff_export.json (sf, abar_999, the weights' sha256, versions, precision)

each graph folder holding model.onnx and its weights, model.onnx.data.

Batch, height and width are dynamic. The one-step update x0 = (z_L - sqrt(1 - abar) eps) / sqrt(abar)
stays outside the graphs, in fp32, where the runtime (:mod:`osediff.export.runtime`) computes it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .. import __version__
from ..diffusion import ONE_STEP_TIMESTEP
from ..fileio import replaced_folder
from .folder import GRAPH_FILES, GRAPHS, ExportError, graph_path, write_metadata

OPSET = 17
GRAPH_FILE, WEIGHTS_FILE = GRAPH_FILES["onnx"]


class _Encoder(torch.nn.Module):
    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.std


class _UNet(torch.nn.Module):
    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        timestep = torch.full((1,), ONE_STEP_TIMESTEP, dtype=torch.long)
        return self.unet(z, timestep, encoder_hidden_states=context).sample


class _Decoder(torch.nn.Module):
    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.vae.config.scaling_factor).sample.clamp(-1, 1)


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


def export_onnx(pipe, out: Path, *, weights_sha256: str = "", opset: int = OPSET) -> dict:
    """Write ``pipe``'s graphs (fp32, on the CPU), tokenizer and metadata into ``out``; the metadata.

    ``pipe`` is an :class:`~osediff.pipeline.OSEDiffPipeline` with its LoRA merged and its text encoder.
    """
    if pipe.text_encoder is None:
        raise ExportError("the pipeline's text encoder was freed; load it with its text encoder to export")
    if pipe.device.type != "cpu" or pipe.dtype != torch.float32 or pipe.vae.dtype != torch.float32:
        raise ExportError("export from a pipeline loaded on the CPU in float32 (device='cpu', dtype='fp32')")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae, unet, text = pipe.vae.eval(), pipe.unet.eval(), pipe.text_encoder
    sf, d = float(vae.config.scaling_factor), int(unet.config.cross_attention_dim)
    # odd latent sides: the UNet then traces the path that upsamples to the skip connection's size,
    # which holds for every size (the path for sides divisible by 2^depth would be baked in otherwise)
    pixels, latents = torch.zeros(1, 3, 56, 40), torch.zeros(1, 4, 7, 5)
    image_axes = {0: "batch", 2: "height", 3: "width"}
    graphs = {
        "vae_encoder": (_Encoder(vae), (pixels,), ["x"], ["mean", "std"],
                        {"x": image_axes, "mean": image_axes, "std": image_axes}),
        "unet": (_UNet(unet), (latents, torch.zeros(1, 77, d)), ["z", "context"], ["eps"],
                 {"z": image_axes, "context": {0: "batch"}, "eps": image_axes}),
        "vae_decoder": (_Decoder(vae), (latents,), ["z"], ["x"], {"z": image_axes, "x": image_axes}),
        "text_encoder": (_TextEncoder(text.eval()), (torch.zeros(1, 77, dtype=torch.long),), ["input_ids"],
                         ["hidden"], None),
    }
    for name, (module, args, inputs, outputs, axes) in graphs.items():
        _export_graph(module, args, inputs, outputs, axes, out / name, opset)
    pipe.tokenizer.save_pretrained(out / "tokenizer")
    metadata = {"format": "onnx", "precision": "fp32", "opset": opset, "scaling_factor": sf,
                "alpha_bar": float(pipe.alpha_bar), "timestep": ONE_STEP_TIMESTEP, "cross_attention_dim": d,
                "weights_sha256": weights_sha256, "osediff": __version__, "torch": torch.__version__,
                "graphs": {name: graph_path(name, "onnx").as_posix() for name in GRAPHS}}
    write_metadata(out, metadata)
    return metadata


def _export_graph(module: torch.nn.Module, args: tuple, inputs: list[str], outputs: list[str], axes: dict | None,
                  folder: Path, opset: int) -> None:
    """One graph into ``folder`` as model.onnx + model.onnx.data: the weights beside the graph, since
    protobuf files stop at 2 GB (the full-size UNet is 3.4 GB in fp32). The pair replaces any earlier
    one only once both are written."""
    import shutil

    import onnx

    with replaced_folder(folder) as staging:
        traced = staging / "traced" / GRAPH_FILE
        traced.parent.mkdir()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks that hold for any input
            torch.onnx.export(module, args, str(traced), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        onnx.save_model(onnx.load(str(traced)), str(staging / GRAPH_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=WEIGHTS_FILE, size_threshold=0)
        shutil.rmtree(staging / "traced")
