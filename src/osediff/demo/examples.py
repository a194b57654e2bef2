"""The server-side list of example images the page offers.

The browser only ever sends an example's *name*; the path behind it comes from the list built at
start-up, so choosing an example can never reach any other file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..images import list_images
from .uploads import DemoInputError

# the sample inputs shipped in the checkout, else RealSR's LR images when the repository sits next to
# the shared benchmark data
SAMPLES = Path("examples")
REALSR_LR = Path("shared") / "benchmarks" / "realsr" / "lr"


def default_examples_dir(search_from: Iterable[Path] | None = None) -> Path | None:
    """The checkout's ``examples/``, else ``../shared/benchmarks/realsr/lr`` next to the working
    directory or to this checkout, if present."""
    checkout = Path(__file__).resolve().parents[3]
    if search_from is None and (checkout / SAMPLES).is_dir() and list_images(checkout / SAMPLES):
        return checkout / SAMPLES
    starts = list(search_from) if search_from is not None else [Path.cwd(), checkout]
    for start in starts:
        candidate = start.parent / REALSR_LR
        if candidate.is_dir():
            return candidate
    return None


class ExampleLibrary:
    """A fixed name -> path mapping of images in one folder (sorted, non-recursive, capped)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = dict(paths)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike | None, limit: int = 50) -> ExampleLibrary:
        if folder is None:
            return cls({})
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"examples folder {folder} does not exist")
        files = list_images(folder)
        return cls({p.name: p.resolve() for p in files[:limit]})

    @property
    def names(self) -> list[str]:
        return list(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, name: str) -> Path:
        """The file behind ``name``; anything not in the list (including paths) is refused."""
        if not isinstance(name, str) or name not in self._paths:
            raise DemoInputError("unknown example; pick one from the list")
        return self._paths[name]
