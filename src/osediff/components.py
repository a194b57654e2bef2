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
    text_encoder: torch.nn.Module | None
    tokenizer: object | None
    scheduler: object


def load_base_components(base: str | os.PathLike | None = None, *, local_files_only: bool = False,
                         text_encoder: bool = True) -> BaseComponents:
    """VAE, UNet, CLIP text encoder, tokenizer and DDPM scheduler, in fp32 on the CPU.

    ``base`` is a local diffusers folder or a hub id; ``None`` tries the SD-2.1-base mirrors.
    ``text_encoder=False`` leaves it out (``None``), for callers that encoded their prompts already.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(resolve_base(base, local_files_only=local_files_only))
    encoder, tokenizer = load_text_encoder(folder) if text_encoder else (None, None)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    for model in (vae, unet):
        model.eval().requires_grad_(False)
    return BaseComponents(vae, unet, encoder, tokenizer, scheduler)


def load_text_encoder(base: str | os.PathLike | None = None, *, local_files_only: bool = False):
    """The CLIP text encoder (fp32, CPU, frozen) and its tokenizer."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(resolve_base(base, local_files_only=local_files_only))
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval().requires_grad_(False)
    return encoder, CLIPTokenizer.from_pretrained(folder / "tokenizer")


@torch.no_grad()
def encode_text(tokenizer, text_encoder: torch.nn.Module, prompt: str) -> torch.Tensor:
    """CLIP last hidden state (1, 77, d) of ``prompt``, padded to the tokenizer's length."""
    ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(next(text_encoder.parameters()).device))[0]
