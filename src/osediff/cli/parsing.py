"""The argument parser of every ``osediff`` command: no abbreviations, and typos answered with a suggestion.

argparse would take ``--tile 3`` as ``--tile-batch 3`` (a prefix of one option); every parser here is
made with ``allow_abbrev=False``, so only whole option names count. An option no parser knows is
reported by the sub-command it was given to, with its usage and the nearest option name
(``unrecognized arguments: --promt-extractor (did you mean --prompt-extractor?)``), instead of by the
top-level parser; a misspelt sub-command or choice gets the nearest valid value.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` if any is near enough to be a likely typo."""
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return matches[0] if matches else None


def unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """argparse's message for arguments ``parser`` does not know, with the nearest option after each
    unknown one."""
    options = [option for option in parser._option_string_actions if option.startswith("--")]
    words = []
    for arg in extras:
        words.append(arg)
        if arg.startswith("--"):
            match = closest(arg.split("=", 1)[0], options)
            if match:
                words.append(f"(did you mean {match}?)")
    return "unrecognized arguments: " + " ".join(words)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without abbreviations, with suggestions; sub-parsers are of this class too."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen(parsed)
            parser.error(unrecognized(parser, extras))
        return parsed

    def _chosen(self, namespace: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost sub-command parser the arguments selected (this one if none)."""
        parser: argparse.ArgumentParser = self
        while True:
            action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            if action is None or action.dest == argparse.SUPPRESS:
                break
            name = getattr(namespace, action.dest, None)
            if name not in action.choices:
                break
            parser = action.choices[name]
        return parser

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError:
            match = closest(value, map(str, action.choices)) if isinstance(value, str) else None
            if match is None:
                raise
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r} (did you mean {match!r}?); choose from {choices}") from None
