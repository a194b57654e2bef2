"""The face variant: inference presets and the CodeFormer degradation model."""

from __future__ import annotations

import pytest

from osediff.checkpoint.hub import DEFAULT_WEIGHTS, WEIGHTS_MIRRORS
from osediff.errors import OSEDiffError
from osediff.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset


def test_presets_name_the_published_weights_and_their_defaults():
    default = get_preset(DEFAULT_PRESET)
    assert default.name == "osediff" and default.weights == DEFAULT_WEIGHTS
    assert default.weights_mirrors == WEIGHTS_MIRRORS[1:]
    assert (default.upscale, default.align) == (4.0, "adain")
    face = get_preset("face")
    assert face.weights == "https://github.com/cswry/OSEDiff/raw/main/preset/models/osediff_face.pkl"
    assert (face.upscale, face.align) == (1.0, "none")
    assert all(isinstance(p, Preset) and p.name == name and p.description for name, p in PRESETS.items())


def test_unknown_preset_is_one_line_osediff_error():
    with pytest.raises(OSEDiffError) as err:
        get_preset("faces")
    assert str(err.value) == "unknown preset 'faces'; known presets: osediff, face"
    assert isinstance(err.value, ValueError)


# -- the CodeFormer face degradation ----------------------------------------------------------------

def _faces(n: int = 4, size: int = 64):
    """Sharp synthetic HQ images: checkerboards of different cell sizes over a colour ramp."""
    import torch

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(n):
        cells = ((yy // (2 + i)) + (xx // (2 + i))) % 2
        ramp = torch.stack([xx / size, yy / size, (xx + yy) / (2 * size)])
        out.append((0.6 * cells + 0.4 * ramp).clamp(0, 1))
    return torch.stack(out).float()


def test_face_degradation_defaults_are_the_authors_yaml():
    from osediff.degradation import CodeFormerConfig
    from osediff.typed_config import ConfigError

    authors = {"blur_kernel_size": 41, "kernel_list": ["iso", "aniso"], "kernel_prob": [0.5, 0.5],
               "blur_sigma": [1, 15], "downsample_range": [1, 30], "noise_range": [0, 20], "jpeg_range": [30, 100]}
    assert CodeFormerConfig.from_dict(authors) == CodeFormerConfig()
    assert CodeFormerConfig.from_dict({"noise_range": ["0", "2e1"]}).noise_range == (0.0, 20.0)
    with pytest.raises(ConfigError, match="downsample_range"):
        CodeFormerConfig.from_dict({"downsample_range": [0.5, 4]})
    with pytest.raises(ConfigError, match="unknown key 'jpeg_quality'"):
        CodeFormerConfig.from_dict({"jpeg_quality": [30, 95]})


def test_face_degradation_draws_lie_in_the_configured_ranges():
    import torch

    from osediff.degradation import CodeFormerDegradation

    params = CodeFormerDegradation().sample(300, (512, 512), torch.Generator().manual_seed(0))
    for p in params:
        assert p.kernel.shape == (41, 41) and abs(float(p.kernel.sum()) - 1) < 1e-5
        assert p.size[0] == p.size[1] and 512 // 30 <= p.size[0] <= 512
        assert 0 <= p.noise_sigma <= 20 and 30 <= p.jpeg_quality <= 100
    sizes = sorted(p.size[0] for p in params)
    # r ~ U(1, 30): about half the draws shrink 512 px below 512 / 15.5 = 33 px
    assert 0.4 < sum(s <= 33 for s in sizes) / len(sizes) < 0.6
    # iso kernels are symmetric under transposition, aniso ones (rotated) almost never
    symmetric = sum(torch.allclose(p.kernel, p.kernel.T, atol=1e-7) for p in params) / len(params)
    assert 0.4 < symmetric < 0.6


def test_face_degradation_keeps_the_size_and_is_seeded():
    import torch

    from osediff.degradation import CodeFormerConfig, CodeFormerDegradation

    hq = _faces()
    deg = CodeFormerDegradation()
    a = deg(hq, generator=torch.Generator().manual_seed(3))
    assert a.shape == hq.shape and a.dtype == hq.dtype and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, deg(hq, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, deg(hq, generator=torch.Generator().manual_seed(4)))
    # a strong fixed degradation removes the checkerboard's fine detail
    strong = CodeFormerDegradation(CodeFormerConfig(blur_sigma=(3, 3), downsample_range=(8, 8)))
    lq = strong(hq, generator=torch.Generator().manual_seed(0))
    assert (lq - hq).abs().mean() > 0.1
    assert (lq[:, :, 1:] - lq[:, :, :-1]).abs().mean() < 0.3 * (hq[:, :, 1:] - hq[:, :, :-1]).abs().mean()


def test_face_degradation_batch_equals_each_image_alone():
    import torch

    from osediff.degradation import CodeFormerDegradation

    hq = _faces()
    deg = CodeFormerDegradation()
    params = deg.sample(4, (64, 64), torch.Generator().manual_seed(1))
    params[1].size = params[0].size  # two samples share a group, two run alone
    for p in params:
        p.noise_sigma = 0.0  # the noise stream depends on the grouping; the rest must not
    batched = deg.apply(hq, params)
    for i in range(4):
        torch.testing.assert_close(batched[i:i + 1], deg.apply(hq[i:i + 1], [params[i]]), atol=1e-6, rtol=0)


def test_trainer_degrades_with_the_configured_model():
    from types import SimpleNamespace

    import torch

    from osediff.degradation import CodeFormerDegradation, RealESRGANDegradation
    from osediff.training.config import TrainConfig
    from osediff.training.loop import Trainer

    hq = _faces(2)
    for model, scale, kind, size in (("codeformer", 1, CodeFormerDegradation, 64),
                                     ("realesrgan", 4, RealESRGANDegradation, 16)):
        config = TrainConfig.from_dict({"data": {"degradation_model": model, "scale": scale, "crop_size": 64}})
        trainer = SimpleNamespace(config=config, degradation=None)  # degrade() needs only these two
        lq = Trainer.degrade(trainer, hq, torch.Generator().manual_seed(0))
        assert isinstance(trainer.degradation, kind) and lq.shape == (2, 3, size, size)
