"""Random-weight Stable Diffusion 2.1-base-shaped models for tests and benchmarks.

Nothing here touches the network: the tokenizer is a character-level BPE written in code, and
every network is initialised randomly with a seed. ``size="full"`` builds the real SD-2.1-base
architecture (identical compute cost to the published weights); ``size="tiny"`` keeps every block
type of it at a few channels so a forward pass takes milliseconds.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Literal

import torch

from .checkpoint.weights import OSEDiffWeights
from .components import BaseComponents
from .lora import UNET_ADAPTERS, VAE_PATTERNS, unet_lora_targets, vae_lora_targets

ModelSize = Literal["tiny", "full"]


def sd21_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, steps_offset=1)


def char_tokenizer(folder: str | Path | None = None, model_max_length: int = 77):
    """A CLIP tokenizer over single printable characters (no merges), like SD's in every other way."""
    from transformers import CLIPTokenizer

    folder = Path(folder or tempfile.mkdtemp(prefix="osediff-tok-"))
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {"!": 0}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                         pad_token="!", model_max_length=model_max_length)


def build_base(size: ModelSize = "tiny", seed: int = 0) -> BaseComponents:
    """Random SD-2.1-base-shaped VAE, UNet, CLIP text encoder, tokenizer and DDPM scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    full = size == "full"
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512) if full else (8, 16, 16, 16),
        layers_per_block=2 if full else 1, norm_num_groups=32 if full else 4, sample_size=768 if full else 64,
        scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=64 if full else 16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280) if full else (16, 16, 32, 32),
        layers_per_block=2 if full else 1, attention_head_dim=(5, 10, 20, 20) if full else (2, 2, 4, 4),
        cross_attention_dim=1024 if full else 32, use_linear_projection=True,
        norm_num_groups=32 if full else 4,
    )
    text_config = CLIPTextConfig(
        vocab_size=49408 if full else len(tokenizer), hidden_size=1024 if full else 32,
        intermediate_size=4096 if full else 64, num_attention_heads=16 if full else 4,
        num_hidden_layers=23 if full else 2, projection_dim=512 if full else 32, max_position_embeddings=77,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    for model in (vae, unet, text_encoder):
        model.eval().requires_grad_(False)
    return BaseComponents(vae, unet, text_encoder, tokenizer, sd21_scheduler())


def save_base(components: BaseComponents, folder: str | Path) -> Path:
    """Write components in the diffusers folder layout that :func:`osediff.checkpoint.resolve_base` reads."""
    folder = Path(folder)
    components.vae.save_pretrained(folder / "vae")
    components.unet.save_pretrained(folder / "unet")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def random_weights(components: BaseComponents, rank_unet: int = 4, rank_vae: int = 4, seed: int = 0,
                   lora_std: float = 0.05) -> OSEDiffWeights:
    """A random generator checkpoint with the authors' module selection and key names.

    LoRA A and B are both non-zero (unlike a fresh peft init, whose B is zero) so the LoRA path
    really changes the output, and ``conv_in`` is perturbed as fine-tuning would.
    """
    gen = torch.Generator().manual_seed(seed)
    unet_targets = unet_lora_targets(components.unet)
    vae_targets = vae_lora_targets(components.vae)
    unet_modules = dict(components.unet.named_modules())
    vae_modules = dict(components.vae.named_modules())

    def pairs(modules, names, adapter, rank):
        state = {}
        for name in names:
            weight = modules[name].weight
            a_shape = (rank, *weight.shape[1:])
            b_shape = (weight.shape[0], rank) + ((1, 1) if weight.ndim == 4 else ())
            state[f"{name}.lora_A.{adapter}.weight"] = torch.randn(a_shape, generator=gen) * lora_std
            state[f"{name}.lora_B.{adapter}.weight"] = torch.randn(b_shape, generator=gen) * lora_std
        return state

    unet_state: dict[str, torch.Tensor] = {}
    for adapter in UNET_ADAPTERS:
        unet_state.update(pairs(unet_modules, unet_targets[adapter], adapter, rank_unet))
    conv_in = components.unet.conv_in
    unet_state["conv_in.base_layer.weight"] = conv_in.weight + torch.randn(conv_in.weight.shape, generator=gen) * 0.02
    unet_state["conv_in.base_layer.bias"] = conv_in.bias + torch.randn(conv_in.bias.shape, generator=gen) * 0.02
    vae_state = pairs(vae_modules, vae_targets, "default_encoder", rank_vae)
    # the authors' VAE list names a module once per matching pattern: keep that quirk in the file
    vae_listed = [name for name in vae_targets for _ in range(max(1, sum(p in name for p in VAE_PATTERNS)))]
    return OSEDiffWeights(rank_unet, rank_vae, unet_targets, vae_listed, unet_state, vae_state)
