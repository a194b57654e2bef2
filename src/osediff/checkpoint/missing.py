"""A model file that could not be found, and the error that lists every such file of a run.

A :class:`MissingFile` says what is missing, why, and the :class:`Option` that supplies it; a
:class:`ModelNotFoundError` carries one or more, merges with others into one line
(:meth:`ModelNotFoundError.merge`) and names the options in each front end's terms. No network,
no torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import OSEDiffError, as_python_argument


@dataclass(frozen=True)
class Option:
    """How a caller supplies a file: the Python ``argument`` (``"weights"``) and ``hint``, what to give.

    Front ends name the argument in their own terms: Python as ``weights=<hint>``, the command line
    as its flag (``osediff.cli.flags``), ``--weights <hint>``.
    """

    argument: str
    hint: str

    def render(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        name = name_of(self.argument)
        return f"{self.argument}={self.hint}" if name == self.argument else f"{name} {self.hint}"


@dataclass(frozen=True)
class MissingFile:
    """One model file that could not be found: ``what`` (a file name, path or model), ``why``, and
    the ``option`` that supplies it. ``network``: it failed only because the network could not be
    used (a host that did not answer, or offline mode), so it may be found later without any change."""

    what: str
    why: str
    option: Option | None = None
    network: bool = False

    def __str__(self) -> str:
        return f"{self.what}: {self.why}" if self.what else self.why


class ModelNotFoundError(OSEDiffError, RuntimeError):
    """Model files could not be found locally nor fetched: one or more :class:`MissingFile`.

    ``reason`` lists what is missing and why on one line, files failing for the same reason
    together (the demo page shows it as is); :meth:`message` adds the options that supply them
    (``"; pass weights=<path to osediff.pkl>"`` in Python, ``"; pass --weights <...>"`` on the
    command line). :meth:`merge` makes one error of several. ``subject`` prefixes the reason
    (``"DAPE prompts: ..."``).

    ``ModelNotFoundError("text", option)`` still builds an error of one free-text miss.
    """

    def __init__(self, misses: str | MissingFile | Iterable[MissingFile], option: Option | None = None, *,
                 subject: str | None = None, instead: tuple[Option, str] | None = None) -> None:
        if isinstance(misses, str):
            misses = (MissingFile("", misses, option),)
        elif option is not None:
            raise TypeError("option goes with a free-text reason; a MissingFile carries its own")
        elif isinstance(misses, MissingFile):
            misses = (misses,)
        self.misses: tuple[MissingFile, ...] = tuple(dict.fromkeys(misses))
        if not self.misses:
            raise ValueError("a ModelNotFoundError needs at least one missing file")
        self.subject = subject
        self.instead = instead  # (an option, what it lets the run go on without)
        options = self.options
        super().__init__(self.reason, argument=options[0].argument if len(options) == 1 else None)

    @property
    def reason(self) -> str:
        """The misses on one line, without the options: ``"a.pth, b.pth: not in the local cache (...)"``."""
        groups: dict[str, list[str]] = {}
        for miss in self.misses:
            groups.setdefault(miss.why, [])
            if miss.what and miss.what not in groups[miss.why]:
                groups[miss.why].append(miss.what)
        text = "; ".join(f"{', '.join(names)}: {why}" if names else why for why, names in groups.items())
        return f"{self.subject}: {text}" if self.subject else text

    @property
    def options(self) -> tuple[Option, ...]:
        """The distinct options that supply the missing files, in the order of the misses."""
        return tuple(dict.fromkeys(miss.option for miss in self.misses if miss.option is not None))

    @property
    def network(self) -> bool:
        """Whether every miss is the network's (nothing is wrong locally; it may work later)."""
        return all(miss.network for miss in self.misses)

    def message(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        """The reason and ``"; pass <option> <hint>"`` for each option, named through ``name_of``."""
        options = self.options
        text = self.reason
        if options:
            flags = all(name_of(option.argument) != option.argument for option in options)
            text += "; pass " + (" " if flags else ", ").join(o.render(name_of) for o in options)
        if self.instead is not None:
            option, without = self.instead
            text += f" (or {option.render(name_of)} to go on without {without})"
        return text

    @classmethod
    def merge(cls, errors: Iterable[ModelNotFoundError], *, subject: str | None = None) -> ModelNotFoundError:
        """One error for every miss of ``errors``, the same files or reasons listed once.

        ``subject`` defaults to the one the errors share (none when they differ: each file is named).
        """
        errors = list(errors)
        if not errors:
            raise ValueError("nothing to merge")
        if subject is None and len({err.subject for err in errors}) == 1:
            subject = errors[0].subject
        return cls([miss for err in errors for miss in err.misses], subject=subject)

    def __reduce__(self):  # rebuilt with its misses when it crosses processes (Ray workers, spawn)
        return _rebuild, (type(self), self.misses, self.subject, self.instead)


def _rebuild(cls: type[ModelNotFoundError], misses: tuple[MissingFile, ...], subject: str | None,
             instead: tuple[Option, str] | None = None):
    error = cls(misses, subject=subject)
    error.instead = instead
    return error


def network_failure(err: BaseException) -> bool:
    """A :class:`ModelNotFoundError` caused by the network alone (what :func:`.network.remembered` keeps)."""
    return isinstance(err, ModelNotFoundError) and err.network
