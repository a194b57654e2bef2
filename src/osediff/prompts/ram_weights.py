"""Loading the published RAM (``ram_swin_large_14m.pth``) and DAPE (``DAPE.pth``) files.

Published key layout -> ours differs in two places only:

- RAM's Swin downsamples at the *end* of stage i (``layers.i.downsample``), timm at the *start*
  of stage i+1 (``layers.{i+1}.downsample``); same PatchMerging maths and tensors.
- the tagging head's layers live under ``tagging_head.encoder.layer.N`` there and
  ``tagging_head.N`` here (its embeddings and self-attention were deleted in RAM anyway).

Keys that are read but deliberately not loaded (see :data:`IGNORED_KEYS`):

- ``tag_encoder.*`` and ``text_decoder.*`` (incl. their LoRA in DAPE): Tag2Text's image-tag
  interaction encoder and captioning decoder. Tagging never runs them; the two tag_encoder layers
  tied to the tagging head are stored again under ``tagging_head.*``, which we do load.
- ``*.condition_attention.*`` / ``*.condition_ffn.*`` (RAM file only): zero-initialised extras of
  the authors' Swin copy that no caller uses.
- ``*.relative_position_index`` and ``*.attn_mask``: derived from the window geometry; the
  authors' loader drops them too and the model recomputes them. They are compared with ours and a
  mismatch is reported as a warning.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..checkpoint.weights import CheckpointError
from .ram_model import RAMConfig, RAMTagger

IGNORED_KEYS: dict[str, str] = {
    r"^(tag_encoder|text_decoder)\.": "Tag2Text encoder/decoder, unused for tagging",
    r"\.condition_(attention|ffn)\.": "zero-initialised, never called",
    r"\.(relative_position_index|attn_mask)$": "recomputed from the window geometry",
}
_IGNORED = [re.compile(pattern) for pattern in IGNORED_KEYS]


def _shift_stage(key: str, offset: int) -> str:
    return re.sub(r"^visual_encoder\.layers\.(\d+)\.downsample\.",
                  lambda m: f"visual_encoder.layers.{int(m.group(1)) + offset}.downsample.", key)


def to_model_key(published: str) -> str:
    """Published checkpoint name -> :class:`RAMTagger` state-dict name."""
    key = published.replace("vision_multi", "tagging_head")  # older RAM releases' name for the head
    key = re.sub(r"^tagging_head\.encoder\.layer\.", "tagging_head.", key)
    return _shift_stage(key, +1)


def to_published_key(ours: str) -> str:
    """:class:`RAMTagger` state-dict name -> the published checkpoint name."""
    key = re.sub(r"^tagging_head\.(\d+)\.", r"tagging_head.encoder.layer.\1.", ours)
    return _shift_stage(key, -1)


def is_ignored(published: str) -> bool:
    return any(pattern.search(published) for pattern in _IGNORED)


def published_state_dict(model: RAMTagger) -> dict[str, torch.Tensor]:
    """Our weights under the published names (the parts this model has)."""
    return {to_published_key(k): v for k, v in model.state_dict().items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` file, unpickled with ``weights_only=True`` and memory-mapped if possible.

    RAM nests its tensors under ``"model"``; DAPE is flat. Common wrappers (``state_dict``,
    ``params``) and a DataParallel ``module.`` prefix are removed; the authors' non-strict
    loader would silently load nothing from such files.
    """
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: holds Python objects besides tensors, which are not unpickled here (weights_only). "
            "If you trust the file, save its state dict once: torch.save(torch.load(path, weights_only=False)"
            "['model'], 'ram_state.pth'), and pass that file instead.") from None
    for wrapper in ("model", "state_dict", "params"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def config_from_state_dict(ram: Mapping[str, torch.Tensor],
                           dape: Mapping[str, torch.Tensor] | None = None) -> RAMConfig:
    """Architecture read from tensor shapes (published names), so any RAM-shaped file builds its model.

    Two things are not in the shapes: the tagging head keeps RAM's 4 heads (q2l_config), and the
    input size is taken as the one where the last Swin stage is a single window (384 for the
    published Swin-L: 12-token window x patch 4 x 2³ downsamplings).
    """
    ram = {k.replace("vision_multi", "tagging_head"): v for k, v in ram.items()}
    try:
        patch = ram["visual_encoder.patch_embed.proj.weight"]
        stages = sorted({int(m.group(1)) for k in ram
                         if (m := re.match(r"visual_encoder\.layers\.(\d+)\.blocks\.", k))})
        depths = tuple(len({k.split(".")[4] for k in ram if k.startswith(f"visual_encoder.layers.{i}.blocks.")})
                       for i in stages)
        num_heads = tuple(ram[f"visual_encoder.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]
                          for i in stages)
        table_rows = ram["visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        window = (round(table_rows**0.5) + 1) // 2  # rows = (2w - 1)²
        head_layers = len({k.split(".")[3] for k in ram if k.startswith("tagging_head.encoder.layer.")})
        lora = [v for k, v in (dape or {}).items() if k.endswith(".lora_A") and k.startswith("tagging_head.")]
        return RAMConfig(
            image_size=window * patch.shape[-1] * 2 ** (len(stages) - 1), patch_size=patch.shape[-1],
            embed_dim=patch.shape[0], depths=depths, num_heads=num_heads, window_size=window,
            embed_width=ram["image_proj.weight"].shape[0], hidden_size=ram["wordvec_proj.weight"].shape[0],
            head_layers=head_layers, head_heads=4,
            intermediate_size=ram["tagging_head.encoder.layer.0.intermediate.dense.weight"].shape[0],
            num_classes=ram["label_embed"].shape[0], lora_rank=lora[0].shape[0] if lora else 0)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"not a RAM (Swin) checkpoint: no tensor {err}") from None


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # published names, see IGNORED_KEYS


def load_published(model: RAMTagger, ram: Mapping[str, torch.Tensor],
                   dape: Mapping[str, torch.Tensor] | None = None) -> LoadReport:
    """Load RAM's state dict, then DAPE's on top (its LoRA tensors; any base tensor overrides RAM's).

    Strict: every model tensor must come from the files, and every file key must be either
    loaded or in :data:`IGNORED_KEYS`; otherwise :class:`CheckpointError` lists the offenders.
    """
    if dape is not None and not any(".lora_" in k for k in dape):
        raise CheckpointError("the DAPE file holds no LoRA tensors (expected keys like '*.qkv.lora_A')")
    report = LoadReport()
    combined: dict[str, torch.Tensor] = {}
    derived: dict[str, torch.Tensor] = {}
    for source in (ram, dape or {}):
        for name, tensor in source.items():
            if is_ignored(name):
                report.ignored.append(name)
                if name.startswith("visual_encoder."):
                    derived[to_model_key(name)] = tensor
                continue
            combined[to_model_key(name)] = tensor
    expected = model.state_dict()
    missing = [to_published_key(k) for k in expected if k not in combined]
    unexpected = [to_published_key(k) for k in combined if k not in expected]
    if missing or unexpected:
        raise CheckpointError(_mismatch("keys", missing, unexpected))
    wrong = [f"{to_published_key(k)} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
             for k, v in combined.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError("shape mismatch (a RAM variant other than Swin-L 384 / window 12?): "
                              + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
    model.load_state_dict(combined, strict=True)
    report.loaded = sorted(combined)
    _check_derived(model, derived)
    return report


def _check_derived(model: RAMTagger, stored: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    differing = [name for name, tensor in stored.items()
                 if name in buffers and (buffers[name].shape != tensor.shape
                                         or not torch.equal(buffers[name].float().cpu(), tensor.float()))]
    if differing:
        warnings.warn(f"{len(differing)} stored window buffers differ from the recomputed ones "
                      f"(e.g. {differing[0]}); the recomputed ones are used, as in RAM's own loader",
                      stacklevel=3)


def _mismatch(what: str, missing: list[str], unexpected: list[str]) -> str:
    def head(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({head(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({head(unexpected)})")
    return f"RAM/DAPE checkpoint {what} do not match the model: " + "; ".join(parts)
