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
from osediff.color import ALIGN_METHODS
from osediff.pipeline import OSEDiffPipeline, TileConfig


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


def config(tmp_path: Path, inputs: list[str], **kwargs) -> BatchConfig:
    return BatchConfig(inputs=inputs, output=tmp_path / "out", upscale=2, prompt_extractor="text", **kwargs)


def test_validate_refuses_each_bad_option_before_anything_loads(tmp_path):
    write_images(tmp_path / "in", [(8, 8)])
    good = config(tmp_path, [str(tmp_path / "in")])
    validate(good)
    assert good.tiles == TileConfig() and good.align in ALIGN_METHODS
    bad = [
        ({"inputs": []}, "non-empty list"),
        ({"inputs": str(tmp_path / "in")}, "non-empty list"),
        ({"align": "median"}, f"align must be one of {', '.join(ALIGN_METHODS)}"),
        ({"latent": "mean"}, "latent must be one of mode, sample"),
        ({"prompt_extractor": "dapee"}, "prompt extractor 'dapee' is unknown"),
        ({"format": "gif"}, "format must be one of"),
        ({"max_pixels": 0}, "max pixels"),
        ({"tiles": TileConfig(vae_maps="gpu")}, "vae maps must be one of auto, device, cpu"),
        ({"model": ModelOptions(dtype="fp8")}, "unknown dtype 'fp8'"),
        ({"inputs": ["s3://bucket/photos"]}, "--engine ray only"),
    ]
    for change, message in bad:
        with pytest.raises(BatchConfigError, match=message.replace("(", r"\(")):
            validate(BatchConfig(**{**good.__dict__, **change}))


def test_same_size_images_go_through_the_model_together(tiny_pipe, tmp_path, monkeypatch):
    src = write_images(tmp_path / "in", [(8, 8), (12, 8), (8, 8), (8, 8), (12, 8)])
    singles = run(config(tmp_path, [str(src)], save_prompts=True), pipe=tiny_pipe)
    expected = {name: np.asarray(Image.open(tmp_path / "out" / name)).astype(int) for name in
                sorted(p.name for p in src.iterdir())}
    calls = []
    run_batch = OSEDiffPipeline.run_batch

    def spy(pipe, images, *args, **kwargs):
        calls.append([image.size for image in images])
        return run_batch(pipe, images, *args, **kwargs)

    monkeypatch.setattr(OSEDiffPipeline, "run_batch", spy)
    batched = run(config(tmp_path, [str(src)], batch_size=2, save_prompts=True), pipe=tiny_pipe)
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
    first = run(config(tmp_path, [str(src)], prompt="sky"), pipe=tiny_pipe, on_record=seen.append)
    assert [(Path(r.input).name, r.status) for r in first.records] == [
        ("broken.png", "failed"), ("im0.png", "written"), ("im1.png", "written")]
    assert seen == first.records and first.records[0].error.endswith("not an image file (format not recognised)")
    assert all(r.seconds > 0 and r.prompt == "sky" for r in first.records[1:])
    again = run(config(tmp_path, [str(src / "im*.png")], skip_existing=True), pipe=tiny_pipe)
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
