"""--preset: the face model's weights and defaults reach the batch job; weights resolve through the preset."""

from __future__ import annotations

import argparse

import pytest

from osediff.checkpoint import ModelNotFoundError
from osediff.cli import build_parser
from osediff.cli.flags import flag_for
from osediff.cli.upscale import config_from_args
from osediff.presets import PRESETS, resolve_weights


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["upscale", *argv])


def test_face_preset_sets_factor_alignment_and_weights(tmp_path):
    config = config_from_args(parse("in.png", "-o", str(tmp_path), "--preset", "face"))
    assert (config.params.upscale, config.params.align, config.model.preset) == (1.0, "none", "face")
    config = config_from_args(parse("in.png", "-o", str(tmp_path), "--preset", "face", "-s", "2", "--align", "adain"))
    assert (config.params.upscale, config.params.align) == (2.0, "adain")  # explicit flags win over the preset
    config = config_from_args(parse("in.png", "-o", str(tmp_path)))
    assert (config.params.upscale, config.params.align, config.model.preset) == (4.0, "adain", "osediff")


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
    assert "--weights <path to osediff.pkl>" in info.value.message(flag_for)
    local = tmp_path / "mine.pkl"
    with pytest.raises(ModelNotFoundError):
        resolve_weights(local)
    assert tried[-1] == (str(local), (), False)  # a user's file gets no mirrors and no pinned hash
    with pytest.raises(ModelNotFoundError):
        resolve_weights(None)
    assert tried[-1] == (PRESETS["osediff"].weights, PRESETS["osediff"].weights_mirrors, False)


def test_served_requests_default_to_the_presets_factor_and_alignment(tiny_base_dir, tiny_pkl):
    from osediff.cli.options import limits_from_args
    from osediff.cli.serve import build_config
    from osediff.serve.limits import parse_params

    argv = ["serve", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl), "--offline"]
    for preset, expected in (("face", (1.0, "none")), ("osediff", (4.0, "adain"))):
        args = build_parser().parse_args([*argv, "--preset", preset])
        config = build_config(args, limits_from_args(args))
        params = parse_params({}, config.extractors, config.limits, config.defaults)
        assert (params.upscale, params.align, params.prompt_extractor) == (*expected, "text")
        asked = parse_params({"upscale": "2", "align": "wavelet"}, config.extractors, config.limits, config.defaults)
        assert (asked.upscale, asked.align) == (2.0, "wavelet")  # what the request says wins


def test_demo_controls_start_at_the_given_defaults(tiny_components):
    gr = pytest.importorskip("gradio")
    from osediff.demo.page import build_demo
    from osediff.demo.service import DemoSettings, UpscaleService
    from osediff.pipeline import OSEDiffPipeline

    service = UpscaleService(OSEDiffPipeline(tiny_components))
    try:
        demo = build_demo(None, service=service, defaults=DemoSettings(upscale=1.0, align="none", tile_px=512))
        values = {block.elem_id: block.value for block in demo.blocks.values()
                  if isinstance(block, gr.components.Component) and getattr(block, "elem_id", None)}
        assert (values["upscale"], values["align"], values["tile"], values["extractor"]) == (1.0, "none", 512, "text")
    finally:
        service.close()
