"""Loading the Stable Diffusion 2.1-base components OSEDiff is built on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint.hub import resolve_base


@dataclass
class BaseComponents:
    vae: torch.nn.Module
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object


def load_base_components(base: str | os.PathLike | None = None, *, local_files_only: bool = False) -> BaseComponents:
    """VAE, UNet, CLIP text encoder, tokenizer and DDPM scheduler, in fp32 on the CPU.

    ``base`` is a local diffusers folder or a hub id; ``None`` tries the SD-2.1-base mirrors.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(resolve_base(base, local_files_only=local_files_only))
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    for model in (vae, unet, text_encoder):
        model.eval().requires_grad_(False)
    return BaseComponents(vae, unet, text_encoder, tokenizer, scheduler)
