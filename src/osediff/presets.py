"""Named inference presets: which published weights to load and the defaults that go with them.

>>> from osediff.presets import get_preset
>>> preset = get_preset("face")
>>> preset.weights, preset.upscale, preset.align
('https://github.com/cswry/OSEDiff/raw/main/preset/models/osediff_face.pkl', 1.0, 'none')

A preset's ``weights`` is a spec that :func:`osediff.checkpoint.hub.resolve_file` reads (a path,
``hf://owner/repo/file`` or a URL), with ``weights_mirrors`` tried after it; the models folder keeps
it as ``weights/<its file name>`` (:mod:`osediff.checkpoint.store`), read before those.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from .checkpoint.hub import DEFAULT_WEIGHTS, KNOWN_SHA256, WEIGHTS_MIRRORS, WEIGHTS_OPTION, resolve_file, with_note
from .checkpoint.store import lookup_file, weights_file
from .errors import OSEDiffError

AUTHORS_MODELS = "https://github.com/cswry/OSEDiff/raw/main/preset/models"


class UnknownPresetError(OSEDiffError, ValueError):
    """A preset name that is not registered."""


@dataclass(frozen=True)
class Preset:
    name: str
    weights: str  # spec of the OSEDiff weights file
    weights_mirrors: tuple[str, ...]  # tried in order when ``weights`` cannot be fetched
    upscale: float  # default output / input size factor
    align: str  # default colour alignment ("adain", "wavelet" or "none")
    description: str


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("osediff", DEFAULT_WEIGHTS, tuple(m for m in WEIGHTS_MIRRORS if m != DEFAULT_WEIGHTS), 4.0,
               "adain", "real-world super-resolution, x4 (the paper's model, trained on LSDIR + FFHQ)"),
        # trained on 512 px faces with the CodeFormer degradation at factor 1: it restores at the input
        # size, and is used without colour alignment
        Preset("face", f"{AUTHORS_MODELS}/osediff_face.pkl", (), 1.0, "none",
               "blind face restoration at the input size (512 px aligned faces)"),
    )
}
DEFAULT_PRESET = "osediff"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`UnknownPresetError` names the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {known}") from None


def resolve_weights(spec: str | os.PathLike | None = None, *, preset: str = DEFAULT_PRESET,
                    local_files_only: bool = False, models_dir: str | os.PathLike | None = None) -> Path:
    """A local path for OSEDiff weights: ``spec``, or else the preset's published file.

    A preset's published file is looked for in the models folder first (``models_dir``, else
    ``$OSEDIFF_MODELS`` or the default one; :mod:`osediff.checkpoint.store`), and is also tried at
    its mirrors and checked against its pinned sha256 where one is known; any other spec is taken
    as given.
    """
    spec = str(spec) if spec is not None else get_preset(preset).weights
    published = next((p for p in PRESETS.values() if p.weights == spec), None)
    mirrors = published.weights_mirrors if published else ()
    sha256 = KNOWN_SHA256.get(posixpath.basename(spec)) if published else None
    note = None
    if published:
        found, note = lookup_file(weights_file(spec), models_dir)
        if found is not None:
            return found
    return with_note(note, lambda: resolve_file(spec, mirrors=mirrors, sha256=sha256, option=WEIGHTS_OPTION,
                                                local_files_only=local_files_only))
