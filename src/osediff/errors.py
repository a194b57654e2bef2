"""The one base class of every error meant for the person running osediff.

An :class:`OSEDiffError` carries a message that is complete on one line (what is wrong, with which
file or option, and what to do); front ends print it as is. Anything else that escapes is a bug and
keeps its traceback.

An error about one argument keeps that argument as a field (``argument``, the Python name, dotted for
a field of a config object: ``tiles.latent_overlap``) apart from the ``problem``, so that each front
end names it in its own terms without parsing the text: Python callers read the argument's name, the
command line its flag (``osediff.cli.flags``), the demo page neither.
"""

from __future__ import annotations

from collections.abc import Callable

ARGUMENT = "{argument}"  # where a problem names its argument, if not at its start


def as_python_argument(argument: str) -> str:
    return argument


class OSEDiffError(Exception):
    """A user-facing failure: bad input, a missing model file, an unusable option."""

    def __init__(self, problem: str = "", *, argument: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.argument = argument

    def message(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        """The message, naming the argument through ``name_of`` (the CLI passes one giving flags):
        where the problem says ``{argument}``, else in front of it."""
        if not self.argument:
            return self.problem
        if ARGUMENT in self.problem:
            return self.problem.replace(ARGUMENT, name_of(self.argument))
        return f"{name_of(self.argument)} {self.problem}"

    def __str__(self) -> str:
        return self.message()


class OptionError(OSEDiffError, ValueError):
    """An option or argument whose value cannot work; ``argument`` names it, ``problem`` says why."""
