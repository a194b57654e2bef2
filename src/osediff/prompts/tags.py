"""RAM's tag vocabulary: the English tag names and one decision threshold per tag.

Both files ship with RAM (``ram/data/ram_tag_list.txt`` and ``ram_tag_list_threshold.txt``, one
entry per line, 4585 lines) and are fetched with the weights rather than vendored here. A tag is
on when ``sigmoid(logit) > threshold`` (strict); tags are listed in vocabulary order, not by
score, and joined with ``", "`` — RAM's ``generate_tag`` output.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.hub import ModelNotFoundError, Option, resolve_file
from ..checkpoint.store import TAG_LIST_FILE, THRESHOLDS_FILE

TAG_LIST_NAME = "ram_tag_list.txt"
THRESHOLDS_NAME = "ram_tag_list_threshold.txt"
# The OSEDiff authors' copy first (the exact files their DAPE was run with), RAM's own second.
_SOURCES = (
    "https://raw.githubusercontent.com/cswry/OSEDiff/main/ram/data/",
    "https://raw.githubusercontent.com/xinyu1205/recognize-anything/main/ram/data/",
)
DEFAULT_TAG_LIST = _SOURCES[0] + TAG_LIST_NAME
DEFAULT_THRESHOLDS = _SOURCES[0] + THRESHOLDS_NAME
TAGS_OPTION = Option("tags_path", f"<folder with {TAG_LIST_NAME} and {THRESHOLDS_NAME}>")


@dataclass(frozen=True)
class TagVocabulary:
    names: tuple[str, ...]
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.thresholds):
            raise ValueError(f"{len(self.names)} tag names but {len(self.thresholds)} thresholds")

    def __len__(self) -> int:
        return len(self.names)

    def select(self, probabilities) -> list[str]:
        """[B, num_tags] probabilities (a tensor) -> one ``"tag, tag, ..."`` string per row.

        Probabilities keep the precision they were computed in (fp16 on GPU, as in the authors'
        half-precision run) and are compared with float32 thresholds, which is what RAM does.
        """
        import torch

        if probabilities.shape[-1] != len(self):
            raise ValueError(f"{probabilities.shape[-1]} scores for a vocabulary of {len(self)} tags")
        thresholds = torch.tensor(self.thresholds, dtype=torch.float32)
        on = probabilities.detach().float().cpu() > thresholds
        return [", ".join(self.names[i] for i in row.nonzero().flatten().tolist()) for row in on]


def parse_tag_list(text: str) -> tuple[str, ...]:
    # verbatim lines, as RAM reads them (no stripping: no English tag carries stray spaces)
    return tuple(text.splitlines())


def parse_thresholds(text: str) -> tuple[float, ...]:
    """One threshold per non-empty line; ``ValueError`` names the first line that is not a number."""
    values = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                values.append(float(line))
            except ValueError:
                raise ValueError(f"line {number} ({line.strip()[:40]!r}) is not a number") from None
    return tuple(values)


def load_tag_vocabulary(tags_path: str | os.PathLike | None = None,
                        thresholds_path: str | os.PathLike | None = None, *,
                        local_files_only: bool = False) -> TagVocabulary:
    """Read the tag list and thresholds.

    ``tags_path`` is a folder holding both files, a tag-list file (thresholds then read from
    ``ram_tag_list_threshold.txt`` beside it unless ``thresholds_path`` is given), a URL or an
    ``hf://`` spec. ``None`` fetches RAM's published files once into the download cache.
    """
    tag_file, threshold_file = resolve_vocabulary_files(tags_path, thresholds_path,
                                                        local_files_only=local_files_only)
    return read_tag_vocabulary(tag_file, threshold_file)


def read_tag_vocabulary(tag_file: str | os.PathLike, threshold_file: str | os.PathLike) -> TagVocabulary:
    """The vocabulary of two local files; a file that cannot be one raises
    :class:`~osediff.checkpoint.CheckpointError` naming it (thresholds that are not numbers, a
    different number of tags and thresholds, text that is not UTF-8)."""
    from ..checkpoint.weights import CheckpointError

    names, threshold_text = parse_tag_list(_read_text(tag_file)), _read_text(threshold_file)
    try:
        thresholds = parse_thresholds(threshold_text)
    except ValueError as err:
        raise CheckpointError(f"{threshold_file}: {err}; a thresholds file has one number per line, as RAM's "
                              f"{THRESHOLDS_NAME}") from None
    if len(names) != len(thresholds):
        raise CheckpointError(f"{tag_file} lists {len(names)} tags but {threshold_file} has {len(thresholds)} "
                              "thresholds; pass a tag list and thresholds with one line per tag each "
                              "(RAM's files come as a pair)")
    return TagVocabulary(names, thresholds)


def _read_text(path: str | os.PathLike) -> str:
    from ..checkpoint.weights import CheckpointError

    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a UTF-8 text file (expected one tag or threshold per line)") from None


def resolve_vocabulary_files(tags_path: str | os.PathLike | None = None,
                             thresholds_path: str | os.PathLike | None = None, *,
                             local_files_only: bool = False,
                             models_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Local paths of (tag list, thresholds); :class:`ModelNotFoundError` names what is missing.

    RAM's published files (no ``tags_path``, no ``thresholds_path``) are looked for in the models
    folder first (``prompts/``; ``models_dir`` names it, see :mod:`osediff.checkpoint.store`).
    """
    if tags_path is not None and Path(tags_path).expanduser().is_dir():
        folder = Path(tags_path).expanduser()
        tags_spec, thresholds_default = str(folder / TAG_LIST_NAME), str(folder / THRESHOLDS_NAME)
        tag_mirrors: Sequence[str] = ()
    elif tags_path is not None:
        tags_spec, tag_mirrors = str(tags_path), ()
        # the thresholds file beside it, for a local path, URL or hf:// spec alike
        thresholds_default = posixpath.join(posixpath.dirname(str(tags_path)), THRESHOLDS_NAME)
    else:
        tags_spec, tag_mirrors = DEFAULT_TAG_LIST, tuple(s + TAG_LIST_NAME for s in _SOURCES[1:])
        thresholds_default = DEFAULT_THRESHOLDS
    if thresholds_path is not None:
        thresholds_spec, threshold_mirrors = str(thresholds_path), ()
    elif tags_path is None:
        thresholds_spec, threshold_mirrors = DEFAULT_THRESHOLDS, tuple(s + THRESHOLDS_NAME for s in _SOURCES[1:])
    else:
        thresholds_spec, threshold_mirrors = thresholds_default, ()
    files, errors = [], []
    for what, spec, mirrors, stored in (
            (TAG_LIST_NAME, tags_spec, tag_mirrors, TAG_LIST_FILE if tags_path is None else None),
            (THRESHOLDS_NAME, thresholds_spec, threshold_mirrors,
             THRESHOLDS_FILE if tags_path is None and thresholds_path is None else None)):
        try:
            files.append(resolve_file(spec, mirrors=tuple(mirrors), local_files_only=local_files_only,
                                      name=what, option=TAGS_OPTION, stored=stored, models_dir=models_dir))
        except ModelNotFoundError as err:
            errors.append(err)
    if errors:
        raise ModelNotFoundError.merge(errors)
    return files[0], files[1]
