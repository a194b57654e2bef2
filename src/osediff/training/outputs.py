"""What a run leaves behind besides checkpoints: validation strips and exported generator weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..fileio import atomic_write
from .model import Generator


def save_strip(rows: list[tuple[torch.Tensor, ...]], path: Path) -> Path:
    """One row per image: the given (3, H, W) tensors in [0, 1] side by side (LQ | output | HQ)."""
    strip = torch.cat([torch.cat([t.float().clamp(0, 1).cpu() for t in row], dim=2) for row in rows], dim=1)
    array = (strip.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def export_generator(generator: Generator, folder: Path, stem: str = "osediff") -> list[Path]:
    """Write ``<stem>.pkl`` (the authors' format) and ``<stem>.safetensors`` (ours)."""
    weights = generator.export()
    return [weights.save(folder / f"{stem}.pkl"), weights.save(folder / f"{stem}.safetensors")]
