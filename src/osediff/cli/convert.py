"""``osediff convert``: between the authors' osediff.pkl and our safetensors format."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert OSEDiff weights between .pkl and .safetensors",
                                   description="Convert OSEDiff weights; the output extension picks the format.")
    parser.add_argument("src", help="osediff.pkl or .safetensors file")
    parser.add_argument("dst", help="output path ending in .safetensors or .pkl")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError, convert_weights

    try:
        out = convert_weights(args.src, args.dst)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
