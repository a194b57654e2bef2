"""``osediff train``: train or fine-tune OSEDiff from a YAML config (``accelerate launch`` for many GPUs)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train OSEDiff (LoRA generator + VSD regulariser) from a YAML config",
        description="Train OSEDiff. One GPU: `osediff train --config train.yaml`; several GPUs or nodes: "
                    "`accelerate launch -m osediff train --config train.yaml`.")
    parser.add_argument("--config", required=True, help="training YAML (see configs/train_osediff.yaml)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue from the newest checkpoint of the output folder, or from PATH")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides run.max_steps)")
    parser.add_argument("--output-dir", help="overrides run.output_dir")
    parser.add_argument("--export-only", action="store_true",
                        help="write osediff.pkl/.safetensors from --resume's checkpoint and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import ConfigError, TrainConfig

    try:
        config = TrainConfig.from_yaml(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.output_dir:
        config.run.output_dir = args.output_dir
    if args.max_steps is not None:
        if args.max_steps < 1:
            print("error: --max-steps must be >= 1", file=sys.stderr)
            return 2
        config.run.max_steps = args.max_steps
    if args.export_only and not args.resume:
        print("error: --export-only needs --resume latest|PATH", file=sys.stderr)
        return 2

    from ..checkpoint.hub import ModelNotFoundError
    from ..errors import OSEDiffError
    from ..training.loop import Trainer

    try:
        trainer = Trainer(config)
        resumed = trainer.resume(args.resume, weights_only=args.export_only)
        if args.export_only:
            if resumed is None:
                print("error: no checkpoint to export", file=sys.stderr)
                return 1
            paths = trainer.export()
        else:
            paths = trainer.fit().exported
    except (OSEDiffError, ModelNotFoundError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0
