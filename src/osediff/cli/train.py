"""``osediff train``: train or fine-tune OSEDiff from a YAML config (``accelerate launch`` for many GPUs)."""

from __future__ import annotations

import argparse

from ..errors import OSEDiffError
from .flags import flag_for


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train OSEDiff (LoRA generator + VSD regulariser) from a YAML config",
        description="Train OSEDiff. One GPU: `osediff train --config train.yaml`; several GPUs or nodes: "
                    "`accelerate launch -m osediff train --config train.yaml`. Needs the 'train' extra.",
        allow_abbrev=False)
    parser.add_argument("--config", required=True, help="training YAML (see configs/train_osediff.yaml)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue from the newest checkpoint of the output folder, or from PATH")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides run.max_steps)")
    parser.add_argument("--output-dir", help="overrides run.output_dir")
    parser.add_argument("--export-only", action="store_true",
                        help="write osediff.pkl/.safetensors from --resume's checkpoint and exit")
    parser.set_defaults(run=run)


class TrainOptionError(OSEDiffError, ValueError):
    """A flag of ``osediff train`` that cannot work; ``argument`` names it."""


def run(args: argparse.Namespace) -> int:
    """Every user error is an OSEDiffError for the CLI's one handler, raised before any model loads."""
    from ..training.config import ConfigError, TrainConfig

    if args.max_steps is not None and args.max_steps < 1:
        raise TrainOptionError(f"must be >= 1, got {args.max_steps}", argument="max_steps")
    if args.export_only and not args.resume:
        raise TrainOptionError("needs --resume latest|PATH", argument="export_only")
    try:
        config = TrainConfig.from_yaml(args.config)
    except ConfigError as err:
        raise ConfigError(f"--config {err.message(flag_for)}") from None
    if args.output_dir:
        config.run.output_dir = args.output_dir
    if args.max_steps is not None:
        config.run.max_steps = args.max_steps

    from ..training.data import TrainingDataError
    from ..training.files import find_run_inputs
    from ..training.loop import Trainer

    try:
        inputs = find_run_inputs(config, args.resume, export_only=args.export_only)
    except TrainingDataError as err:
        raise TrainingDataError(f"--config {args.config}: {err.message(flag_for)}") from None
    trainer = Trainer(config, prompt_options=inputs.prompt_options)
    trainer.resume(args.resume, weights_only=args.export_only, name_of=flag_for)
    paths = trainer.export() if args.export_only else trainer.fit(dataset=inputs.dataset).exported
    for path in paths:
        print(f"wrote {path}")
    return 0
