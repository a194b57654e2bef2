"""What a result is called and how it is encoded, for every front end that writes or sends one.

An input ``photos/cat.jpg`` gives ``cat.<format>`` (``same``: ``cat.jpg``); two inputs that would
give one name clash, and the later one is refused rather than overwriting the earlier one's result.
No torch here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from PIL import Image

from .images import VIDEO_SUFFIXES
from .params import KEEP_FORMAT, OUTPUT_FORMATS

# input suffixes that "same" does not keep: formats with no lossless RGB(A) 8-bit writer we use
_SAME_AS = {".gif": ".png", ".bmp": ".png", ".jpeg": ".jpg"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff"}


def output_name(src: str | os.PathLike, fmt: str) -> str:
    """The output file name of input ``src`` (a path or URI): its stem and the format's suffix (a
    video keeps its container)."""
    src = PurePosixPath(str(src).replace(os.sep, "/"))
    if src.suffix.lower() in VIDEO_SUFFIXES:
        suffix = src.suffix.lower()
    elif fmt == KEEP_FORMAT:
        suffix = src.suffix.lower()
        suffix = _SAME_AS.get(suffix, suffix)
    else:
        suffix = OUTPUT_FORMATS[fmt]
    return f"{src.stem}{suffix}"


def save_options(name: str, quality: int) -> dict[str, Any]:
    """PIL ``save`` arguments for a file of this name: the quality of lossy formats."""
    return {"quality": quality} if PurePosixPath(name).suffix.lower() in (".jpg", ".webp") else {}


def for_format(image: Image.Image, name: str) -> Image.Image:
    """JPEG has no alpha: RGBA results are written as RGB there, as everywhere else they keep it."""
    return image.convert("RGB") if PurePosixPath(name).suffix.lower() == ".jpg" and image.mode != "RGB" else image


def encode_image(image: Image.Image, fmt: str, quality: int) -> bytes:
    """The bytes of ``image`` in ``fmt`` (a key of ``OUTPUT_FORMATS``)."""
    name = f"x{OUTPUT_FORMATS[fmt]}"
    buffer = io.BytesIO()
    for_format(image, name).save(buffer, format=Image.registered_extensions()[OUTPUT_FORMATS[fmt]],
                                 **save_options(name, quality))
    return buffer.getvalue()


@dataclass
class OutputPlan:
    """Inputs in order: to run, already done (``skipped``), and refused because an earlier input
    claims the same output name (``clashes``: input -> that earlier input)."""

    todo: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    clashes: dict = field(default_factory=dict)


def plan_outputs(inputs: Sequence, fmt: str, *, exists: Callable[[str], bool], skip_existing: bool,
                 share: slice = slice(None)) -> OutputPlan:
    """Which inputs to run. Clashes are found over all ``inputs`` (so that processes taking one
    ``share`` each agree); with ``skip_existing`` an input whose output ``exists`` is done."""
    owner: dict[str, Any] = {}
    clashes = {}
    for src in inputs:
        name = output_name(src, fmt)
        if name in owner:
            clashes[src] = owner[name]
        else:
            owner[name] = src
    plan = OutputPlan()
    for src in list(inputs)[share]:
        if src in clashes:
            plan.clashes[src] = clashes[src]
        elif skip_existing and exists(output_name(src, fmt)):
            plan.skipped.append(src)
        else:
            plan.todo.append(src)
    return plan
