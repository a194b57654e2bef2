"""Training losses: VSD (latent/image space), its regulariser's diffusion loss, LPIPS, adversarial."""

from .adversarial import PatchDiscriminator, discriminator_loss, generator_adversarial_loss
from .perceptual import LPIPSWeightsError, build_lpips
from .vsd import VSDResult, diffusion_loss, vsd_loss, x0_from_eps

__all__ = [
    "LPIPSWeightsError",
    "PatchDiscriminator",
    "VSDResult",
    "build_lpips",
    "diffusion_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "vsd_loss",
    "x0_from_eps",
]
