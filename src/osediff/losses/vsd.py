"""Variational score distillation (VSD) in latent space, and the regulariser's diffusion loss.

Notation (paper, Sec. 3.3): the generator's latent z = z_H; a timestep t ~ U[t_min, t_max); noise
eps ~ N(0, I); z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps. Two UNets predict x0 from z_t:

- the regulariser eps_phi' (SD UNet + its own trained LoRA, no gradient), conditioned on the prompt;
- the frozen SD UNet eps_phi with classifier-free guidance:
  eps_cfg = eps_phi(z_t, t, c_neg) + s * (eps_phi(z_t, t, c) - eps_phi(z_t, t, c_neg)).

With x0(eps) = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), the VSD gradient on z is

    grad = (x0_phi' - x0_phi) / w,    w = mean_{c,h,w} |z - x0_phi|    (per sample),

applied, as the authors do, through the surrogate ``mean((z - sg(z - grad))^2)``, whose value is
mean(grad^2) and whose derivative is d/dz = 2 * grad / numel(z). The regulariser itself learns the
distribution of generated latents with the standard epsilon loss on detached z and prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import predict_x0

# (z_t, t, prompt embeddings) -> predicted noise
EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def x0_from_eps(z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """:func:`osediff.diffusion.predict_x0` with abar_t looked up per sample."""
    return predict_x0(z_t, eps, _per_sample(alphas_cumprod.to(z_t.device, torch.float32)[t], z_t))


@dataclass
class VSDResult:
    loss: torch.Tensor  # surrogate, differentiable w.r.t. z
    grad: torch.Tensor  # the VSD gradient direction (x0_phi' - x0_phi) / w, detached
    t: torch.Tensor


def vsd_loss(z: torch.Tensor, eps_regulariser: EpsModel, eps_frozen: EpsModel, prompt_embeds: torch.Tensor,
             negative_embeds: torch.Tensor, scheduler, cfg_scale: float, t_range: tuple[int, int],
             generator: torch.Generator | None = None) -> VSDResult:
    """VSD surrogate loss on latents ``z`` (N, 4, h, w); both UNets run without gradient."""
    n = z.shape[0]
    t = torch.randint(t_range[0], t_range[1], (n,), device=z.device, generator=generator)
    noise = torch.randn(z.shape, device=z.device, dtype=torch.float32, generator=generator)
    with torch.no_grad():
        z_detached = z.detach().float()
        z_t = scheduler.add_noise(z_detached, noise, t)
        alphas = scheduler.alphas_cumprod
        x0_reg = x0_from_eps(z_t, eps_regulariser(z_t, t, prompt_embeds), t, alphas)
        eps_both = eps_frozen(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([negative_embeds, prompt_embeds]))
        eps_uncond, eps_cond = eps_both.float().chunk(2)
        eps_cfg = eps_uncond + cfg_scale * (eps_cond - eps_uncond)
        x0_frozen = x0_from_eps(z_t, eps_cfg, t, alphas)
        w = (z_detached - x0_frozen).abs().mean(dim=tuple(range(1, z.ndim)), keepdim=True)
        grad = (x0_reg - x0_frozen) / w
    zf = z.float()
    loss = F.mse_loss(zf, (zf - grad).detach())
    return VSDResult(loss, grad, t)


def diffusion_loss(eps_model: EpsModel, z: torch.Tensor, prompt_embeds: torch.Tensor, scheduler,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard epsilon loss mean ||eps_phi'(z_t, t, c) - eps||^2, t ~ U{0..T-1}, on detached inputs."""
    z = z.detach().float()
    n = z.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), device=z.device, generator=generator)
    noise = torch.randn(z.shape, device=z.device, dtype=torch.float32, generator=generator)
    z_t = scheduler.add_noise(z, noise, t)
    return F.mse_loss(eps_model(z_t, t, prompt_embeds.detach()).float(), noise)
