"""Command-line options shared by the sub-commands that load the model."""

from __future__ import annotations

import argparse

from ..presets import DEFAULT_PRESET, PRESETS


def add_model_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--base --preset --weights --device --dtype --offline`` in a "model" group; returns the group."""
    model = parser.add_argument_group("model")
    model.add_argument("--base", default=None, help="SD-2.1-base folder or hub id (default: known mirrors)")
    model.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                       help="published weights and their defaults: "
                            + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    model.add_argument("--weights", default=None,
                       help="osediff.pkl / .safetensors path or hf:// / URL spec (default: the preset's)")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    model.add_argument("--dtype", default="auto", help="auto | fp32 | fp16 | bf16")
    model.add_argument("--offline", action="store_true", help="use only local files and caches")
    return model
