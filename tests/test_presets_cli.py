"""--preset: the face model's weights and defaults reach the batch job; weights resolve through the preset."""

from __future__ import annotations

import argparse

import pytest

from osediff.checkpoint import ModelNotFoundError
from osediff.cli import build_parser
from osediff.cli.upscale import config_from_args
from osediff.presets import PRESETS, resolve_weights


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["upscale", *argv])


def test_face_preset_sets_factor_alignment_and_weights(tmp_path):
    config = config_from_args(parse("in.png", "-o", str(tmp_path), "--preset", "face"))
    assert (config.upscale, config.align, config.model.preset) == (1.0, "none", "face")
    config = config_from_args(parse("in.png", "-o", str(tmp_path), "--preset", "face", "-s", "2", "--align", "adain"))
    assert (config.upscale, config.align) == (2.0, "adain")  # explicit flags win over the preset
    config = config_from_args(parse("in.png", "-o", str(tmp_path)))
    assert (config.upscale, config.align, config.model.preset) == (4.0, "adain", "osediff")


def test_unknown_preset_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse("in.png", "-o", "out", "--preset", "faces")
    assert "invalid choice: 'faces'" in capsys.readouterr().err


def test_resolve_weights_tries_the_presets_published_file_and_names_the_flag(monkeypatch, tmp_path):
    tried = []

    def fake_resolve_file(spec, *, mirrors=(), sha256=None, option=None, local_files_only=False):
        tried.append((spec, mirrors, local_files_only))
        raise ModelNotFoundError(f"{spec}: not in the cache", option=option)

    monkeypatch.setattr("osediff.presets.resolve_file", fake_resolve_file)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_weights(None, preset="face", local_files_only=True)
    assert tried == [(PRESETS["face"].weights, (), True)]
    assert "--weights" in info.value.cli_message()
    local = tmp_path / "mine.pkl"
    with pytest.raises(ModelNotFoundError):
        resolve_weights(local)
    assert tried[-1] == (str(local), (), False)  # a user's file gets no mirrors and no pinned hash
    with pytest.raises(ModelNotFoundError):
        resolve_weights(None)
    assert tried[-1] == (PRESETS["osediff"].weights, PRESETS["osediff"].weights_mirrors, False)
