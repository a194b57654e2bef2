"""Exported models run under the per-image step, with the methods the step needs of a model.

``Upscaler(load_exported(folder))`` runs the same step as the torch pipeline on the graphs of an
export folder (:mod:`osediff.export.onnx`, :mod:`osediff.export.openvino`): ONNX Runtime for
``format: onnx``, OpenVINO for ``format: openvino``. The encoder, UNet, decoder and text encoder
run in the runtime; in between, the same fp32 maths as the pipeline (latent from the encoder's
mean, or a sample from the torch generator the pipeline uses; x0 from eps; the fidelity
strength; guidance as one UNet batch of two). UNet tiles go through the graph one pass at a time
as in the pipeline, so they give the pipeline's result; the VAE graphs run over blended tiles
(:mod:`osediff.export.vae_tiles`), close to but not equal to the untiled VAE.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion import predict_x0
from ..params import AUTO_VAE_DECODER_TILE, AUTO_VAE_ENCODER_TILE, LatentMode, TileConfig
from ..pipeline.model import VAE_MULTIPLE, guided_noise, pad_to_multiple
from ..pipeline.timing import timed
from .folder import GRAPHS, ExportError, graph_path, read_metadata
from .vae_tiles import LATENT_SCALE, blended_tiles, decoder_tiling, encoder_tiling


def load_exported(folder: Path, inference: str = "f32") -> ExportedOneStepModel:
    """The runtime model of an export folder, by the format its metadata names; ``inference`` bf16
    (OpenVINO only) computes the layers that are not int8 in bf16."""
    if read_metadata(folder)["format"] == "openvino":
        return OpenVinoOneStepModel(folder, inference=inference)
    if inference != "f32":
        raise ExportError(f"{folder}: ONNX Runtime runs exports in their own precision, not {inference}")
    return OnnxOneStepModel(folder)


UNTILED = TileConfig(enabled=False)


class ExportedOneStepModel(ABC):
    """The step's model protocol over four exported graphs; subclasses run one graph by name."""

    inference = "f32"  # the precision the layers that are not int8 compute in

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.metadata = read_metadata(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
        self.scaling_factor = float(self.metadata["scaling_factor"])
        self.alpha_bar = float(self.metadata["alpha_bar"])
        self._graphs: dict[str, Any] = {}

    @property
    def text_encoder(self) -> object | None:
        """The text encoder's graph; set to None (as the pipeline's) to free it."""
        return self._graphs.get("text_encoder")

    @text_encoder.setter
    def text_encoder(self, value: object | None) -> None:
        if value is not None:
            raise ExportError("the text encoder can only be freed (set to None)")
        self._graphs.pop("text_encoder", None)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def describe_precision(self) -> str:
        """The runtime and precision, e.g. ``openvino int8`` (see :func:`osediff.loading.describe_precision`)."""
        described = f"{self.metadata['format']} {self.metadata['precision']}"
        return described + (" in bf16" if self.inference == "bf16" else "")

    @abstractmethod
    def _run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of graph ``name`` for ``feeds``, in the graph's output order."""

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {key: value.detach().cpu().numpy() for key, value in inputs.items()}
        return [torch.from_numpy(np.asarray(out)) for out in self._run_graph(name, feeds)]

    def _unet(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self._run("unet", z=latents.float(), context=context.float())[0]

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        if self.text_encoder is None:
            raise ExportError(f"prompt {prompt!r} was not among the prompts encoded before the text encoder went")
        ids = self.tokenizer(prompt, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids
        return self._run("text_encoder", input_ids=ids.long())[0]

    def encode_latent(self, x_l: torch.Tensor, latent: LatentMode = "mode", seed: int | None = None,
                      tiles: TileConfig = UNTILED) -> torch.Tensor:
        """z_L of images in [0, 1] (padded to the VAE's multiple), in blended tiles if ``tiles`` says so."""
        x = pad_to_multiple(x_l.float() * 2 - 1, VAE_MULTIPLE)
        tile, overlap = (encoder_tiling(tiles.vae_encoder_tile or AUTO_VAE_ENCODER_TILE) if tiles.enabled
                         else (max(x.shape[-2:]), 0))
        mean, std = blended_tiles(lambda part: self._run("vae_encoder", x=part), x, tile, overlap, 1 / LATENT_SCALE)
        if latent == "sample":
            generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
            mean = mean + std * torch.randn(mean.shape, generator=generator)
        return mean * self.scaling_factor

    def super_resolve(self, x_l: torch.Tensor, embedding: torch.Tensor, *, tiles: TileConfig,
                      latent: LatentMode = "mode", seed: int | None = None, strength: float = 1.0,
                      guidance: float = 1.0, negative: torch.Tensor | None = None,
                      timings: dict[str, float] | None = None) -> torch.Tensor:
        """As :meth:`osediff.pipeline.OSEDiffPipeline.super_resolve`, through the graphs."""
        timings = {} if timings is None else timings
        height, width = x_l.shape[-2:]
        with timed(timings, "vae_encode", self.device):
            z_l = self.encode_latent(x_l, latent, seed, tiles)
        with timed(timings, "unet", self.device):
            eps = guided_noise(self._unet, z_l, embedding, tiles, guidance=guidance, negative=negative)
            z_h = predict_x0(z_l, eps, self.alpha_bar)
            if strength != 1.0:
                z_h = z_l + strength * (z_h - z_l)
        with timed(timings, "vae_decode", self.device):
            x_h = self.decode(z_h, tiles)[..., :height, :width]
        return (x_h + 1) / 2

    def decode(self, z_h: torch.Tensor, tiles: TileConfig = UNTILED) -> torch.Tensor:
        """The decoder's image in [-1, 1] of the scaled latent ``z_h``, in blended tiles if ``tiles`` says so."""
        tile, overlap = (decoder_tiling(tiles.vae_decoder_tile or AUTO_VAE_DECODER_TILE) if tiles.enabled
                         else (max(z_h.shape[-2:]), 0))
        return blended_tiles(lambda part: self._run("vae_decoder", z=part.float()), z_h, tile, overlap,
                             LATENT_SCALE)[0]


class OnnxOneStepModel(ExportedOneStepModel):
    """The graphs of an ONNX export folder in ONNX Runtime sessions (CPU unless ``providers``)."""

    def __init__(self, folder: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        super().__init__(folder)
        if self.metadata["format"] != "onnx":
            raise ExportError(f"{folder}: a {self.metadata['format']} export, not onnx (use load_exported)")
        providers = providers or ["CPUExecutionProvider"]
        self._graphs = {name: ort.InferenceSession(str(self.folder / graph_path(name, "onnx")), ort.SessionOptions(),
                                                    providers=providers) for name in GRAPHS}

    def _run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._graphs[name].run(None, feeds)


class OpenVinoOneStepModel(ExportedOneStepModel):
    """The graphs of an OpenVINO export folder compiled for the CPU.

    Inference precision is f32 unless ``inference="bf16"``: OpenVINO would otherwise run f32 graphs
    in bf16 on CPUs that have it, which is no longer the exported model (bf16 is asked for by name,
    ``--precision bf16``, with its drift stated); int8 graphs keep their quantised layers int8.
    """

    def __init__(self, folder: Path, device: str = "CPU", inference: str = "f32") -> None:
        import openvino as ov

        super().__init__(folder)
        if self.metadata["format"] != "openvino":
            raise ExportError(f"{folder}: a {self.metadata['format']} export, not openvino (use load_exported)")
        core = ov.Core()
        if inference not in ("f32", "bf16"):
            raise ExportError(f"inference precision must be f32 or bf16, got {inference!r}")
        self.inference = inference
        config = {"INFERENCE_PRECISION_HINT": inference, "PERFORMANCE_HINT": "LATENCY"}
        self._graphs = {name: core.compile_model(str(self.folder / graph_path(name, "openvino")), device, config)
                         for name in GRAPHS}

    def _run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = self._graphs[name]
        results = compiled.create_infer_request().infer(feeds)  # a request per call: safe across threads
        return [results[output] for output in compiled.outputs]


RUNTIMES: dict[str, type[ExportedOneStepModel]] = {"onnx": OnnxOneStepModel, "openvino": OpenVinoOneStepModel}
