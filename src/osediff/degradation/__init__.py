"""Degradation models that synthesise LQ training inputs: Real-ESRGAN's second-order model (the SR
model) and CodeFormer's single stage at factor 1 (the face model).

>>> from osediff.degradation import DegradationConfig, RealESRGANDegradation
>>> deg = RealESRGANDegradation(DegradationConfig())
>>> lq = deg(hq, generator=torch.Generator().manual_seed(0))  # (N,3,H,W) -> (N,3,H/4,W/4)
"""

from .codeformer import CodeFormerConfig, CodeFormerDegradation, FaceSampleParams
from .config import BlurConfig, ColorJitterConfig, DegradationConfig, StageConfig
from .realesrgan import RealESRGANDegradation, SampleParams, StageParams

__all__ = [
    "BlurConfig",
    "CodeFormerConfig",
    "CodeFormerDegradation",
    "ColorJitterConfig",
    "DegradationConfig",
    "FaceSampleParams",
    "RealESRGANDegradation",
    "SampleParams",
    "StageConfig",
    "StageParams",
]
