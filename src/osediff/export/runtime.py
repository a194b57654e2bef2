"""An exported model run by ONNX Runtime, with the methods the per-image step needs of a model.

``Upscaler(OnnxOneStepModel.load(folder))`` runs the same step as the torch pipeline: the graphs of
:mod:`osediff.export.onnx` for the encoder, UNet, decoder and text encoder, and in between the
same fp32 maths (latent from the encoder's mean, or a sample from the torch generator the pipeline
uses; x0 from eps; the fidelity strength; guidance as one UNet batch of two). UNet tiles go through
the graph one pass at a time as in the pipeline; the VAE graphs take whole images (no VAE tiling
with exported graphs yet: memory grows with the image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..diffusion import predict_x0
from ..params import LatentMode, TileConfig
from ..pipeline.model import VAE_MULTIPLE, guided_noise, pad_to_multiple
from ..pipeline.timing import timed
from .onnx import GRAPH_FILE, GRAPHS, METADATA, ExportError


class OnnxOneStepModel:
    """The four ONNX graphs of an export folder in ONNX Runtime sessions (CPU unless ``providers``)."""

    def __init__(self, folder: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(folder)
        try:
            self.metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ExportError(f"{folder}: not an osediff export folder (no readable {METADATA}: {err})") from None
        missing = [f"{name}/{GRAPH_FILE}" for name in GRAPHS if not (folder / name / GRAPH_FILE).is_file()]
        if missing:
            raise ExportError(f"{folder}: missing {', '.join(missing)}")
        options = ort.SessionOptions()
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {name: ort.InferenceSession(str(folder / name / GRAPH_FILE), options, providers=providers)
                         for name in GRAPHS}
        self.text_encoder = self.sessions["text_encoder"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        self.scaling_factor = float(self.metadata["scaling_factor"])
        self.alpha_bar = float(self.metadata["alpha_bar"])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {key: value.detach().cpu().numpy() for key, value in inputs.items()}
        return [torch.from_numpy(np.asarray(out)) for out in self.sessions[name].run(None, feeds)]

    def _unet(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self._run("unet", z=latents.float(), context=context.float())[0]

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        if self.text_encoder is None:
            raise ExportError(f"prompt {prompt!r} was not among the prompts encoded before the text encoder went")
        ids = self.tokenizer(prompt, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids
        return self._run("text_encoder", input_ids=ids.long())[0]

    def super_resolve(self, x_l: torch.Tensor, embedding: torch.Tensor, *, tiles: TileConfig,
                      latent: LatentMode = "mode", seed: int | None = None, strength: float = 1.0,
                      guidance: float = 1.0, negative: torch.Tensor | None = None,
                      timings: dict[str, float] | None = None) -> torch.Tensor:
        """As :meth:`osediff.pipeline.OSEDiffPipeline.super_resolve`, through the graphs."""
        timings = {} if timings is None else timings
        height, width = x_l.shape[-2:]
        with timed(timings, "vae_encode", self.device):
            mean, std = self._run("vae_encoder", x=pad_to_multiple(x_l.float() * 2 - 1, VAE_MULTIPLE))
            if latent == "sample":
                generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
                mean = mean + std * torch.randn(mean.shape, generator=generator)
            z_l = mean * self.scaling_factor
        with timed(timings, "unet", self.device):
            eps = guided_noise(self._unet, z_l, embedding, tiles, guidance=guidance, negative=negative)
            z_h = predict_x0(z_l, eps, self.alpha_bar)
            if strength != 1.0:
                z_h = z_l + strength * (z_h - z_l)
        with timed(timings, "vae_decode", self.device):
            x_h = self._run("vae_decoder", z=z_h.float())[0][..., :height, :width]
        return (x_h + 1) / 2
