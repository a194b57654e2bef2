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
