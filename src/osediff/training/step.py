"""One generator step and one critic (regulariser or discriminator) step, as pure loss functions.

Generator loss (paper Eq. 7): L = lambda_l2 * MSE(x_H, x_HQ) + lambda_lpips * LPIPS(x_H, x_HQ)
+ lambda_reg * R(x_H), where R is VSD on z_H (default), VSD on the re-encoded output image, an
adversarial term, or nothing. The critic then learns from the detached generator output: the
regulariser LoRA UNet with the epsilon loss, or the discriminator with the logistic loss.
Randomness comes only from the ``torch.Generator`` passed in, so a step is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import diffusion_loss, discriminator_loss, generator_adversarial_loss, vsd_loss
from .config import LossConfig


@dataclass
class GeneratorStep:
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    x_h: torch.Tensor | None = None  # generated image, [-1, 1]
    z_critic: torch.Tensor | None = None  # the latent the VSD critic learns from (detached)


def model_inputs(hq: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LQ bicubic-resized to the HQ size unless already there, HQ), mapped from [0, 1] to [-1, 1]."""
    lq_up = lq.float()
    if lq_up.shape[-2:] != hq.shape[-2:]:
        lq_up = F.interpolate(lq_up, size=hq.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return lq_up * 2 - 1, hq.float() * 2 - 1


def generator_losses(generator: nn.Module, regulariser: nn.Module | None, lpips: nn.Module, x_lq: torch.Tensor,
                     x_hq: torch.Tensor, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor, scheduler,
                     cfg: LossConfig, rng: torch.Generator, critic: nn.Module | None = None) -> GeneratorStep:
    """Forward the generator and combine its losses. ``regulariser`` is the unwrapped VSD module
    (used without gradient); ``critic`` the discriminator for the adversarial option."""
    x_h, z_h = generator(x_lq, prompt_embeds, rng)
    terms = {
        "l2": F.mse_loss(x_h.float(), x_hq) * cfg.lambda_l2,
        "lpips": lpips(x_h.float(), x_hq).mean() * cfg.lambda_lpips,
    }
    z_critic = None
    if cfg.regularization in ("vsd_latent", "vsd_image"):
        # image-space VSD: the output image's latent under the frozen encoder, gradient through it
        z = z_h if cfg.regularization == "vsd_latent" else _unwrap(generator).encode_frozen(x_h)
        result = vsd_loss(z, regulariser, regulariser.frozen_eps, prompt_embeds, negative_embeds, scheduler,
                          cfg.cfg_scale, (cfg.t_min, cfg.t_max), rng)
        terms["vsd"] = result.loss * cfg.lambda_reg
        z_critic = z.detach()
    elif cfg.regularization == "adversarial":
        # the discriminator is frozen here: only the critic step may update it
        discriminator = _unwrap(critic)
        discriminator.requires_grad_(False)
        try:
            terms["adv"] = generator_adversarial_loss(discriminator(x_h)) * cfg.lambda_reg
        finally:
            discriminator.requires_grad_(True)
    total = torch.stack(list(terms.values())).sum()
    return GeneratorStep(total, terms, x_h, z_critic)


def critic_loss(step: GeneratorStep, x_hq: torch.Tensor, prompt_embeds: torch.Tensor, scheduler, cfg: LossConfig,
                rng: torch.Generator, critic: nn.Module) -> torch.Tensor:
    """The critic's own loss, weighted by lambda_reg_lora: eps-MSE (VSD) or logistic (adversarial)."""
    if cfg.regularization == "adversarial":
        # one forward for real and fake: DDP expects one forward per backward
        logits_real, logits_fake = critic(torch.cat([x_hq, step.x_h.detach().float()])).chunk(2)
        loss = discriminator_loss(logits_real, logits_fake)
    else:
        loss = diffusion_loss(critic, step.z_critic, prompt_embeds, scheduler, rng)
    return loss * cfg.lambda_reg_lora


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
