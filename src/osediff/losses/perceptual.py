"""LPIPS (VGG) perceptual loss, as in the authors' training (``lpips.LPIPS(net="vgg")``).

The ``lpips`` package ships its linear heads; the VGG16 backbone comes from torchvision's
ImageNet weights, downloaded once into the torch hub cache. Offline without that cache the
build fails with one clear line instead of a urllib traceback.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import OSEDiffError
from ..fileio import first_line


class LPIPSWeightsError(OSEDiffError, RuntimeError):
    """The VGG16 ImageNet weights LPIPS needs are neither cached nor downloadable."""


def _fetch_vgg16_weights() -> None:
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    try:
        weights.get_state_dict(progress=False)  # cached in torch.hub.get_dir()/checkpoints after one download
    except Exception as err:  # urllib, SSL and OS errors all mean the same thing here
        detail = f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
        raise LPIPSWeightsError(
            f"LPIPS needs torchvision's VGG16 ImageNet weights ({weights.url}) and could not get them "
            f"({detail}); connect once, or place "
            f"the file in {torch.hub.get_dir()}/checkpoints/, or set loss.lpips_pretrained: false for a smoke run"
        ) from None


def build_lpips(pretrained: bool = True) -> nn.Module:
    """A frozen LPIPS-VGG network taking images in [-1, 1]; ``pretrained=False`` uses a random VGG16.

    The random variant keeps the exact architecture and the package's linear heads, so tests run
    the real code path without network access.
    """
    import lpips

    if pretrained:
        _fetch_vgg16_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation, inside lpips
        net = lpips.LPIPS(net="vgg", pnet_rand=not pretrained, verbose=False)
    return net.eval().requires_grad_(False)
