"""``osediff`` command line: one module per sub-command, each with ``add_parser`` and ``run``.

Sub-command modules keep heavy imports (torch, diffusers, ...) inside ``run`` so that
``osediff --help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

# sub-command name -> module; each module defines add_parser(subparsers) and run(args) -> int
COMMANDS: dict[str, str] = {
    "upscale": "osediff.cli.upscale",
    "convert": "osediff.cli.convert",
    "eval": "osediff.cli.eval",
    "train": "osediff.cli.train",
    "demo": "osediff.cli.demo",
    "compare": "osediff.cli.compare",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osediff", description="One-step diffusion super-resolution (OSEDiff).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        module = importlib.import_module(module_name)
        module.add_parser(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)


def _quiet_libraries() -> None:
    """Library chatter (load bars, dtype notes) would drown the one-line messages users need."""
    for name in ("peft", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("diffusers", "transformers"):
        try:
            module = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        module.set_verbosity_error()
        module.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    _quiet_libraries()
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
