"""``prompts.source: ram`` in training: the RAM tagger's files are found before any model loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.checkpoint import ModelNotFoundError
from osediff.cli import main
from osediff.prompts import base, create_prompt_extractor
from osediff.prompts.ram_model import RAMConfig, RAMTagger
from osediff.prompts.ram_weights import published_state_dict
from osediff.training import TrainConfig, TrainResult, train

pytestmark = pytest.mark.usefixtures("single_thread")

TAGS = ("cat", "dog", "house", "sky", "tree", "water", "car", "road")


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty hub and download caches, so the default RAM files are nowhere."""
    from huggingface_hub import constants

    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache" / "osediff"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "hub"))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Building the Trainer or loading SD fails the test: every user error comes first."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the error was found")

    monkeypatch.setattr("osediff.training.loop.Trainer", fail)
    monkeypatch.setattr("osediff.components.load_base_components", fail)


def _write_tiny_ram(folder: Path, thresholds: list[float]) -> tuple[Path, Path]:
    """A tiny random RAM in the published layout (nested under "model") and its tag files."""
    torch.manual_seed(0)
    model = RAMTagger(RAMConfig.tiny(num_classes=len(TAGS)))
    with torch.no_grad():  # RAM's zero label_embed would give every tag the same score
        model.label_embed.normal_()
        model.fc.weight.normal_()
    (folder / "models").mkdir(parents=True)
    ram_path = folder / "models" / "ram.pth"
    torch.save({"model": published_state_dict(model)}, ram_path)
    return ram_path, _write_tags(folder / "tags", thresholds)


def _write_tags(folder: Path, thresholds: list[float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ram_tag_list.txt").write_text("\n".join(TAGS) + "\n")
    (folder / "ram_tag_list_threshold.txt").write_text("\n".join(map(str, thresholds)) + "\n")
    return folder


def _config(tmp_path: Path, prompts: str, base_dir: Path | str = "nowhere/sd") -> Path:
    (tmp_path / "hq").mkdir(exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "hq" / "1.png")
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{sources: [hq], crop_size: 32, num_workers: 0}}\nprompts: {prompts}\n"
                      f"model: {{base: '{base_dir}'}}\nloss: {{lpips_pretrained: false, regularization: none}}\n"
                      f"run: {{output_dir: out, mixed_precision: 'no', device: cpu}}\n")
    return config


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_missing_ram_file_is_one_line_before_any_model_loads(tmp_path, tiny_base_dir, no_model_loads, capsys):
    _write_tags(tmp_path / "tags", [0.5] * len(TAGS))
    config = _config(tmp_path, "{source: ram, ram_options: {ram_path: models/nope.pth, tags_path: tags}}",
                     tiny_base_dir)
    assert main(["train", "--config", str(config)]) == 2
    err = _one_error_line(capsys)
    # the path as the config means it (relative to the config file), and only the key that supplies it
    assert f"{tmp_path / 'models' / 'nope.pth'}: file not found" in err
    assert err.rstrip().endswith("pass prompts.ram_options.ram_path (ram_swin_large_14m.pth) in the --config file")
    assert "tags_path" not in err


@pytest.mark.parametrize("offline", ["local_files_only", "HF_HUB_OFFLINE"])
def test_cli_offline_with_nothing_cached_names_the_config_keys(offline, tmp_path, tiny_base_dir, caches,
                                                               no_model_loads, no_network, capsys, monkeypatch):
    options = "{local_files_only: true}" if offline == "local_files_only" else "{}"
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, f"{{source: ram, ram_options: {options}}}", tiny_base_dir)
    assert main(["train", "--config", str(config)]) == 2
    err = _one_error_line(capsys)
    assert "RAM prompts: ram_swin_large_14m.pth" in err and "not in the local cache" in err
    assert err.rstrip().endswith(
        "pass prompts.ram_options.ram_path (ram_swin_large_14m.pth) and prompts.ram_options.tags_path "
        "(a folder with ram_tag_list.txt and ram_tag_list_threshold.txt) in the --config file")
    if offline == "local_files_only":
        assert "(offline mode)" in err and no_network == []  # not even a probe


def test_train_function_finds_the_ram_files_before_the_trainer(tmp_path, caches, no_model_loads):
    config = TrainConfig.from_yaml(_config(tmp_path, "{source: ram, ram_options: {local_files_only: true}}"))
    with pytest.raises(ModelNotFoundError, match=r"in the training config$") as info:
        train(config)
    assert "prompts.ram_options.ram_path" in str(info.value)


def test_missing_base_and_ram_files_are_one_error_naming_the_config_keys(tmp_path, caches, no_network):
    import pickle

    from osediff.cli.flags import flag_for
    from osediff.training.files import ConfigFilesError, find_run_inputs

    config = TrainConfig.from_yaml(_config(tmp_path, "{source: ram, ram_options: {local_files_only: true}}"))
    with pytest.raises(ConfigFilesError) as info:
        find_run_inputs(config, None)
    err = info.value
    assert isinstance(err, ModelNotFoundError)
    assert err.reason == ("Stable Diffusion 2.1-base (nowhere/sd): not in the local cache and the hub could not be "
                          "reached; ram_swin_large_14m.pth, ram_tag_list.txt, ram_tag_list_threshold.txt: not in "
                          "the local cache (offline mode)")
    keys = ("model.base (a diffusers folder or hub id), prompts.ram_options.ram_path (ram_swin_large_14m.pth) and "
            "prompts.ram_options.tags_path (a folder with ram_tag_list.txt and ram_tag_list_threshold.txt)")
    assert str(err) == f"{err.reason}; pass {keys} in the training config"
    assert err.message(flag_for) == f"{err.reason}; pass {keys} in the --config file"
    again = pickle.loads(pickle.dumps(err))  # e.g. from a Ray worker
    assert type(again) is ConfigFilesError and str(again) == str(err)
    assert again.message(flag_for) == err.message(flag_for)


def test_train_function_hands_the_resolved_files_to_the_trainer(tmp_path, monkeypatch):
    ram_path, tags = _write_tiny_ram(tmp_path, [0.5] * len(TAGS))
    seen = {}

    class Recorder:
        def __init__(self, config, components=None, prompt_options=None) -> None:
            seen["options"] = prompt_options

        def resume(self, spec):
            pass

        def fit(self, *args):
            return TrainResult(0)

    monkeypatch.setattr("osediff.training.loop.Trainer", Recorder)
    config = TrainConfig.from_yaml(_config(tmp_path, "{source: ram, ram_options: "
                                                     "{ram_path: models/ram.pth, tags_path: tags, batch_size: 2}}"))
    train(config)
    assert seen["options"] == {"ram_path": ram_path, "tags_path": tags / "ram_tag_list.txt",
                               "thresholds_path": tags / "ram_tag_list_threshold.txt", "batch_size": 2,
                               "local_files_only": True}


def test_cli_tags_the_crops_with_the_configured_ram_file(tmp_path, tiny_base_dir, monkeypatch, capsys):
    ram_path, tags = _write_tiny_ram(tmp_path, [0.5] * len(TAGS))
    hq = torch.randint(0, 256, (3, 3, 32, 32)) / 255  # exact in uint8, so both sides see the same pixels
    pictures = [Image.fromarray((x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)) for x in hq]
    # thresholds at the median score: about half the tags on, so a wrong model or file shows
    probe = create_prompt_extractor("ram", ram_path=ram_path, tags_path=tags, device="cpu")
    probs = probe.probabilities(hq)
    _write_tags(tags, [probs.median().item()] * len(TAGS))
    expected = create_prompt_extractor("ram", ram_path=ram_path, tags_path=tags, device="cpu", bare=True)(pictures)
    assert any(expected) and any(len(t.split(", ")) < len(TAGS) for t in expected)

    factory = base._REGISTRY["ram"]
    calls = []

    def spy(**kwargs):
        calls.append(kwargs)
        return factory.factory(**kwargs)

    monkeypatch.setitem(base._REGISTRY, "ram", base._Entry(spy, factory.files))
    tagged = []

    def fit(self, max_steps=None, progress=True, dataset=None):
        tagged.append(self.prompts_for(hq, ["", "", ""]))
        return TrainResult(0)

    monkeypatch.setattr("osediff.training.loop.Trainer.fit", fit)
    config = _config(tmp_path, "{source: ram, ram_options: {ram_path: models/ram.pth, tags_path: tags}}",
                     tiny_base_dir)
    assert main(["train", "--config", str(config)]) == 0, capsys.readouterr().err
    assert tagged == [expected]
    assert len(calls) == 1
    assert calls[0]["ram_path"] == ram_path and calls[0]["tags_path"] == tags / "ram_tag_list.txt"
    assert calls[0]["local_files_only"] is True and calls[0]["bare"] is True and calls[0]["device"] == "cpu"
