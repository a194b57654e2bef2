"""The batch job's JSONL manifest: one row per input (run, input, output, status, error, prompt,
seconds), written at the first result, then at most every ``interval`` seconds and at the end, below
the rows of earlier runs, each write replacing the file at once."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..fileio import first_line
from .config import BatchConfigError, is_uri
from .runner import ImageRecord
from .storage import Folder, strip_query

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_INTERVAL_S = 30.0


def new_run_id() -> str:
    """A run's id in its manifest rows: its UTC start time and 4 random hex digits."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}-{secrets.token_hex(2)}"


class Manifest:
    """The run's JSONL manifest: one row per input, each with the run's id (``run``), below the rows
    of earlier runs, which stay as they were.

    Each write replaces the file at once (a rename locally, one object upload remotely): the first
    as soon as the first record arrives, then at most every ``interval`` seconds, and at the end; so a
    driver killed mid-run leaves the rows up to its last write, and a reader never sees half a file.
    """

    def __init__(self, location: str, interval: float = MANIFEST_INTERVAL_S,
                 options: Mapping[str, Any] | None = None, run: str | None = None) -> None:
        if is_uri(location):
            bare = strip_query(location)
            parent, _, self.name = bare.rstrip("/").rpartition("/")
            parent += location[len(bare):]  # the location's storage query, for its folder
        else:
            parent, self.name = str(Path(location).parent), Path(location).name
        self.folder = Folder(parent, options)
        self.interval = interval
        self.run = run or new_run_id()
        try:
            earlier = self.folder.read_text(self.name) or ""
        except (OSError, UnicodeDecodeError) as err:
            raise BatchConfigError(f"{self.folder.path(self.name)}: cannot read the manifest of earlier runs "
                                   f"({first_line(err)})", argument="manifest") from None
        self._earlier = earlier if not earlier or earlier.endswith("\n") else earlier + "\n"
        self._written_at: float | None = None  # nothing written yet: the first record is written at once

    def update(self, records: list[ImageRecord]) -> None:
        if self._written_at is None or time.monotonic() - self._written_at >= self.interval:
            self.write(records)

    def write(self, records: list[ImageRecord]) -> None:
        self.folder.write_text(self.name, self._earlier + "".join(
            json.dumps({"run": self.run, **rec.as_dict()}, ensure_ascii=False) + "\n" for rec in records))
        self._written_at = time.monotonic()


