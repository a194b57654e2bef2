"""``osediff export`` on the tiny model: the graphs, and the per-image step run through ONNX Runtime
and OpenVINO giving the torch pipeline's outputs to within one level of 255 (the parity gate)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from osediff.export.folder import METADATA, ExportError
from osediff.export.onnx import export_onnx
from osediff.export.openvino import convert_onnx_folder
from osediff.export.runtime import OnnxOneStepModel, OpenVinoOneStepModel, load_exported
from osediff.images import LoadedImage
from osediff.params import TileConfig, UpscaleParams
from osediff.pipeline import OSEDiffPipeline, Upscaler


@pytest.fixture(scope="module")
def exported(tiny_components, tiny_weights, tmp_path_factory):
    import copy

    pipe = OSEDiffPipeline(copy.deepcopy(tiny_components))
    pipe.load_weights(tiny_weights)
    folder = tmp_path_factory.mktemp("exports")
    metadata = export_onnx(pipe, folder / "onnx", weights_sha256="abc")
    convert_onnx_folder(folder / "onnx", folder / "openvino")
    return pipe, folder, metadata


def photo(seed: int, size=(20, 12)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_each_folder_holds_four_graphs_the_tokenizer_and_the_metadata(exported):
    pipe, folder, metadata = exported
    assert sorted(str(p.relative_to(folder / "onnx")) for p in (folder / "onnx").glob("*/model.onnx*")) == [
        f"{name}/model.onnx{data}" for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder")
        for data in ("", ".data")]
    assert sorted(str(p.relative_to(folder / "openvino")) for p in (folder / "openvino").glob("*/openvino_model.*")) \
        == [f"{name}/openvino_model.{ext}" for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder")
            for ext in ("bin", "xml")]
    saved = json.loads((folder / "onnx" / METADATA).read_text())
    assert saved == metadata and saved["alpha_bar"] == pytest.approx(pipe.alpha_bar)
    assert saved["scaling_factor"] == pipe.vae.config.scaling_factor and saved["weights_sha256"] == "abc"
    converted = json.loads((folder / "openvino" / METADATA).read_text())
    assert (converted["format"], converted["precision"], converted["weights_sha256"]) == ("openvino", "fp32", "abc")
    for fmt in ("onnx", "openvino"):
        assert (folder / fmt / "tokenizer" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize(("upscale", "tiles", "controls"), [
    (1.0, TileConfig(enabled=False), {}),
    (4.0, TileConfig(enabled=False), {}),
    (1.0, TileConfig(latent_tile=2, latent_overlap=1, tiles_per_pass=2), {}),
    (4.0, TileConfig(latent_tile=6, latent_overlap=2, tiles_per_pass=3), {}),  # UNet tiles through the graph
    (2.0, TileConfig(enabled=False), {"strength": 0.5, "guidance": 2.0, "negative_prompt": "blurry"}),
])
def test_the_step_through_each_runtime_gives_the_torch_outputs(exported, single_thread, fmt, upscale, tiles,
                                                               controls):
    pipe, folder, _ = exported
    params = UpscaleParams(upscale=upscale, prompt="a red car", prompt_extractor="text", tiles=tiles, **controls)
    requests = [(LoadedImage(photo(i), None), params) for i in range(2)]
    torch_out = Upscaler(pipe).upscale(requests)
    model = load_exported(folder / fmt)
    assert isinstance(model, {"onnx": OnnxOneStepModel, "openvino": OpenVinoOneStepModel}[fmt])
    exported_out = Upscaler(model).upscale(requests)
    for ours, theirs in zip(exported_out, torch_out, strict=True):
        assert ours.image.size == theirs.image.size == (round(20 * upscale), round(12 * upscale))
        diff = np.abs(np.asarray(ours.image, np.int16) - np.asarray(theirs.image, np.int16))
        assert diff.max() <= 1, diff.max()  # the parity gate: within 1/255


def test_a_folder_without_its_graphs_is_refused_in_one_line(tmp_path, exported):
    _, folder, _ = exported
    (tmp_path / METADATA).write_text((folder / "onnx" / METADATA).read_text())
    graphs = r"vae_encoder/model\.onnx, unet/model\.onnx, vae_decoder/model\.onnx, text_encoder/model\.onnx"
    with pytest.raises(ExportError, match=rf"missing {graphs}, tokenizer/tokenizer_config\.json$"):
        OnnxOneStepModel(tmp_path)
    with pytest.raises(ExportError, match="a openvino export, not onnx"):
        OnnxOneStepModel(folder / "openvino")
    with pytest.raises(ExportError, match="not an osediff export folder"):
        load_exported(tmp_path / "nowhere")


def test_freeing_the_text_encoder_keeps_the_prompts_encoded_before(exported):
    _, folder, _ = exported
    upscaler = Upscaler(load_exported(folder / "openvino"))
    upscaler.prompts.keep(["a cat"])
    upscaler.pipe.text_encoder = None
    assert upscaler.prompts.get("a cat").shape[:2] == (1, 77)
    with pytest.raises(ExportError, match="'a dog' was not among the prompts encoded"):
        upscaler.prompts.get("a dog")


def test_the_command_exports_what_it_loaded_and_checks_files_first(tiny_base_dir, tiny_pkl, tmp_path, capsys):
    from osediff.cli import main
    from osediff.fileio import file_sha256

    out = tmp_path / "ov"
    assert main(["export", "-o", str(out), "--format", "openvino", "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--offline"]) == 0
    metadata = json.loads((out / METADATA).read_text())
    assert (metadata["format"], metadata["weights_sha256"]) == ("openvino", file_sha256(tiny_pkl))
    assert "unet/openvino_model.xml" in capsys.readouterr().out
    assert not list(out.glob(".onnx-*"))  # the ONNX scratch folder is gone
    assert OpenVinoOneStepModel(out).encode_prompt("a cat").shape[:2] == (1, 77)
    missing = tmp_path / "nothing.pkl"
    assert main(["export", "-o", str(tmp_path / "b"), "--base", str(tiny_base_dir), "--weights", str(missing),
                 "--offline"]) == 2
    assert str(missing) in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["export", "-o", str(tmp_path / "c"), "--precision", "int8", "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--offline"]) == 2
    assert "--precision int8 is made for OpenVINO: pass --format openvino" in capsys.readouterr().err


def test_int8_quantises_the_vae_and_unet_calibrated_on_photos(exported, tmp_path, single_thread):
    from osediff.export.quantize import QUANTISED, calibration_images, quantize_folder

    _, folder, _ = exported
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        photo(i, (24, 16)).save(photos / f"{i}.png")
    (photos / "notes.png").write_text("not an image")  # skipped, not fatal
    int8 = tmp_path / "int8"
    shutil.copytree(folder / "openvino", int8)
    metadata = quantize_folder(int8, calibration_images(photos), upscale=2)
    assert metadata["precision"] == "int8" and metadata["calibration"]["samples"] == 4  # two photos and mirrors
    assert json.loads((int8 / METADATA).read_text()) == metadata
    import openvino as ov

    for name in QUANTISED:  # each quantised graph now holds int8 fake-quantise nodes; the text encoder none
        ops = {op.get_type_name() for op in ov.Core().read_model(str(int8 / name / "openvino_model.xml")).get_ops()}
        assert "FakeQuantize" in ops, name
    ops = {op.get_type_name() for op in ov.Core().read_model(str(int8 / "text_encoder/openvino_model.xml")).get_ops()}
    assert "FakeQuantize" not in ops
    result = Upscaler(load_exported(int8)).upscale([(LoadedImage(photo(5), None), UpscaleParams(
        upscale=2, prompt="a photo", prompt_extractor="text"))])[0]
    assert result.image.size == (40, 24)
    with pytest.raises(ExportError, match="int8 is made from an fp32 openvino export, not openvino int8"):
        quantize_folder(int8, calibration_images(photos))


def test_blended_tiles_of_a_pointwise_map_equal_the_whole_and_cover_every_pixel():
    import torch

    from osediff.export.vae_tiles import blended_tiles, decoder_tiling, encoder_tiling

    x = torch.randn(2, 4, 21, 30)

    def upsample(part):  # pointwise up to 8x: every tile agrees where tiles overlap
        return [torch.nn.functional.interpolate(part, scale_factor=8, mode="nearest") * 2 + 1, part.mean(1, True)
                .repeat_interleave(8, -1).repeat_interleave(8, -2)]

    whole = upsample(x)
    tiled = blended_tiles(upsample, x, 8, 2, 8)
    assert [t.shape for t in tiled] == [w.shape for w in whole] == [(2, 4, 168, 240), (2, 1, 168, 240)]
    for t, w in zip(tiled, whole, strict=True):
        torch.testing.assert_close(t, w, rtol=1e-5, atol=1e-5)
    assert decoder_tiling(224) == (96, 24) and decoder_tiling(40) == (40, 10)
    assert encoder_tiling(1024) == (768, 192) and encoder_tiling(100) == (96, 24)


def test_the_exported_vae_runs_in_tiles_close_to_the_whole_image(exported, single_thread):
    _, folder, _ = exported
    model = load_exported(folder / "openvino")
    params = UpscaleParams(upscale=4, prompt="a photo", prompt_extractor="text", tiles=TileConfig(enabled=False))
    tiled = params.replace(tiles=TileConfig(vae_encoder_tile=128, vae_decoder_tile=16))
    request = LoadedImage(photo(1, (40, 24)), None)  # 160x96 out: encoder tiles of 128 px, decoder of 16 latent
    whole, parts = (np.asarray(Upscaler(model).upscale([(request, p)])[0].image, np.float32) for p in (params, tiled))
    assert parts.shape == whole.shape == (96, 160, 3)
    # GroupNorm sees each tile's statistics, so not equal (3.4 levels here; the tiny random VAE amplifies
    # it), while a tile in the wrong place would differ as an unrelated image does (47 levels)
    assert 0 < np.abs(parts - whole).mean() < 8
    unrelated = np.asarray(Upscaler(model).upscale([(LoadedImage(photo(2, (40, 24)), None), params)])[0].image)
    assert np.abs(unrelated - whole).mean() > 40
    covering = params.replace(tiles=TileConfig(vae_encoder_tile=160, vae_decoder_tile=20))  # one tile: no blend
    assert np.array_equal(np.asarray(Upscaler(model).upscale([(request, covering)])[0].image, np.float32), whole)
