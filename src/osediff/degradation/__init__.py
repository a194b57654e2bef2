"""Real-ESRGAN second-order degradation model for synthesising LQ training inputs.

>>> from osediff.degradation import DegradationConfig, RealESRGANDegradation
>>> deg = RealESRGANDegradation(DegradationConfig())
>>> lq = deg(hq, generator=torch.Generator().manual_seed(0))  # (N,3,H,W) -> (N,3,H/4,W/4)
"""

from .config import BlurConfig, ColorJitterConfig, DegradationConfig, StageConfig
from .pipeline import RealESRGANDegradation, SampleParams, StageParams

__all__ = [
    "BlurConfig",
    "ColorJitterConfig",
    "DegradationConfig",
    "RealESRGANDegradation",
    "SampleParams",
    "StageConfig",
    "StageParams",
]
