"""The one-step jump from the last DDPM timestep straight to a clean latent.

OSEDiff runs its UNet once, at t = 999, and takes the DDPM x0 prediction as the result:

    z_0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)

Training (the generator and VSD's x0 predictions at random t) uses the same formula.
"""

from __future__ import annotations

import torch

ONE_STEP_TIMESTEP = 999


def predict_x0(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """x0 from a noisy latent and predicted noise, in fp32.

    fp32 because the eps error is amplified by 1 / sqrt(abar_999) ~ 14.6; ``alpha_bar`` is a number,
    or a tensor that broadcasts against ``z_t`` (one value per sample).
    """
    abar = torch.as_tensor(alpha_bar, dtype=torch.float32, device=z_t.device)
    return (z_t.float() - (1 - abar).sqrt() * eps.float()) / abar.sqrt()
