"""``osediff`` command line: one module per sub-command, each with ``add_command`` and ``run``.

Sub-command modules keep heavy imports (torch, diffusers, ...) inside ``run`` so that
``osediff --help`` and argument errors stay instant. A user-facing failure
(:class:`~osediff.errors.OSEDiffError`) is printed here, in one line; anything else is a bug and
keeps its traceback. Every parser is a :class:`~osediff.cli.parsing.Parser` (no abbreviations,
suggestions for typos), and a command whose optional extra is missing says which to install before it
starts (:func:`~osediff.cli.extras.check_extras`).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback
import warnings

from .. import __version__
from ..errors import OSEDiffError
from ..quiet import quiet_libraries
from .extras import check_extras
from .flags import flag_for
from .parsing import Parser

# sub-command name -> module; each module defines add_command(subparsers) and run(args) -> int
COMMANDS: dict[str, str] = {
    "upscale": "osediff.cli.upscale",
    "convert": "osediff.cli.convert",
    "eval": "osediff.cli.eval",
    "train": "osediff.cli.train",
    "demo": "osediff.cli.demo",
    "compare": "osediff.cli.compare",
    "serve": "osediff.cli.serve",
    "models": "osediff.cli.models",
    "export": "osediff.cli.export",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help (unless the text states it), and no reST ``markup``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, "", argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in text.lower():
            text += " (default: %(default)s)"
        return text


def _plain(text: str | None) -> str | None:
    # docstrings double as descriptions: ``name`` and :func:`name` read as name on a terminal
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "") if text else text


def _tidy(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.description, parser.epilog = _plain(parser.description), _plain(parser.epilog)
    for action in parser._actions:
        if action.help not in (None, argparse.SUPPRESS):
            action.help = _plain(action.help)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="osediff", description="One-step diffusion super-resolution (OSEDiff).", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"osediff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS.values():
        module = importlib.import_module(module_name)
        module.add_command(subparsers)
    for sub in _sub_parsers(parser):
        # accepted after the command too; SUPPRESS keeps a --debug given before it
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks for every error")
        _tidy(sub)
    _tidy(parser)
    return parser


def _sub_parsers(parser: argparse.ArgumentParser):
    """Every sub-command's parser, those of sub-commands with their own sub-commands too (osediff models list)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _sub_parsers(sub)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    quiet_libraries()
    try:
        check_extras(args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSEDiffError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {' '.join(err.message(flag_for).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
