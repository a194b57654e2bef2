"""``osediff.batch`` as a library: validation before loading, grouping of same-size images, the summary,
and the one-line failures of ``--engine ray`` without Ray or without a reachable cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osediff.batch import BatchConfig, BatchConfigError, ModelOptions, run, validate
from osediff.cli import main
from osediff.params import ParamError, TileConfig, UpscaleParams
from osediff.pipeline import OSEDiffPipeline
from osediff.prompts import UnknownPromptExtractorError


@pytest.fixture
def tiny_pipe(fresh_components, tiny_weights, single_thread):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    return pipe


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def config(tmp_path: Path, inputs: list[str], prompt: str = "", **kwargs) -> BatchConfig:
    return BatchConfig(inputs=inputs, output=tmp_path / "out", params=UpscaleParams(upscale=2, prompt=prompt), **kwargs)


def test_validate_refuses_each_bad_option_before_anything_loads(tmp_path):
    from osediff.cli.flags import flag_for
    from osediff.device import DtypeError

    write_images(tmp_path / "in", [(8, 8)])
    good = config(tmp_path, [str(tmp_path / "in")])
    validate(good)
    assert good.params.tiles == TileConfig() and good.params.prompt_extractor == "text"
    bad = [
        ({"inputs": []}, BatchConfigError, "inputs must be a non-empty list", "INPUT must be"),
        ({"inputs": str(tmp_path / "in")}, BatchConfigError, "inputs must be a non-empty list", "INPUT must be"),
        ({"params": UpscaleParams(prompt_extractor="dapee")}, UnknownPromptExtractorError,
         "'dapee' is not a prompt extractor", "'dapee' is not a prompt extractor"),
        ({"max_pixels": 0}, BatchConfigError, "max_pixels must be > 0", "--max-pixels must be > 0"),
        ({"batch_size": 0}, BatchConfigError, "batch_size must be >= 1", "--batch-size must be >= 1"),
        ({"model": ModelOptions(dtype="fp8")}, DtypeError, "dtype 'fp8' is not a dtype", "--dtype 'fp8' is not"),
        ({"model": ModelOptions(decoder_dtype="fp8")}, DtypeError, "decoder_dtype 'fp8'", "--decoder-dtype 'fp8'"),
        ({"inputs": ["s3://bucket/photos"]}, BatchConfigError, "Ray engine only (engine ray)",
         "Ray engine only (--engine ray)"),
    ]
    for change, kind, message, cli in bad:
        with pytest.raises(kind) as info:
            validate(BatchConfig(**{**good.__dict__, **change}))
        assert message in str(info.value) and cli in info.value.message(flag_for), (str(info.value), cli)
    # what the parameters refuse, they refuse where they are made, naming the field
    for make, message in [(lambda: UpscaleParams(align="median"), "align must be one of adain, wavelet, none"),
                          (lambda: UpscaleParams(latent="mean"), "latent must be one of mode, sample"),
                          (lambda: UpscaleParams(format="gif"), "format must be one of"),
                          (lambda: TileConfig(vae_maps="gpu"), "tiles.vae_maps must be one of auto, device, cpu")]:
        with pytest.raises(ParamError, match=message):
            make()


def test_same_size_images_go_through_the_model_together(tiny_pipe, tmp_path, monkeypatch):
    src = write_images(tmp_path / "in", [(8, 8), (12, 8), (8, 8), (8, 8), (12, 8)])
    singles = run(config(tmp_path, [str(src)], save_prompts=True), upscaler=tiny_pipe)
    expected = {name: np.asarray(Image.open(tmp_path / "out" / name)).astype(int) for name in
                sorted(p.name for p in src.iterdir())}
    calls = []
    super_resolve = OSEDiffPipeline.super_resolve

    def spy(pipe, x_l, *args, **kwargs):
        calls.append([(x_l.shape[-1] // 2, x_l.shape[-2] // 2)] * x_l.shape[0])
        return super_resolve(pipe, x_l, *args, **kwargs)

    monkeypatch.setattr(OSEDiffPipeline, "super_resolve", spy)
    batched = run(config(tmp_path, [str(src)], batch_size=2, save_prompts=True), upscaler=tiny_pipe)
    # one chunk of batch_size inputs at a time, grouped by size within it
    assert calls == [[(8, 8)], [(12, 8)], [(8, 8), (8, 8)], [(12, 8)]]
    assert (singles.written, batched.written, batched.failed, batched.skipped) == (5, 5, 0, 0)
    for name, pixels in expected.items():
        # batched convolutions may round differently, by at most one 8-bit level
        assert np.abs(np.asarray(Image.open(tmp_path / "out" / name)).astype(int) - pixels).max() <= 1, name
    assert {record.prompt for record in batched.records} == {""}


def test_the_summary_has_one_record_per_input(tiny_pipe, tmp_path):
    src = write_images(tmp_path / "in", [(8, 8), (8, 8)])
    (src / "broken.png").write_text("not an image")
    seen = []
    first = run(config(tmp_path, [str(src)], prompt="sky"), upscaler=tiny_pipe, on_record=seen.append)
    assert [(Path(r.input).name, r.status) for r in first.records] == [
        ("broken.png", "failed"), ("im0.png", "written"), ("im1.png", "written")]
    assert seen == first.records and first.records[0].error.endswith("not an image file (format not recognised)")
    assert all(r.seconds > 0 and r.prompt == "sky" for r in first.records[1:])
    again = run(config(tmp_path, [str(src / "im*.png")], skip_existing=True), upscaler=tiny_pipe)
    assert (again.written, again.failed, again.skipped) == (0, 0, 2)
    assert again.records[0].output == str(tmp_path / "out" / "im0.png")


def test_engine_ray_without_ray_installed_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setattr(OSEDiffPipeline, "from_pretrained", pytest.fail)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --engine ray needs Ray Data, which is not installed: pip install 'osediff[ray]' "
                   "(or: pip install 'ray[data]>=2.9')\n")


def test_an_unreachable_ray_address_fails_in_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setattr(OSEDiffPipeline, "from_pretrained", pytest.fail)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--engine", "ray",
                 "--ray-address", "127.0.0.1:1", "--prompt-extractor", "text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-address 127.0.0.1:1: cannot reach a Ray cluster there (Connection refused)")
    assert "ray start --head" in err and len(err.splitlines()) == 1
