"""Training config errors, the HQ data stream, the LPIPS offline error, and the ablation switches."""

from __future__ import annotations

import copy
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REALSR_SHIPPED, REPO_ROOT
from osediff.cli import main
from osediff.cli.flags import flag_for
from osediff.training.config import ConfigError, TrainConfig
from osediff.training.data import HQDataset

pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.mark.parametrize(("raw", "message"), [
    ({"loss": {"lamda_l2": 1}}, "unknown key 'loss.lamda_l2' (did you mean 'lambda_l2'?)"),
    ({"trian": {}}, "unknown key 'trian'"),
    ({"loss": {"regularization": "vsd"}}, "loss.regularization: 'vsd' is not one of"),
    ({"run": {"batch_size": "4"}}, "run.batch_size: expected an integer, got '4'"),
    ({"run": {"mixed_precision": "fp8"}}, "run.mixed_precision: 'fp8' is not one of"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
    ({"optim": {"betas": [0.9]}}, "optim.betas: expected a list of 2 numbers"),
    ({"model": {"train_vae": "yes"}}, "model.train_vae: 'yes' is not one of"),
    ({"model": {"gradient_checkpointing": "no"}}, "model.gradient_checkpointing: expected true or false"),
    ({"data": {"crop_size": 500}}, "data.crop_size: must be a positive multiple of 8 * data.scale = 32"),
    ({"data": {"sources": [{"path": "x", "weight": 0}]}}, "data.sources: every weight must be > 0"),
    ({"data": {"degradation": {"jpeg_rnage": [30, 95]}}}, "data.degradation:"),
    ({"loss": {"t_min": 980, "t_max": 20}}, "loss.t_min/t_max"),
    ({"model": {"rank_vae": 0}}, "model.rank_*"),
    ({"prompts": {"ram_options": {"ram_pth": "r.pth"}}},
     "unknown key 'prompts.ram_options.ram_pth' (did you mean 'ram_path'?)"),
    ({"prompts": {"ram_options": {"ram": "r.pth"}}}, "unknown key 'prompts.ram_options.ram'; known keys: ram_path, "),
    ({"prompts": {"ram_options": {"batch_size": "8"}}}, "prompts.ram_options.batch_size: expected an integer, got '8'"),
    ({"prompts": {"ram_options": {"ram_path": 3}}}, "prompts.ram_options.ram_path: expected a string, got 3"),
    ({"prompts": {"ram_options": {"bare": False}}}, "prompts.ram_options.bare: set by training"),
    ({"prompts": {"ram_options": {"thresholds_path": "t.txt"}}},
     "prompts.ram_options.thresholds_path: not read in training; put ram_tag_list_threshold.txt beside"),
])
def test_bad_values_are_named(raw, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(raw)
    assert message in str(err.value)


def test_yaml_defaults_and_relative_paths(tmp_path):
    (tmp_path / "train.yaml").write_text("data:\n  sources: [images, {path: list.txt, weight: 3}]\n"
                                         "optim:\n  lr: 1e-4\n")
    config = TrainConfig.from_yaml(tmp_path / "train.yaml")
    assert [s.path for s in config.data.sources] == [str(tmp_path / "images"), str(tmp_path / "list.txt")]
    assert config.data.sources[1].weight == 3.0 and config.optim.lr == 1e-4  # YAML reads 1e-4 as a string
    assert (config.loss.lambda_l2, config.loss.lambda_lpips, config.loss.lambda_reg) == (1.0, 2.0, 1.0)
    assert (config.model.rank_unet, config.loss.cfg_scale, config.data.crop_size) == (4, 7.5, 512)

    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: the top level must be a mapping"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")


def test_example_config_loads():
    config = TrainConfig.from_yaml(REPO_ROOT / "configs" / "train_osediff.yaml")
    assert config.loss.regularization == "vsd_latent" and config.run.mixed_precision == "fp16"


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    (tmp_path / "train.yaml").write_text("loss:\n  lambda_lpip: 2\n")
    assert main(["train", "--config", str(tmp_path / "train.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "did you mean 'lambda_lpips'" in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


class _NoModelLoads:
    """Stands in for the Trainer: every user error must be found before a model loads."""

    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("the Trainer was built before the error was found")


def test_train_errors_reach_the_cli_handler_as_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("osediff.training.loop.Trainer", _NoModelLoads)
    config = tmp_path / "train.yaml"
    config.write_text("run:\n  max_step: 5\n")
    assert main(["train", "--config", str(config)]) == 2
    err = _one_error_line(capsys)
    assert f"--config {config}: unknown key 'run.max_step' (did you mean 'max_steps'?)" in err

    (tmp_path / "hq").mkdir()
    _png(tmp_path / "hq" / "1.png", 16, 10)
    cases = [
        ("data: {sources: [missing]}\n", [],
         f"--config {config}: data.sources: {tmp_path / 'missing'}: no such folder or file"),
        ("data: {sources: [hq]}\nprompts: {source: captions, cache: nope.json}\n", [],
         f"--config {config}: prompts.cache: {tmp_path / 'nope.json'}: no such file"),
        ("data: {sources: [hq]}\nmodel: {base: nowhere/sd}\n", [],
         "model.base (a diffusers folder or hub id)"),
        ("data: {sources: [hq]}\n", ["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        ("data: {sources: [hq]}\n", ["--export-only"], "--export-only needs --resume"),
        ("data: {sources: [hq]}\n", ["--resume", str(tmp_path / "hq")],
         f"--resume {tmp_path / 'hq'}: not a checkpoint folder"),
        ("data: {sources: [hq]}\n", ["--resume", "latest", "--export-only", "--output-dir", str(tmp_path / "o")],
         "--export-only: no checkpoint to export"),
    ]
    for yaml_text, flags, expected in cases:
        config.write_text(yaml_text)
        assert main(["train", "--config", str(config), *flags]) == 2, expected
        assert expected in _one_error_line(capsys)


def test_train_function_checks_the_data_before_loading_models(tmp_path, monkeypatch):
    from osediff.training import train
    from osediff.training.data import TrainingDataError

    monkeypatch.setattr("osediff.training.loop.Trainer", _NoModelLoads)
    config = TrainConfig.from_dict({"data": {"sources": ["missing"]}}, base_dir=tmp_path)
    with pytest.raises(TrainingDataError, match=r"^data\.sources: .*missing: no such folder or file$"):
        train(config)


def test_train_keeps_the_traceback_of_errors_that_are_bugs(tmp_path, tiny_base_dir, monkeypatch):
    class Broken:
        def __init__(self, *args, **kwargs) -> None:
            raise ValueError("a bug deep inside")

    monkeypatch.setattr("osediff.training.loop.Trainer", Broken)
    (tmp_path / "hq").mkdir()
    _png(tmp_path / "hq" / "1.png", 16, 10)
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{sources: [hq]}}\nprompts: {{source: none}}\nmodel: {{base: '{tiny_base_dir}'}}\n")
    with pytest.raises(ValueError, match="a bug deep inside"):  # not printed as if the user had erred
        main(["train", "--config", str(config)])


def _png(path: Path, size: int, value: int) -> Path:
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def test_data_stream_probabilities_determinism_and_bad_files(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    _png(tmp_path / "a" / "1.png", 40, 10)
    _png(tmp_path / "b" / "1.png", 20, 200)  # smaller than the crop: enlarged, not an error
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "list.txt").write_text("b/1.png\n# a comment\n")
    config = TrainConfig.from_dict({"data": {"sources": [{"path": "a", "weight": 3}, "list.txt"],
                                             "crop_size": 32}}, base_dir=tmp_path)
    data = HQDataset(config.data, seed=1)
    items = [data[i] for i in range(400)]
    assert all(item["hq"].shape == (3, 32, 32) for item in items)
    share_a = np.mean([item["path"].endswith("a/1.png") for item in items])
    assert 0.7 < share_a < 0.8  # weight 3 : 1
    assert torch.equal(HQDataset(config.data, seed=1)[7]["hq"], items[7]["hq"])

    # folder b holds a broken file: it is skipped with one warning, and every item is still an image
    broken = TrainConfig.from_dict({"data": {"sources": [str(tmp_path / "b")], "crop_size": 32}})
    data = HQDataset(broken.data, seed=1)
    with pytest.warns(UserWarning, match=r"skipping unreadable training image .*broken\.png"):
        items = [data[i] for i in range(20)]
    assert {Path(item["path"]).name for item in items} == {"1.png"}


def test_lpips_offline_fails_with_one_clear_line(monkeypatch):
    from torchvision.models import VGG16_Weights

    from osediff.losses import LPIPSWeightsError, build_lpips

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(LPIPSWeightsError) as err:
        build_lpips(pretrained=True)
    assert "\n" not in str(err.value) and "VGG16" in str(err.value) and "URLError" in str(err.value)


def test_random_lpips_has_the_vgg16_feature_architecture():
    import torchvision

    from osediff.losses import build_lpips

    net = build_lpips(pretrained=False)
    ours = [p.shape for n, p in net.net.named_parameters()]
    reference = [p.shape for p in torchvision.models.vgg16().features[:30].parameters()]
    assert ours == reference and not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize(("options", "vae_lora", "extra_term"), [
    ({"loss": {"regularization": "vsd_image"}, "model": {"train_vae": "both", "gradient_checkpointing": True}},
     {"encoder", "decoder"}, "vsd"),
    ({"loss": {"regularization": "adversarial"}, "model": {"train_vae": "none", "train_conv_in": False}},
     set(), "adv"),
    ({"loss": {"regularization": "none"}, "model": {"train_vae": "decoder", "rank_vae": 2}}, {"decoder"}, None),
])
def test_ablation_switches_run_and_train_the_chosen_parts(options, vae_lora, extra_term, tiny_components, tmp_path):
    from osediff.training.data import collate
    from osediff.training.loop import Trainer

    raw = {"data": {"sources": [str(REALSR_SHIPPED / "hr")], "crop_size": 64, "num_workers": 0},
           "prompts": {"source": "none"}, "loss": {"lpips_pretrained": False, **options["loss"]},
           "model": {"gradient_checkpointing": False, **options["model"]},
           "run": {"output_dir": str(tmp_path), "batch_size": 1, "gradient_accumulation": 1,
                   "mixed_precision": "no", "device": "cpu"}}
    config = TrainConfig.from_dict(raw)
    trainer = Trainer(config, copy.deepcopy(tiny_components))
    data = HQDataset(config.data, seed=0)
    out = trainer.train_micro_step(collate([data[0]]))
    assert all(torch.isfinite(v) for v in out.terms.values())
    assert (extra_term in out.terms) if extra_term else set(out.terms) == {"l2", "lpips"}
    vae_parts = {n.split(".")[0] for n, p in trainer.gen.vae.named_parameters() if p.requires_grad}
    expected = set()
    if "encoder" in vae_lora:
        expected |= {"encoder", "quant_conv"}
    if "decoder" in vae_lora:
        expected |= {"decoder", "post_quant_conv"}
    assert vae_parts == expected
    conv_in_trains = trainer.gen.unet.conv_in.base_layer.weight.requires_grad
    assert conv_in_trains == options["model"].get("train_conv_in", True)
    weights = trainer.gen.export()
    assert bool(weights.vae_targets) == ("encoder" in vae_lora)
    assert ("vae_decoder_targets" in weights.extra) == ("decoder" in vae_lora)


def test_captions_from_sidecars_or_a_cache(tmp_path):
    import json

    from osediff.training.config import PromptConfig
    from osediff.training.data import CaptionLookup

    image = _png(tmp_path / "cat.png", 8, 0)
    (tmp_path / "cat.txt").write_text("a cat on a mat\n")
    assert CaptionLookup(PromptConfig(source="captions"))(str(image)) == "a cat on a mat"
    assert CaptionLookup(PromptConfig(source="captions"))(str(tmp_path / "dog.png")) == ""
    (tmp_path / "cache.json").write_text(json.dumps({"cat.png": "cached cat"}))
    cached = CaptionLookup(PromptConfig(source="captions", cache=str(tmp_path / "cache.json")))
    assert cached(str(image)) == "cached cat"


class _OneProcess:
    """The part of ``accelerate.Accelerator`` that checkpointing uses, for a single process."""

    is_main_process, process_index, num_processes, scaler = True, 0, 1, None

    def wait_for_everyone(self) -> None:
        pass


def test_checkpoints_are_pruned_and_incomplete_ones_ignored(tmp_path):
    from osediff.training.checkpointing import ResumeError, load_checkpoint, resolve_resume, save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(_OneProcess(), tmp_path, {"step": step, "micro_step": 2 * step}, {"m": model},
                        {"m": optimizer}, {}, config={}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-0000002", "checkpoint-0000003"]
    (root / ".tmp-checkpoint-0000009").mkdir()  # a crash while writing
    (root / "checkpoint-0000010").mkdir()  # no state.json: not complete
    latest = resolve_resume("latest", tmp_path)
    assert latest == root / "checkpoint-0000003"
    with torch.no_grad():
        model.weight.zero_()
    assert load_checkpoint(latest, _OneProcess(), {"m": model}, {"m": optimizer}, {}) == {"step": 3, "micro_step": 6}
    assert torch.all(model.weight == 3)
    with pytest.raises(ResumeError, match="not a checkpoint folder") as info:
        resolve_resume(str(root / "checkpoint-0000010"), tmp_path)
    assert resolve_resume("latest", tmp_path / "elsewhere") is None
    # Python callers read the argument's name; the CLI shows its flag
    assert info.value.argument == "resume" and str(info.value).startswith(f"resume {root / 'checkpoint-0000010'}: ")
    assert info.value.message(flag_for).startswith("--resume ")


def test_degradation_values_are_typed_at_load_time(tmp_path):
    """YAML reads 8e-1 as a string: converted once when the config loads, not found by the first sample."""
    (tmp_path / "train.yaml").write_text("data:\n  degradation:\n    kernel_info: {final_sinc_prob: 8e-1}\n"
                                         "    noise_range2: ['1', 2e1]\n")
    degradation = TrainConfig.from_yaml(tmp_path / "train.yaml").degradation_config()
    assert degradation.final_sinc_prob == 0.8 and isinstance(degradation.final_sinc_prob, float)
    assert degradation.stage2.noise_range == (1.0, 20.0)
    (tmp_path / "bad.yaml").write_text("data:\n  degradation: {final_sinc_prob: high}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.degradation: final_sinc_prob: expected a number"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"data\.degradation: stage1\.blur\.kernel_size: expected an integer"):
        TrainConfig.from_dict({"data": {"degradation": {"kernel_info": {"blur_kernel_size": 21.5}}}})


def test_training_errors_are_osediff_errors():
    from osediff.degradation import DegradationConfig
    from osediff.errors import OSEDiffError
    from osediff.losses import LPIPSWeightsError
    from osediff.training.checkpointing import ResumeError
    from osediff.training.data import TrainingDataError

    for error in (ConfigError, ResumeError, LPIPSWeightsError, TrainingDataError):
        assert issubclass(error, OSEDiffError), error
    assert issubclass(ConfigError, ValueError) and issubclass(ResumeError, ValueError)
    # argument and problem survive a trip between processes (accelerate, multiprocessing)
    again = pickle.loads(pickle.dumps(ResumeError("x: not a checkpoint folder", argument="resume")))
    assert type(again) is ResumeError and (again.argument, again.problem) == ("resume", "x: not a checkpoint folder")
    assert str(again) == "resume x: not a checkpoint folder" and again.message(flag_for).startswith("--resume x")
    with pytest.raises(ConfigError, match="final_sinc_prob"):
        DegradationConfig.from_dict({"final_sinc_prob": "8e-1x"})


def test_sources_mix_by_repeat_or_by_weight(tmp_path):
    from osediff.training.config import DataSource
    from osediff.training.data import source_probabilities

    lsdir, ffhq = DataSource("lsdir"), DataSource("ffhq")
    # the authors' mix: file lists repeated once each, drawn in proportion to their sizes
    faces = source_probabilities([lsdir, ffhq], [84_991, 10_000])[1]
    assert faces == pytest.approx(10_000 / 94_991) and round(faces * 100, 1) == 10.5
    twice = source_probabilities([lsdir, DataSource("ffhq", repeat=2)], [84_991, 10_000])[1]
    assert twice == pytest.approx(20_000 / 104_991)
    # weights are probabilities whatever the sizes; a source without one counts 1
    assert source_probabilities([lsdir, DataSource("ffhq", weight=1.0)], [84_991, 10_000]).tolist() == [0.5, 0.5]
    assert source_probabilities([DataSource("a", weight=3.0), lsdir], [1, 1000]).tolist() == [0.75, 0.25]
    with pytest.raises(ConfigError, match="not both kinds"):
        TrainConfig.from_dict({"data": {"sources": [{"path": "a", "repeat": 2}, {"path": "b", "weight": 1}]}})
    with pytest.raises(ConfigError, match="every repeat must be >= 1"):
        TrainConfig.from_dict({"data": {"sources": [{"path": "a", "repeat": 0}]}})
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.repeat: expected an integer"):
        TrainConfig.from_dict({"data": {"sources": [{"path": "a", "repeat": 1.5}]}})

    # and the data stream follows: 3 images in a, 1 in b, no weights -> a is drawn 3 times as often
    for name, count in (("a", 3), ("b", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            _png(tmp_path / name / f"{i}.png", 32, 10 * i)
    config = TrainConfig.from_dict({"data": {"sources": ["a", "b"], "crop_size": 32}}, base_dir=tmp_path)
    data = HQDataset(config.data, seed=1)
    share_a = np.mean([f"{tmp_path / 'a'}/" in data[i]["path"] for i in range(400)])
    assert 0.7 < share_a < 0.8


def test_example_configs_reproduce_the_authors_data():
    sr = TrainConfig.from_yaml(REPO_ROOT / "configs" / "train_osediff.yaml")
    assert [(Path(s.path).name, s.repeat, s.weight) for s in sr.data.sources] == [
        ("LSDIR", 1, None), ("ffhq10k.txt", 1, None)]
    face = TrainConfig.from_yaml(REPO_ROOT / "configs" / "train_osediff_face.yaml")
    assert face.data.degradation_model == "codeformer" and face.data.scale == 1
    from osediff.degradation import CodeFormerConfig

    assert face.degradation_config() == CodeFormerConfig()
    with pytest.raises(ConfigError, match=r"data\.scale: must be 1 with the codeformer degradation"):
        TrainConfig.from_dict({"data": {"degradation_model": "codeformer"}})
    with pytest.raises(ConfigError, match=r"data\.lq_resize: the codeformer degradation resizes"):
        TrainConfig.from_dict({"data": {"degradation_model": "codeformer", "scale": 1, "lq_resize": "degradation"}})
