"""RAM / DAPE prompt extraction: published key layout, end-to-end tagging, thresholds, errors.

Everything runs on tiny random models built here; the full Swin-L architecture is only built on
the meta device and compared with the published key/shape list.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.checkpoint import CheckpointError, ModelNotFoundError
from osediff.cli.flags import flag_for
from osediff.prompts import compose_prompt, create_prompt_extractor
from osediff.prompts.ram_model import RAMConfig, RAMTagger, build_ram, imagenet_normalise, resize_for_ram
from osediff.prompts.ram_weights import (
    config_from_state_dict,
    is_ignored,
    load_published,
    published_state_dict,
    read_state_dict,
)
from osediff.prompts.tags import TagVocabulary, load_tag_vocabulary

# key -> shape of the published RAM and DAPE state dicts, taken from the authors' code instantiated
# with random weights (shared/ram_dape_state_dict.json, keys in state-dict order)
REFERENCE = Path(__file__).resolve().parent / "data" / "ram_dape_shapes.json.gz"
TAGS = ("3D CG rendering", "abacus", "cat", "dog", "house", "sky", "tree", "water", "car", "road", "grass", "zoo")


def random_tagger(cfg: RAMConfig, seed: int = 0) -> RAMTagger:
    """Random weights with spread-out logits (RAM's zero label_embed would give one logit for all tags)."""
    torch.manual_seed(seed)
    model = RAMTagger(cfg)
    with torch.no_grad():
        model.label_embed.normal_()
        model.fc.weight.normal_(0, 1.0)
        for layer in model.lora_layers():
            layer.lora_B.normal_(0, 0.5)  # trained adapters are non-zero
    return model.eval()


def write_published(model: RAMTagger, folder: Path) -> tuple[Path, Path]:
    """The two files as the authors ship them: RAM nested under "model" with the parts we ignore
    (Tag2Text encoder/decoder, condition layers, window buffers), DAPE flat with LoRA tensors only."""
    weights = published_state_dict(model)
    ram = {k: v for k, v in weights.items() if ".lora_" not in k}
    dape = {k: v for k, v in weights.items() if ".lora_" in k}
    for name, buffer in model.named_buffers():  # relative_position_index, attn_mask
        ram[name] = buffer
    for name, _ in model.named_modules():
        if name.endswith(".blocks.0") or name.endswith(".blocks.1"):
            ram[f"{name}.condition_attention.0.weight"] = torch.zeros(4, 2)
    ram["tag_encoder.encoder.layer.0.crossattention.self.query.weight"] = torch.randn(4, 4)
    ram["text_decoder.cls.predictions.bias"] = torch.randn(4)
    dape["tag_encoder.encoder.layer.0.attention.self.query.lora_A"] = torch.randn(2, 4)
    ram_path, dape_path = folder / "ram_swin_large_14m.pth", folder / "DAPE.pth"
    torch.save({"model": ram}, ram_path)
    torch.save(dape, dape_path)
    return ram_path, dape_path


def write_tags(folder: Path, thresholds: list[float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ram_tag_list.txt").write_text("\n".join(TAGS) + "\n")
    (folder / "ram_tag_list_threshold.txt").write_text("\n".join(f"{t}" for t in thresholds) + "\n")
    return folder


def images() -> list[Image.Image]:
    torch.manual_seed(5)
    shapes = [(40, 48), (32, 32), (64, 36)]
    return [Image.fromarray((torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()) for h, w in shapes]


def expected_tags(model: RAMTagger, pictures: list[Image.Image], thresholds: list[float]) -> list[str]:
    """Straight-line reference: per image resize + normalise, unmerged fp32 model, hand thresholding."""
    out = []
    for picture in pictures:
        pixels = torch.tensor(np.array(picture)).permute(2, 0, 1)[None].float() / 255
        x = imagenet_normalise(resize_for_ram(pixels, model.config.image_size))
        with torch.no_grad():
            probs = torch.sigmoid(model(x))[0].tolist()
        out.append(", ".join(tag for tag, p, t in zip(TAGS, probs, thresholds, strict=True) if p > t))
    return out


@pytest.mark.parametrize("variant", ["ram", "dape"])
def test_full_architecture_matches_published_keys(variant):
    reference = json.loads(gzip.decompress(REFERENCE.read_bytes()))[variant]
    shapes = {k: torch.empty(v, device="meta") for k, v in reference.items()}
    lora = {k: v for k, v in shapes.items() if ".lora_" in k} if variant == "dape" else None
    cfg = config_from_state_dict(shapes, lora)
    assert cfg == (RAMConfig().with_lora(8) if variant == "dape" else RAMConfig())
    ours = {k: tuple(v.shape) for k, v in published_state_dict(build_ram(cfg, device="meta")).items()}
    theirs = {k: tuple(v) for k, v in reference.items() if not is_ignored(k)}
    assert ours == theirs
    ignored = [k for k in reference if is_ignored(k)]
    assert len(ours) + len(ignored) == len(reference) == (1290 if variant == "dape" else 1090)
    assert all(k.startswith(("tag_encoder.", "text_decoder.")) or k.endswith(
        ("relative_position_index", "attn_mask")) or ".condition_" in k for k in ignored)


def test_dape_end_to_end_published_layout(tmp_path):
    model = random_tagger(RAMConfig.tiny(num_classes=len(TAGS), lora_rank=2))
    ram_path, dape_path = write_published(model, tmp_path)
    # the whole path from files: zero missing/unexpected, only the documented keys ignored
    fresh = build_ram(config_from_state_dict(read_state_dict(ram_path), read_state_dict(dape_path)))
    report = load_published(fresh, read_state_dict(ram_path), read_state_dict(dape_path))
    assert sorted(report.loaded) == sorted(fresh.state_dict())
    assert all(is_ignored(k) for k in report.ignored) and len(report.ignored) > 10

    pictures = images()
    probs = torch.sigmoid(model(imagenet_normalise(resize_for_ram(torch.rand(1, 3, 32, 32), 32))))
    median = probs.median().item()
    thresholds = [median] * len(TAGS)  # about half the tags on, so the check can fail either way
    tags_dir = write_tags(tmp_path / "tags", thresholds)
    extract = create_prompt_extractor("dape", ram_path=ram_path, dape_path=dape_path, tags_path=tags_dir,
                                      device="cpu", batch_size=2)
    expected = expected_tags(model, pictures, thresholds)
    assert any(expected) and any(len(e.split(", ")) < len(TAGS) for e in expected)
    assert extract(pictures, "sharp") == [compose_prompt(t, "sharp") for t in expected]
    assert extract(pictures)[0] == f"{expected[0]}, ,"  # the authors' "<tags>, <user>," exactly


def test_ram_differs_from_dape_and_ignores_lora(tmp_path):
    model = random_tagger(RAMConfig.tiny(num_classes=len(TAGS), lora_rank=2))
    ram_path, dape_path = write_published(model, tmp_path)
    tags_dir = write_tags(tmp_path / "tags", [0.5] * len(TAGS))
    ram = create_prompt_extractor("ram", ram_path=ram_path, tags_path=tags_dir, device="cpu", bare=True)
    dape = create_prompt_extractor("dape", ram_path=ram_path, dape_path=dape_path, tags_path=tags_dir,
                                   device="cpu", bare=True)
    x = torch.rand(2, 3, 50, 40)
    # plain RAM = the same network with the adapters switched off
    plain = random_tagger(RAMConfig.tiny(num_classes=len(TAGS), lora_rank=2))
    for layer in plain.lora_layers():
        layer.lora_B.data.zero_()
    reference = torch.sigmoid(plain(imagenet_normalise(resize_for_ram(x, 32))))
    torch.testing.assert_close(ram.probabilities(x), reference, atol=1e-5, rtol=0)
    assert (dape.probabilities(x) - ram.probabilities(x)).abs().max() > 1e-3


def test_threshold_logic_with_hand_set_logits(tmp_path):
    model = random_tagger(RAMConfig.tiny(num_classes=len(TAGS)))
    with torch.no_grad():  # every tag's logit = bias: sigmoid(0.4) = 0.5987
        model.fc.weight.zero_()
        model.fc.bias.fill_(0.4)
    p = torch.sigmoid(torch.tensor(0.4)).item()
    thresholds = [0.5, 0.65, p, 0.9, 0.45, 1.0, 0.59, 0.6, 0.0, 0.8, 0.7, 0.99]
    ram_path, _ = write_published(model, tmp_path)
    extract = create_prompt_extractor("ram", ram_path=ram_path, tags_path=write_tags(tmp_path / "t", thresholds),
                                      device="cpu")
    # strictly above the threshold, in vocabulary order: 0.5, 0.45, 0.59, 0.0 fire; p itself does not
    assert extract(images()[:1], "x") == ["3D CG rendering, house, tree, car, x,"]

    vocabulary = TagVocabulary(("a", "b", "c"), (0.6, 0.5, 0.7))
    logits = torch.tensor([[2.0, -2.0, 0.0], [-5.0, -5.0, -5.0], [0.0, 0.0, 5.0]])
    assert vocabulary.select(torch.sigmoid(logits)) == ["a", "", "c"]
    assert compose_prompt("", "") == ", ,"
    # fp16 scores meet fp32 thresholds, as in the authors' half-precision run: 0.6 and 0.7 round up
    # (0.60010, 0.70020) and fire, 0.5001 rounds to 0.5 and does not
    assert vocabulary.select(torch.tensor([[0.6, 0.5001, 0.7]], dtype=torch.float16)) == ["a, c"]


def test_checkpoint_problems_are_named(tmp_path):
    model = random_tagger(RAMConfig.tiny(num_classes=len(TAGS), lora_rank=2))
    ram_path, dape_path = write_published(model, tmp_path)
    ram, dape = read_state_dict(ram_path), read_state_dict(dape_path)
    with pytest.raises(CheckpointError, match="no LoRA"):
        load_published(build_ram(model.config), ram, {"label_embed": ram["label_embed"]})
    broken = dict(ram)
    del broken["fc.bias"]
    broken["visual_encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing \(fc.bias\); 1 unexpected \(visual_encoder.extra"):
        load_published(build_ram(model.config), broken, dape)
    # a DataParallel prefix is stripped rather than silently loading nothing
    torch.save({"module." + k: v for k, v in dape.items()}, tmp_path / "prefixed.pth")
    assert read_state_dict(tmp_path / "prefixed.pth").keys() == dape.keys()


def test_offline_errors_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        create_prompt_extractor("dape", local_files_only=True)
    message, cli = str(info.value), info.value.message(flag_for)
    for needed in ("ram_swin_large_14m.pth", "DAPE.pth", "ram_tag_list.txt", "not in the local cache"):
        assert needed in message and needed in cli
    for argument, flag in (("ram_path=", "--ram "), ("dape_path=", "--dape "), ("tags_path=", "--ram-tags ")):
        assert argument in message and flag not in message and flag in cli and argument not in cli
    assert "\n" not in message and "://" not in message  # one line, no wall of URLs
    with pytest.raises(ModelNotFoundError, match=r"nope\.pth: file not found"):
        create_prompt_extractor("ram", ram_path=tmp_path / "nope.pth", tags_path=write_tags(tmp_path / "t", [0.5] * 12))
    with pytest.raises(ModelNotFoundError, match=r"ram_tag_list_threshold\.txt"):
        load_tag_vocabulary(tmp_path / "elsewhere" / "ram_tag_list.txt", local_files_only=True)


def test_bad_tag_files_are_one_line_errors_naming_the_files(tmp_path):
    model = random_tagger(RAMConfig.tiny(num_classes=len(TAGS)))
    ram_path, _ = write_published(model, tmp_path)
    short = write_tags(tmp_path / "short", [0.5] * (len(TAGS) - 1))
    tag_list, thresholds = short / "ram_tag_list.txt", short / "ram_tag_list_threshold.txt"
    with pytest.raises(CheckpointError) as info:
        create_prompt_extractor("ram", ram_path=ram_path, tags_path=short, device="cpu")
    assert str(info.value) == (f"{tag_list} lists 12 tags but {thresholds} has 11 thresholds; pass a tag list and "
                               "thresholds with one line per tag each (RAM's files come as a pair)")

    word = write_tags(tmp_path / "word", [0.5] * len(TAGS))
    (word / "ram_tag_list_threshold.txt").write_text("0.5\n\nhigh\n" + "0.5\n" * 9)
    with pytest.raises(CheckpointError, match=r"ram_tag_list_threshold\.txt: line 3 \('high'\) is not a number; "):
        load_tag_vocabulary(word)
    (word / "ram_tag_list_threshold.txt").write_bytes(b"\xff\xfe0.5\n")
    with pytest.raises(CheckpointError, match="not a UTF-8 text file"):
        load_tag_vocabulary(word)

    more = tmp_path / "more"
    more.mkdir()
    (more / "ram_tag_list.txt").write_text("\n".join((*TAGS, "extra")) + "\n")
    (more / "ram_tag_list_threshold.txt").write_text("0.5\n" * (len(TAGS) + 1))
    with pytest.raises(CheckpointError) as info:
        create_prompt_extractor("ram", ram_path=ram_path, tags_path=more, device="cpu")
    message = str(info.value)
    assert message.startswith(f"{ram_path} scores 12 tags but {more / 'ram_tag_list.txt'} lists 13; ")
    assert "\n" not in message


def test_a_file_that_is_not_ram_names_it(tmp_path):
    model = random_tagger(RAMConfig.tiny(num_classes=len(TAGS), lora_rank=2))
    ram_path, _ = write_published(model, tmp_path)
    other = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    tags = write_tags(tmp_path / "tags", [0.5] * len(TAGS))
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{other}: not a RAM (Swin) checkpoint")):
        create_prompt_extractor("ram", ram_path=other, tags_path=tags, device="cpu")
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{ram_path} with {other}: ") + ".*no LoRA"):
        create_prompt_extractor("dape", ram_path=ram_path, dape_path=other, tags_path=tags, device="cpu")


def test_vocabulary_files_and_import_is_light(tmp_path):
    folder = write_tags(tmp_path / "v", [0.65] * 11 + [1.0])
    vocabulary = load_tag_vocabulary(folder / "ram_tag_list.txt")  # thresholds found beside the list
    assert vocabulary.names == TAGS and vocabulary.thresholds[-1] == 1.0
    code = ("import sys, osediff.prompts as p; "
            "assert {'dape', 'ram', 'caption'} <= set(p.available_prompt_extractors()); "
            "print(sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
