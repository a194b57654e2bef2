"""Command-line options shared by the sub-commands that load the model."""

from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--base --weights --device --dtype --offline`` in a "model" group; returns the group for more."""
    model = parser.add_argument_group("model")
    model.add_argument("--base", default=None, help="SD-2.1-base folder or hub id (default: known mirrors)")
    model.add_argument("--weights", default=None, help="osediff.pkl / .safetensors path or hf:// / URL spec")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    model.add_argument("--dtype", default="auto", help="auto | fp32 | fp16 | bf16")
    model.add_argument("--offline", action="store_true", help="use only local files and caches")
    return model
