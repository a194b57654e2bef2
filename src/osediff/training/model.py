"""The networks OSEDiff trains: the one-step generator and the VSD regulariser.

Generator G_theta (paper Eq. 2-3): z_L = E_theta(x_L) (VAE encoder with LoRA, ``latent_dist.sample()``
times the scaling factor, as the authors train), eps = UNet_theta(z_L; t = T = 999, c_y),
z_H = (z_L - sqrt(1 - abar_T) eps) / sqrt(abar_T), x_H = D(z_H) clamped to [-1, 1]. The UNet carries
the authors' three LoRA adapters and a fully trainable ``conv_in``; the decoder is frozen unless the
config trains a decoder LoRA.

Regulariser: a second copy of the SD UNet with its own LoRA (eps_phi'); with its adapters switched
off the same module is the frozen teacher eps_phi, so one UNet's weights serve both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..checkpoint.weights import OSEDiffWeights
from ..diffusion import ONE_STEP_TIMESTEP, predict_x0
from ..lora import UNET_ADAPTERS, VAE_ADAPTER, VAE_PATTERNS, attach_lora_adapters, unet_lora_targets, vae_lora_targets

VAE_DECODER_ADAPTER = "default_decoder"
# The authors add the regulariser's three UNet adapters without selecting them, so only the last one
# added trains (peft activates the newest adapter); "all" trains the three groups, 10.8x the parameters.
REGULARIZER_ADAPTERS = {"authors": ("default_others",), "all": UNET_ADAPTERS}


def vae_decoder_lora_targets(vae: nn.Module) -> list[str]:
    """VAE-decoder module names for the decoder-LoRA ablation (the encoder patterns, mirrored)."""
    names = []
    for name, _ in vae.named_parameters():
        if name.endswith(".weight") and "bias" not in name and "norm" not in name:
            module = name[: -len(".weight")]
            in_decoder = module.startswith("decoder.") and any(p in module for p in VAE_PATTERNS)
            if in_decoder or module == "post_quant_conv":
                names.append(module)
    return names


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base network; requires_grad flags are restored afterwards."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    flags = {p: p.requires_grad for m in layers for p in m.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # peft re-enables grads of active adapters here
        for param, flag in flags.items():
            param.requires_grad_(flag)


def _freeze_except(model: nn.Module, trainable: list[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(any(key in name for key in trainable))


class Generator(nn.Module):
    """VAE encoder LoRA + UNet LoRA (+ conv_in) one-step generator."""

    def __init__(self, vae: nn.Module, unet: nn.Module, alphas_cumprod: torch.Tensor, rank_unet: int = 4,
                 rank_vae: int = 4, train_vae: str = "encoder", train_conv_in: bool = True) -> None:
        super().__init__()
        self.rank_unet, self.rank_vae, self.train_vae = rank_unet, rank_vae, train_vae
        self.unet_targets = unet_lora_targets(unet)
        self.vae_targets = vae_lora_targets(vae) if train_vae in ("encoder", "both") else []
        self.vae_decoder_targets = vae_decoder_lora_targets(vae) if train_vae in ("decoder", "both") else []
        attach_lora_adapters(unet, self.unet_targets, {}, rank_unet)
        vae_adapters = {VAE_ADAPTER: self.vae_targets, VAE_DECODER_ADAPTER: self.vae_decoder_targets}
        if any(vae_adapters.values()):
            attach_lora_adapters(vae, vae_adapters, {}, rank_vae)
        self.vae, self.unet = vae, unet
        _freeze_except(unet, ["lora_"] + (["conv_in.base_layer"] if train_conv_in else []))
        _freeze_except(vae, ["lora_"])
        self.register_buffer("abar_T", alphas_cumprod[ONE_STEP_TIMESTEP].float().clone(), persistent=False)
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, x_lq: torch.Tensor, prompt_embeds: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_lq`` (N, 3, H, W) in [-1, 1] -> (x_H in [-1, 1], z_H)."""
        # inputs stay fp32: under mixed precision the forward runs in autocast over half-precision weights
        z_l = self.vae.encode(x_lq).latent_dist.sample(generator) * self.scaling_factor
        t = torch.full((x_lq.shape[0],), ONE_STEP_TIMESTEP, device=x_lq.device, dtype=torch.long)
        eps = self.unet(z_l, t, encoder_hidden_states=prompt_embeds).sample
        z_h = predict_x0(z_l, eps, self.abar_T)
        return self.decode(z_h), z_h

    def decode(self, z_h: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z_h / self.scaling_factor).sample.clamp(-1, 1)

    def encode_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Latent of an image through the base VAE encoder (no LoRA): image-space VSD's z."""
        # a checkpointed pass would be recomputed in backward with the LoRA back on: store activations
        flagged = {m: m.gradient_checkpointing for m in self.vae.encoder.modules()
                   if hasattr(m, "gradient_checkpointing")}
        for module in flagged:
            module.gradient_checkpointing = False
        try:
            with lora_disabled(self.vae):
                return self.vae.encode(x).latent_dist.mode() * self.scaling_factor
        finally:
            for module, flag in flagged.items():
                module.gradient_checkpointing = flag

    def export(self) -> OSEDiffWeights:
        """The trained weights in the authors' osediff.pkl layout (peft names, fp32)."""
        unet_state = {k: v.detach().float().cpu().clone() for k, v in self.unet.state_dict().items()
                      if "lora_" in k or "conv_in" in k}
        vae_state = {k: v.detach().float().cpu().clone() for k, v in self.vae.state_dict().items() if "lora_" in k}
        extra = {}
        if self.vae_decoder_targets:
            # not in the authors' format: merging loaders apply these tensors, peft-adapter loaders refuse them
            extra["vae_decoder_targets"] = ",".join(self.vae_decoder_targets)
        return OSEDiffWeights(self.rank_unet, self.rank_vae, self.unet_targets, self.vae_targets,
                              unet_state, vae_state, extra=extra)


class Regulariser(nn.Module):
    """eps_phi' (SD UNet + LoRA); ``frozen_eps`` runs the same UNet as the frozen teacher eps_phi.

    ``adapters``: "authors" trains the LoRA of the authors' "others" group (mid block, time embedding
    and the other modules outside the down and up paths), the only one active in their training;
    "all" adds the down- and up-path groups.
    """

    def __init__(self, unet: nn.Module, rank: int = 4, adapters: str = "authors") -> None:
        super().__init__()
        if adapters not in REGULARIZER_ADAPTERS:
            raise ValueError(f"regulariser adapters must be one of {', '.join(REGULARIZER_ADAPTERS)}, got {adapters!r}")
        targets = unet_lora_targets(unet)
        attach_lora_adapters(unet, {name: targets[name] for name in REGULARIZER_ADAPTERS[adapters]}, {}, rank)
        _freeze_except(unet, ["lora_"])
        self.unet = unet

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        return self.unet(z_t, t, encoder_hidden_states=prompt_embeds).sample

    @torch.no_grad()
    def frozen_eps(self, z_t: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        with lora_disabled(self.unet):
            return self.forward(z_t, t, prompt_embeds)


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Store frozen weights in ``dtype`` (half under mixed precision); trainable ones stay fp32.

    fp32 trainable weights are what GradScaler and AdamW need; the frozen SD weights are most of
    the memory and lose nothing in half precision.
    """
    for param in model.parameters():
        param.data = param.data.to(torch.float32 if param.requires_grad else dtype)

