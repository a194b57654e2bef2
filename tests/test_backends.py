"""``--backend onnxruntime|openvino`` through the one loader: option checks before anything loads,
an export folder given or made once in the cache on first use, and the same outputs as torch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from osediff.errors import OptionError
from osediff.export.runtime import OnnxOneStepModel, OpenVinoOneStepModel
from osediff.images import LoadedImage
from osediff.loading import load_upscaler
from osediff.model_files import ModelOptions, find_model_files
from osediff.params import TileConfig, UpscaleParams


@pytest.fixture(scope="module")
def openvino_dir(tiny_base_dir, tiny_pkl, tmp_path_factory):
    from osediff.cli import main

    out = tmp_path_factory.mktemp("ov-export")
    assert main(["export", "-o", str(out), "--format", "openvino", "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--offline"]) == 0
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))


def outputs(upscaler) -> list[np.ndarray]:
    params = UpscaleParams(upscale=2, prompt="a photo", prompt_extractor="text", tiles=TileConfig(enabled=False))
    return [np.asarray(r.image, np.int16) for r in upscaler.upscale([(LoadedImage(photo(i), None), params)
                                                                     for i in range(2)])]


@pytest.mark.parametrize(("given", "argument", "message"), [
    ({"backend": "tensorrt"}, "backend", "must be one of torch, onnxruntime, openvino"),
    ({"backend": "onnxruntime", "precision": "int8"}, "precision", "int8 runs on OpenVINO"),
    ({"backend": "openvino", "device": "cuda"}, "device", "runs on the CPU; for 'cuda' use --backend torch"),
    ({"backend": "openvino", "dtype": "bf16"}, "dtype", "--dtype/--decoder-dtype are for --backend torch"),
    ({"export_dir": "/x"}, "export_dir", "needs --backend onnxruntime or openvino"),
    ({"backend": "openvino", "precision": "int4"}, "precision", "must be one of fp32, bf16, int8"),
    ({"backend": "onnxruntime", "precision": "bf16"}, "precision", "bf16 runs on OpenVINO"),
])
def test_options_that_do_not_fit_are_refused_naming_the_option(given, argument, message):
    with pytest.raises(OptionError, match=message) as caught:
        ModelOptions(**given)
    assert caught.value.argument == argument


def test_a_given_export_folder_needs_no_base_or_weights_and_must_fit_the_backend(openvino_dir, tmp_path):
    options = ModelOptions(backend="openvino", export_dir=str(openvino_dir), base=str(tmp_path / "no-base"),
                           weights=str(tmp_path / "no.pkl"), offline=True)
    files = find_model_files(options, ["text"])
    assert files.base is None and files.weights is None
    assert (files.exported.folder, files.exported.precision) == (openvino_dir, "fp32")
    with pytest.raises(OptionError, match="a openvino export; --backend onnxruntime runs onnx exports") as caught:
        find_model_files(ModelOptions(backend="onnxruntime", export_dir=str(openvino_dir)))
    assert caught.value.argument == "export_dir"
    with pytest.raises(OptionError, match="a fp32 export, not int8"):
        find_model_files(ModelOptions(backend="openvino", export_dir=str(openvino_dir), precision="int8"))
    with pytest.raises(OptionError, match="not an osediff export folder"):
        find_model_files(ModelOptions(backend="openvino", export_dir=str(tmp_path)))
    bf16 = find_model_files(ModelOptions(backend="openvino", export_dir=str(openvino_dir), precision="bf16"))
    assert (bf16.exported.precision, bf16.exported.inference) == ("fp32", "bf16")  # the fp32 graphs, in bf16


def test_bf16_runs_the_fp32_export_with_openvino_computing_in_bf16(openvino_dir, single_thread):
    options = ModelOptions(backend="openvino", export_dir=str(openvino_dir), precision="bf16")
    upscaler = load_upscaler(options)
    assert isinstance(upscaler.pipe, OpenVinoOneStepModel)
    assert [image.shape for image in outputs(upscaler)] == [(24, 40, 3)] * 2


def test_the_loader_runs_a_given_export_as_torch_does(openvino_dir, tiny_base_dir, tiny_pkl, single_thread):
    torch_upscaler = load_upscaler(*_with_files(ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl),
                                                             device="cpu", dtype="fp32", decoder_dtype="fp32",
                                                             offline=True)))
    options = ModelOptions(backend="openvino", export_dir=str(openvino_dir), offline=True)
    upscaler = load_upscaler(*_with_files(options), fixed_prompts=["a photo"])
    assert isinstance(upscaler.pipe, OpenVinoOneStepModel) and upscaler.pipe.text_encoder is None
    for ours, theirs in zip(outputs(upscaler), outputs(torch_upscaler), strict=True):
        assert np.abs(ours - theirs).max() <= 1


def test_first_use_exports_once_into_the_cache_and_later_runs_load_it(tiny_base_dir, tiny_pkl, cache, single_thread):
    options = ModelOptions(backend="onnxruntime", base=str(tiny_base_dir), weights=str(tiny_pkl), offline=True)
    files = find_model_files(options)
    folder = files.exported.folder
    assert folder.parent == cache / "exports" and folder.name.startswith("onnx-fp32-") and not folder.exists()
    upscaler = load_upscaler(options, files)
    assert isinstance(upscaler.pipe, OnnxOneStepModel) and (folder / "osediff_export.json").is_file()
    made = (folder / "osediff_export.json").stat().st_mtime_ns
    again = load_upscaler(options, find_model_files(options))
    assert (folder / "osediff_export.json").stat().st_mtime_ns == made  # loaded, not exported again
    assert [np.array_equal(a, b) for a, b in zip(outputs(again), outputs(upscaler), strict=True)] == [True, True]
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, f"{folder.name}.lock"]  # no staging left


def test_the_cache_key_follows_the_inputs(tiny_base_dir, tiny_pkl, cache, tmp_path):
    options = ModelOptions(backend="openvino", base=str(tiny_base_dir), weights=str(tiny_pkl), offline=True)
    first = find_model_files(options).exported.folder
    other = tmp_path / "other.pkl"
    other.write_bytes(tiny_pkl.read_bytes() + b"\0")
    assert find_model_files(ModelOptions(backend="openvino", base=str(tiny_base_dir), weights=str(other),
                                         offline=True)).exported.folder != first
    onnx = find_model_files(ModelOptions(backend="onnxruntime", base=str(tiny_base_dir), weights=str(tiny_pkl),
                                         offline=True)).exported.folder
    assert onnx != first and onnx.name.startswith("onnx-fp32-") and first.name.startswith("openvino-fp32-")
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(OptionError, match="no photos to calibrate int8 on") as caught:
        find_model_files(ModelOptions(backend="openvino", precision="int8", calibration=str(photos),
                                      base=str(tiny_base_dir), weights=str(tiny_pkl), offline=True))
    assert caught.value.argument == "calibration"
    photo(0).save(photos / "a.png")
    int8 = find_model_files(ModelOptions(backend="openvino", precision="int8", calibration=str(photos),
                                         base=str(tiny_base_dir), weights=str(tiny_pkl), offline=True))
    assert int8.exported.folder.name.startswith("openvino-int8-") and int8.exported.calibration == photos


def test_processes_that_start_together_export_once(tiny_base_dir, tiny_pkl, cache, monkeypatch):
    from osediff.export import build

    options = ModelOptions(backend="onnxruntime", base=str(tiny_base_dir), weights=str(tiny_pkl), offline=True)
    files = find_model_files(options)
    real, calls = build.build_export, []

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "build_export", counted)
    folders: list = []
    threads = [threading.Thread(target=lambda: folders.append(build.ensure_export(options, files))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and folders == [files.exported.folder] * 3


def test_the_command_line_upscales_through_an_export(openvino_dir, tiny_base_dir, tiny_pkl, tmp_path, capsys):
    from osediff.cli import main

    photo(3).save(tmp_path / "in.png")
    common = ["--prompt-extractor", "text", "--prompt", "a photo", "--upscale", "2", "--offline"]
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "ov"), "--backend", "openvino",
                 "--export-dir", str(openvino_dir), *common]) == 0
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "torch"), "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--device", "cpu", "--dtype", "fp32", "--decoder-dtype", "fp32",
                 *common]) == 0
    ours, theirs = (np.asarray(Image.open(tmp_path / name / "in.png"), np.int16) for name in ("ov", "torch"))
    assert ours.shape == (24, 40, 3) and np.abs(ours - theirs).max() <= 1
    capsys.readouterr()
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "bad"), "--export-dir",
                 str(openvino_dir), *common]) == 2
    assert "--export-dir needs --backend onnxruntime or openvino" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_every_front_end_takes_the_backend_flags(command, openvino_dir):
    from osediff.cli import build_parser
    from osediff.cli.options import model_options_from_args

    args = build_parser().parse_args([command, "--backend", "openvino", "--export-dir", str(openvino_dir)])
    options = model_options_from_args(args)
    assert (options.backend, options.export_dir) == ("openvino", str(openvino_dir))


def _with_files(options: ModelOptions):
    return options, find_model_files(options, ["text"])


def test_the_service_engine_loads_an_export_and_says_so(openvino_dir, single_thread):
    from osediff.serve.engine import Engine, Job, ServeConfig

    config = ServeConfig.find(ModelOptions(backend="openvino", export_dir=str(openvino_dir), precision="bf16"))
    engine = Engine(config)
    assert (engine.device, engine.dtype) == ("cpu", "openvino fp32 in bf16")
    [result] = engine.run([Job(LoadedImage(photo(0), None), UpscaleParams(upscale=2, prompt_extractor="text"))])
    assert result.image.size == (40, 24)
