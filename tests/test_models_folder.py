"""The models folder as every resolver reads it: first, before caches and network; the default files only;
an incomplete copy not used and named; the folder named by option, env or default, and carried by ModelOptions."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from osediff.checkpoint import ModelNotFoundError, resolve_base, store
from osediff.checkpoint.hub import url_cache_path
from osediff.cli import build_parser, main
from osediff.cli.flags import flag_for
from osediff.model_files import ModelOptions, find_model_files
from osediff.presets import resolve_weights
from osediff.prompts import files, resolve_extractor_files


@pytest.fixture
def caches(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache" / "osediff"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "hub"))
    monkeypatch.delenv("OSEDIFF_MODELS", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def models(tmp_path, tiny_base_dir, tiny_pkl) -> Path:
    """A models folder with the base, the osediff weights and the DAPE prompt files."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_base_dir, folder / "base")
    (folder / "weights").mkdir()
    shutil.copyfile(tiny_pkl, folder / "weights" / "osediff.pkl")
    (folder / "prompts").mkdir()
    for name in ("ram_swin_large_14m.pth", "DAPE.pth", "ram_tag_list.txt", "ram_tag_list_threshold.txt"):
        (folder / "prompts" / name).write_bytes(b"x")
    return folder


def test_every_resolver_reads_the_folder_first(caches, models, no_network):
    assert resolve_base(models_dir=models) == models / "base"
    assert resolve_base("stabilityai/stable-diffusion-2-1-base", models_dir=models) == models / "base"
    assert resolve_weights(models_dir=models) == models / "weights" / "osediff.pkl"
    with store.using(models):
        found = resolve_extractor_files("dape")
    assert found == {"ram_path": models / "prompts" / "ram_swin_large_14m.pth",
                     "dape_path": models / "prompts" / "DAPE.pth",
                     "tags_path": models / "prompts" / "ram_tag_list.txt",
                     "thresholds_path": models / "prompts" / "ram_tag_list_threshold.txt"}
    files_ = find_model_files(ModelOptions(models_dir=str(models)), ["dape", "text"])
    assert files_.base == models / "base" and files_.weights == models / "weights" / "osediff.pkl"
    assert files_.extractors["dape"] == found and files_.extractors["text"] == {}
    assert not no_network  # found without asking any host
    # it holds the default files only: a file of your own is read as given
    mine = caches.parent / "my.pkl"
    mine.write_bytes(b"w")
    assert resolve_weights(str(mine), models_dir=models) == mine
    with store.using(models):
        assert resolve_extractor_files("dape", dape=mine)["dape_path"] == mine


def test_the_folder_comes_before_the_caches(caches, models, monkeypatch):
    from osediff.presets import PRESETS

    face = url_cache_path(PRESETS["face"].weights)  # the face weights in the osediff cache
    face.parent.mkdir(parents=True)
    face.write_bytes(b"cached")
    assert resolve_weights(preset="face", models_dir=models) == face
    (models / "weights" / "osediff_face.pkl").write_bytes(b"stored")
    assert resolve_weights(preset="face", models_dir=models) == models / "weights" / "osediff_face.pkl"


def test_which_folder_option_then_env_then_default(caches, models, tmp_path, monkeypatch):
    assert store.models_folder() == caches / "osediff" / "models"
    monkeypatch.setenv("OSEDIFF_MODELS", str(models))
    assert store.models_folder() == models and resolve_weights() == models / "weights" / "osediff.pkl"
    assert store.models_folder(tmp_path / "other") == tmp_path / "other"
    with store.using(tmp_path / "ctx"):
        assert store.models_folder() == tmp_path / "ctx"
    # ModelOptions takes the env when made, so the folder travels with it to other processes (Ray replicas)
    options = ModelOptions()
    monkeypatch.delenv("OSEDIFF_MODELS")
    assert pickle.loads(pickle.dumps(options)).models_dir == str(models)
    assert ModelOptions(models_dir=tmp_path / "given").models_dir == str(tmp_path / "given")
    assert ModelOptions().models_dir is None
    # the default folder is read like any other
    default = caches / "osediff" / "models"
    shutil.copytree(models, default)
    assert find_model_files(ModelOptions(offline=True)).base == default / "base"


def test_an_incomplete_or_changed_copy_is_not_used_and_is_named(caches, models, no_network):
    (models / "base" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as info:
        find_model_files(ModelOptions(models_dir=str(models), offline=True))
    message = info.value.message(flag_for)
    assert "\n" not in message
    assert message.startswith(f"{models / 'base'}: incomplete SD-2.1-base folder (missing "
                              "unet/diffusion_pytorch_model.safetensors); Stable Diffusion 2.1-base")
    assert "--models-dir <folder filled by osediff models download> --base" in message
    # a file whose size is not the recorded one (a copy cut short)
    (models / store.MANIFEST).write_text(json.dumps({"files": {"weights/osediff.pkl": {"size": 10**9}}}))
    with pytest.raises(ModelNotFoundError, match=r"osediff.pkl: \d+ bytes, not the 1000000000 recorded when it was "
                                                 r"downloaded \(an incomplete copy\?\)"):
        resolve_weights(models_dir=models, local_files_only=True)


def test_a_named_folder_that_does_not_exist_is_said_once(caches, tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(ModelNotFoundError) as info:
        find_model_files(ModelOptions(models_dir=str(nowhere), offline=True), ["dape"])
    assert info.value.reason.count("not found") == 1 and info.value.reason.startswith(f"models folder {nowhere}: "
                                                                                      "not found; ")
    assert "; pass models_dir=<folder filled by osediff models download>, base=<" in str(info.value)
    # the default folder, when absent, is not mentioned: messages are as before
    with pytest.raises(ModelNotFoundError) as default:
        find_model_files(ModelOptions(offline=True))
    assert "models folder" not in str(default.value)


def test_a_captioner_from_the_folder(caches, tmp_path):
    folder = tmp_path / "models" / store.captioner_folder(files.DEFAULT_CAPTIONER)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert folder.name == "Salesforce--blip-image-captioning-base"
    with store.using(tmp_path / "models"):
        assert resolve_extractor_files("caption", local_files_only=True) == {"model": folder}
    assert files.resolve_captioner("Salesforce/blip-image-captioning-base", models_dir=tmp_path / "models") == folder


def test_every_command_that_loads_a_model_takes_models_dir():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("upscale", "demo", "serve", "eval"):
        assert "--models-dir" in commands[name]._option_string_actions, name
    assert flag_for("models_dir") == "--models-dir"
    models = commands["models"]._subparsers._group_actions[0].choices
    assert set(models) == {"download", "list"}
    assert all(p.allow_abbrev is False for p in (commands["models"], *models.values()))


def test_the_models_command_line(capsys, caches, tmp_path):
    with pytest.raises(SystemExit):
        main(["models", "downlod"])
    assert "did you mean 'download'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "download", "--extractor", "dap"])
    assert "did you mean 'dape'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "list", "--model-dir", "x"])
    assert "did you mean --models-dir" in capsys.readouterr().err
    assert main(["models", "list", "--debug", "--models-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"models folder: {tmp_path / 'm'} (does not exist)\n")
    assert "offline now: presets none; prompt extractors none, text" in out
