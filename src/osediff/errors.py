"""The one base class of every error meant for the person running osediff.

An :class:`OSEDiffError` carries a message that is complete on one line (what is wrong, with which
file or option, and what to do); front ends print it as is. Anything else that escapes is a bug and
keeps its traceback.
"""

from __future__ import annotations


class OSEDiffError(Exception):
    """A user-facing failure: bad input, a missing model file, an unusable option."""

    def cli_message(self) -> str:
        """The message worded for the command line (subclasses name flags instead of arguments)."""
        return str(self)
