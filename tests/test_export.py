"""``osediff export --format onnx`` on the tiny model: the graphs, and the per-image step run through
ONNX Runtime giving the torch pipeline's outputs to within one level of 255."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from osediff.export.onnx import METADATA, ExportError, export_onnx
from osediff.export.runtime import OnnxOneStepModel
from osediff.images import LoadedImage
from osediff.params import TileConfig, UpscaleParams
from osediff.pipeline import OSEDiffPipeline, Upscaler


@pytest.fixture(scope="module")
def exported(tiny_components, tiny_weights, tmp_path_factory):
    import copy

    pipe = OSEDiffPipeline(copy.deepcopy(tiny_components))
    pipe.load_weights(tiny_weights)
    folder = tmp_path_factory.mktemp("onnx")
    metadata = export_onnx(pipe, folder, weights_sha256="abc")
    return pipe, folder, metadata


def photo(seed: int, size=(20, 12)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_the_folder_holds_four_graphs_the_tokenizer_and_the_metadata(exported):
    pipe, folder, metadata = exported
    assert sorted(str(p.relative_to(folder)) for p in folder.glob("*/model.onnx*")) == [
        f"{name}/model.onnx{data}" for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder")
        for data in ("", ".data")]
    saved = json.loads((folder / METADATA).read_text())
    assert saved == metadata and saved["alpha_bar"] == pytest.approx(pipe.alpha_bar)
    assert saved["scaling_factor"] == pipe.vae.config.scaling_factor and saved["weights_sha256"] == "abc"
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize(("upscale", "tiles", "controls"), [
    (1.0, TileConfig(enabled=False), {}),
    (4.0, TileConfig(enabled=False), {}),
    (4.0, TileConfig(latent_tile=6, latent_overlap=2, tiles_per_pass=3), {}),  # UNet tiles through the graph
    (2.0, TileConfig(enabled=False), {"strength": 0.5, "guidance": 2.0, "negative_prompt": "blurry"}),
])
def test_the_step_through_onnx_runtime_gives_the_torch_outputs(exported, single_thread, upscale, tiles, controls):
    pipe, folder, _ = exported
    params = UpscaleParams(upscale=upscale, prompt="a red car", prompt_extractor="text", tiles=tiles, **controls)
    requests = [(LoadedImage(photo(i), None), params) for i in range(2)]
    torch_out = Upscaler(pipe).upscale(requests)
    onnx_out = Upscaler(OnnxOneStepModel(folder)).upscale(requests)
    for ours, theirs in zip(onnx_out, torch_out, strict=True):
        assert ours.image.size == theirs.image.size == (round(20 * upscale), round(12 * upscale))
        diff = np.abs(np.asarray(ours.image, np.int16) - np.asarray(theirs.image, np.int16))
        assert diff.max() <= 1, diff.max()  # the parity gate: within 1/255


def test_a_folder_without_its_graphs_is_refused_in_one_line(tmp_path, exported):
    _, folder, _ = exported
    (tmp_path / METADATA).write_text((folder / METADATA).read_text())
    graphs = r"vae_encoder/model\.onnx, unet/model\.onnx, vae_decoder/model\.onnx, text_encoder/model\.onnx"
    with pytest.raises(ExportError, match=rf"missing {graphs}$"):
        OnnxOneStepModel(tmp_path)


def test_the_command_exports_what_it_loaded_and_checks_files_first(tiny_base_dir, tiny_pkl, tmp_path, capsys):
    from osediff.cli import main
    from osediff.fileio import file_sha256

    out = tmp_path / "onnx"
    assert main(["export", "-o", str(out), "--base", str(tiny_base_dir), "--weights", str(tiny_pkl), "--offline"]) == 0
    assert json.loads((out / METADATA).read_text())["weights_sha256"] == file_sha256(tiny_pkl)
    assert "unet/model.onnx" in capsys.readouterr().out
    assert OnnxOneStepModel(out).encode_prompt("a cat").shape[:2] == (1, 77)
    missing = tmp_path / "nothing.pkl"
    assert main(["export", "-o", str(tmp_path / "b"), "--base", str(tiny_base_dir), "--weights", str(missing),
                 "--offline"]) == 2
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "b").exists()
