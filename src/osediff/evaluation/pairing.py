"""Finding result/ground-truth image pairs by file name and reading them like the authors' script.

Pairs are matched on the file stem, so ``x.png`` results pair with ``x.jpg`` ground truth; every
problem (unmatched names, sizes that differ, unreadable files) is collected before anything is
computed, so one run reports all of them at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import OSEDiffError, as_python_argument
from ..images import IMAGE_SUFFIXES, list_images

_SHOWN = 5  # names listed per problem before "and N more"


class EvalInputError(OSEDiffError, ValueError):
    """Folders or images that cannot be evaluated; the message names the path and the problem."""


class UnmatchedNamesError(EvalInputError):
    """Result and ground-truth folders whose file names differ; the message ends by naming ``argument``
    (``ignore_unmatched``), which evaluates the common names instead."""

    def message(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        if not self.argument:
            return self.problem
        return f"{self.problem} (pass {name_of(self.argument)} to evaluate the common names only)"


@dataclass(frozen=True)
class ImagePair:
    name: str  # file name of the result image
    sr: Path
    gt: Path | None


def images_by_stem(folder: str | os.PathLike, role: str) -> dict[str, Path]:
    """The images of ``folder`` (:func:`osediff.images.list_images`) keyed by file stem, which
    pairs them across folders; ``role`` (e.g. "result") names the folder in the messages."""
    folder = Path(folder)
    if not folder.exists():
        raise EvalInputError(f"{folder}: {role} folder does not exist")
    if not folder.is_dir():
        raise EvalInputError(f"{folder}: {role} path is not a folder")
    found: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in found:
            raise EvalInputError(f"{folder}: both {found[path.stem].name} and {path.name} have the same name; "
                                 "keep one so images can be paired")
        found[path.stem] = path
    if not found:
        raise EvalInputError(f"{folder}: no images in the {role} folder ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise EvalInputError(f"{path}: not a readable image ({err})") from None


def pair_folders(sr_dir: Path, gt_dir: Path | None, *, ignore_unmatched: bool = False) -> list[ImagePair]:
    """Pairs sorted by name; raises EvalInputError listing unmatched names and size mismatches."""
    sr = images_by_stem(sr_dir, "result")
    if gt_dir is None:
        pairs = [ImagePair(path.name, path, None) for path in sr.values()]
        for pair in pairs:
            image_size(pair.sr)
        return pairs
    gt = images_by_stem(gt_dir, "ground-truth")
    only_sr = sorted(sr[s].name for s in sr.keys() - gt.keys())
    only_gt = sorted(gt[s].name for s in gt.keys() - sr.keys())
    if (only_sr or only_gt) and not ignore_unmatched:
        problems = []
        if only_sr:
            problems.append(f"{len(only_sr)} result image(s) with no ground truth in {gt_dir}: {_listing(only_sr)}")
        if only_gt:
            problems.append(f"{len(only_gt)} ground-truth image(s) with no result in {sr_dir}: "
                            f"{_listing(only_gt)}")
        raise UnmatchedNamesError(f"{sr_dir}: unmatched file names: {'; '.join(problems)}",
                                  argument="ignore_unmatched")
    pairs = [ImagePair(sr[s].name, sr[s], gt[s]) for s in sorted(sr.keys() & gt.keys())]
    if not pairs:
        raise EvalInputError(f"{sr_dir}: no file name in common with {gt_dir}")
    mismatched = []
    for pair in pairs:
        sr_size, gt_size = image_size(pair.sr), image_size(pair.gt)
        if sr_size != gt_size:
            mismatched.append(f"{pair.name} ({sr_size[0]}x{sr_size[1]} vs {gt_size[0]}x{gt_size[1]})")
    if mismatched:
        raise EvalInputError(f"{sr_dir}: {len(mismatched)} image(s) differ in size from the ground truth in "
                             f"{gt_dir}: {_listing(mismatched)}")
    return pairs


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 float32 RGB in [0, 1], decoded with OpenCV as the authors' pyiqa script does.

    Lossless formats decode identically everywhere, but JPEG decoders in different libraries can
    differ by a grey level here and there, so we use the authors' reader to reproduce their numbers.
    """
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EvalInputError(f"{path}: cannot decode image")
    return np.ascontiguousarray(bgr[:, :, ::-1], dtype=np.float32) / np.float32(255.0)
