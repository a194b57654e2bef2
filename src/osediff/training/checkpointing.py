"""Atomic training checkpoints that resume a run exactly.

A checkpoint is a folder ``checkpoints/checkpoint-<step>`` holding the trainable tensors only
(LoRA, conv_in, discriminator), the optimiser, LR-scheduler and grad-scaler states, every
process's RNG states (python, numpy, torch, CUDA), the step counters and the config. It is written
into a hidden temporary folder and renamed into place, so a crash never leaves a half checkpoint
that ``resume="latest"`` would pick. The data stream needs no state of its own: samples are a
function of (seed, position), and the position follows from the micro-step counter.
Multi-node runs need the output folder on a shared file system.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import OSEDiffError

PREFIX = "checkpoint-"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


class ResumeError(OSEDiffError, ValueError):
    """The checkpoint to resume from (``argument="resume"``, ``osediff train --resume``) is not usable."""


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    root = checkpoints_root(output_dir)
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.match(p.name)[1]))


def resolve_resume(spec: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``latest`` -> newest complete checkpoint of ``output_dir`` (None if there is none yet)."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / "state.json").is_file():
        raise ResumeError(f"{spec}: not a checkpoint folder (no state.json)", argument="resume")
    return path


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable(models: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{key}/{name}": p.detach().float().cpu().contiguous()
            for key, model in models.items() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(accelerator, output_dir: str | os.PathLike, counters: dict[str, int],
                    models: dict[str, nn.Module], optimizers: dict[str, Any], schedulers: dict[str, Any],
                    config: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoint-<step>`` atomically on all processes together; returns its path."""
    from safetensors.torch import save_file

    root = checkpoints_root(output_dir)
    final = root / f"{PREFIX}{counters['step']:07d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file(_trainable(models), str(tmp / "trainable.safetensors"))
        states = {f"optimizer/{k}": o.state_dict() for k, o in optimizers.items()}
        states.update({f"scheduler/{k}": s.state_dict() for k, s in schedulers.items()})
        if accelerator.scaler is not None:
            states["scaler"] = accelerator.scaler.state_dict()
        torch.save(states, tmp / "optim.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        (tmp / "state.json").write_text(json.dumps({**counters, "processes": accelerator.num_processes}))
        if final.exists():  # a rerun of the same step replaces the older copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator, models: dict[str, nn.Module], optimizers: dict[str, Any],
                    schedulers: dict[str, Any], weights_only: bool = False) -> dict[str, int]:
    """Restore everything ``save_checkpoint`` wrote; returns the counters (step, micro_step).

    ``weights_only`` restores the trained tensors alone (for export, on any number of processes).
    """
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if not weights_only and state.get("processes", 1) != accelerator.num_processes:
        raise ResumeError(f"{path}: written by {state.get('processes')} processes, resuming with "
                          f"{accelerator.num_processes}; the data stream and RNG states would not continue exactly")
    tensors = load_file(str(path / "trainable.safetensors"))
    for key, model in models.items():
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        saved = {name[len(key) + 1:]: t for name, t in tensors.items() if name.startswith(f"{key}/")}
        if set(saved) != set(params):
            missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
            raise ResumeError(f"{path}: trainable tensors of {key!r} do not match this config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])
    counters = {k: int(v) for k, v in state.items() if k != "processes"}
    if weights_only:
        return counters
    states = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(states[f"optimizer/{key}"])
    for key, scheduler in schedulers.items():
        scheduler.load_state_dict(states[f"scheduler/{key}"])
    if accelerator.scaler is not None and "scaler" in states:
        accelerator.scaler.load_state_dict(states["scaler"])
    # our own file: python/numpy RNG states are tuples with arrays, which weights_only refuses
    set_rng_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return counters
