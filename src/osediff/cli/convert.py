"""``osediff convert``: between the authors' osediff.pkl and our safetensors format."""

from __future__ import annotations

import argparse


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert OSEDiff weights between .pkl and .safetensors",
                                   description="Convert OSEDiff weights; the output extension picks the format.",
                                   allow_abbrev=False)
    parser.add_argument("src", metavar="SRC", help="osediff.pkl or .safetensors file")
    parser.add_argument("dst", metavar="DST",
                        help="output path ending in .safetensors (ours) or .pkl (the authors' format)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import convert_weights

    print(f"wrote {convert_weights(args.src, args.dst)}")  # a CheckpointError is printed by the CLI's main
    return 0
