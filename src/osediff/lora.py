"""LoRA target selection and merging, matching the module choice of the OSEDiff authors.

The authors wrap a fixed set of modules with peft LoRA adapters: three UNet adapters
(``default_encoder`` for the down path and ``conv_in``, ``default_decoder`` for the up path and
``conv_out``, ``default_others`` for the rest) and one VAE-encoder adapter. peft's default
``lora_alpha=8`` applies, so every LoRA delta is scaled by ``alpha / rank``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

LORA_ALPHA = 8.0
UNET_ADAPTERS = ("default_encoder", "default_decoder", "default_others")
VAE_ADAPTER = "default_encoder"

_UNET_PATTERNS = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
    "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
)
VAE_PATTERNS = (
    "conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0",
)
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")


def _weight_names(model: nn.Module) -> Iterable[str]:
    for name, _ in model.named_parameters():
        if name.endswith(".weight") and "bias" not in name and "norm" not in name:
            yield name[: -len(".weight")]


def unet_lora_targets(unet: nn.Module) -> dict[str, list[str]]:
    """Module names per UNet adapter, in the authors' order and grouping."""
    groups: dict[str, list[str]] = {name: [] for name in UNET_ADAPTERS}
    for name in _weight_names(unet):
        if not any(pattern in name for pattern in _UNET_PATTERNS):
            continue
        if "down_blocks" in name or "conv_in" in name:
            groups["default_encoder"].append(name)
        elif "up_blocks" in name or "conv_out" in name:
            groups["default_decoder"].append(name)
        else:
            groups["default_others"].append(name)
    return groups


def vae_lora_targets(vae: nn.Module) -> list[str]:
    """VAE-encoder module names (plus ``quant_conv``) that carry LoRA, without repeats."""
    targets = []
    for name in _weight_names(vae):
        in_encoder = name.startswith("encoder.") and any(p in name for p in VAE_PATTERNS)
        if in_encoder or name == "quant_conv":
            targets.append(name)
    return targets


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """Weight update ``scale * B @ A`` for a Linear or Conv2d LoRA pair (peft's layout).

    For convolutions peft's ``lora_A`` carries the kernel (r, in, k, k) and ``lora_B`` is a 1x1
    convolution (out, r, 1, 1), so the delta is B applied across A's rank dimension.
    """
    a = lora_a.float()
    b = lora_b.float().flatten(1)
    delta = b @ a.flatten(1)
    return (delta * scale).reshape(b.shape[0], *a.shape[1:])


def group_lora_state(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """``{module: {adapter: {"A": tensor, "B": tensor}}}`` from a peft-named state dict."""
    grouped: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match:
            module = match["module"]
            grouped.setdefault(module, {}).setdefault(match["adapter"], {})[match["part"]] = tensor
    return grouped


def base_layer_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Non-LoRA tensors (the fine-tuned ``conv_in``) renamed from peft's ``base_layer`` form."""
    return {key.replace(".base_layer.", "."): t for key, t in state.items() if "lora_" not in key}


@torch.no_grad()
def merge_lora(model: nn.Module, state: Mapping[str, torch.Tensor], rank: int,
               alpha: float = LORA_ALPHA) -> int:
    """Fold LoRA deltas (and replaced base weights) from a peft-named state dict into ``model``.

    Returns the number of LoRA pairs merged. Raises ``KeyError`` naming the first module that
    the model does not have, so a checkpoint for another architecture fails loudly.
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for key, tensor in base_layer_state(state).items():
        if key not in params:
            raise KeyError(f"checkpoint tensor {key!r} has no matching parameter in {type(model).__name__}")
        params[key].copy_(tensor.to(params[key].dtype))
    scale = alpha / rank
    grouped = group_lora_state(state)
    for module_name, adapters in grouped.items():
        if module_name not in modules:
            raise KeyError(f"LoRA module {module_name!r} not found in {type(model).__name__}")
        weight = modules[module_name].weight
        for adapter, pair in adapters.items():
            if set(pair) != {"A", "B"}:
                raise KeyError(f"LoRA module {module_name!r} adapter {adapter!r} lacks lora_A or lora_B")
            weight += lora_delta(pair["A"], pair["B"], scale).to(weight.device, weight.dtype)
    return sum(len(adapters) for adapters in grouped.values())


def attach_lora_adapters(model: nn.Module, targets: Mapping[str, list[str]], state: Mapping[str, torch.Tensor],
                         rank: int, alpha: float = LORA_ALPHA) -> nn.Module:
    """Wrap ``model`` with unmerged peft adapters (the authors' runtime form) and load ``state``.

    All adapters are activated together: peft otherwise leaves only the last one active.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    for adapter, names in targets.items():
        if names:
            config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=sorted(set(names)))
            with warnings.catch_warnings():
                # several adapters on one model are intended here (the authors' three UNet groups)
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(config, model, adapter_name=adapter)
    active = [name for name, names in targets.items() if names]
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(active)
    own = model.state_dict()
    missing = [key for key in state if key not in own]
    if missing:
        raise KeyError(f"{len(missing)} checkpoint tensors have no place in the model, e.g. {missing[0]!r}")
    model.load_state_dict(dict(state), strict=False)
    return model
