"""The model files of the prompt extractors, resolved to local paths before any model loads.

Each resolver returns the factory's keyword arguments with local paths, or raises one
:class:`~osediff.checkpoint.ModelNotFoundError` naming every missing file and the options that
supply them (``ram_path``, ``dape_path``, ``tags_path``, ``captioner``: the command line shows their
flags). The default files are looked for in the models folder first (``models_dir``, else the one
:func:`osediff.checkpoint.store.using` names, ``$OSEDIFF_MODELS`` or the default folder; see
:mod:`osediff.checkpoint.store`). Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint.hub import (
    KNOWN_SHA256,
    Miss,
    MissingFile,
    ModelNotFoundError,
    Option,
    describe_misses,
    looks_like_path,
    network_failure,
    resolve_file,
    snapshot,
    with_note,
)
from ..checkpoint.network import remembered
from ..checkpoint.store import DAPE_FILE, RAM_FILE, lookup_captioner

DEFAULT_RAM = "hf://xinyu1205/recognize_anything_model/ram_swin_large_14m.pth"
RAM_MIRRORS = ("https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/ram_swin_large_14m.pth",)
# DAPE.pth: the SeeSR/OSEDiff authors' hub copy first, the one published with AdcSR second; the
# authors' GitHub location is kept last (not verified to be downloadable).
DEFAULT_DAPE = "hf://CSWRY/SeeSR/DAPE.pth"
DAPE_MIRRORS = ("hf://Guaishou74851/AdcSR/weight/pretrained/DAPE.pth",
                "https://github.com/cswry/OSEDiff/raw/main/preset/models/DAPE.pth")
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
# weights of other frameworks that transformers does not load
_CAPTIONER_IGNORE = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "flax_model*", "tf_model*", "*.tflite"]

RAM_OPTION = Option("ram_path", "<ram_swin_large_14m.pth>")
DAPE_OPTION = Option("dape_path", "<DAPE.pth>")
CAPTIONER_OPTION = Option("captioner", "<image-to-text model folder or hub id>")


def combine(what: str, errors: list[ModelNotFoundError]) -> ModelNotFoundError:
    """One error for several missing files about ``what`` (``"DAPE prompts"``): :meth:`ModelNotFoundError.merge`."""
    return ModelNotFoundError.merge(errors, subject=what)


def resolve_ram_files(ram_path: str | os.PathLike | None = None, dape_path: str | os.PathLike | None = None,
                      tags_path: str | os.PathLike | None = None,
                      thresholds_path: str | os.PathLike | None = None, *, use_dape: bool,
                      local_files_only: bool = False, models_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """``ram_path``, ``dape_path`` (with ``use_dape``), ``tags_path`` and ``thresholds_path`` as local files."""
    from .tags import resolve_vocabulary_files

    found: dict[str, Path] = {}
    errors: list[ModelNotFoundError] = []

    def attempt(key: str, resolve) -> None:
        try:
            found[key] = resolve()
        except ModelNotFoundError as err:
            errors.append(err)

    attempt("ram_path", lambda: resolve_file(
        ram_path or DEFAULT_RAM, mirrors=() if ram_path else RAM_MIRRORS, local_files_only=local_files_only,
        sha256=None if ram_path else KNOWN_SHA256["ram_swin_large_14m.pth"], option=RAM_OPTION,
        stored=None if ram_path else RAM_FILE, models_dir=models_dir))
    if use_dape:
        attempt("dape_path", lambda: resolve_file(
            dape_path or DEFAULT_DAPE, mirrors=() if dape_path else DAPE_MIRRORS, local_files_only=local_files_only,
            sha256=None if dape_path else KNOWN_SHA256["DAPE.pth"], option=DAPE_OPTION,
            stored=None if dape_path else DAPE_FILE, models_dir=models_dir))
    try:
        found["tags_path"], found["thresholds_path"] = resolve_vocabulary_files(
            tags_path, thresholds_path, local_files_only=local_files_only, models_dir=models_dir)
    except ModelNotFoundError as err:
        errors.append(err)
    if errors:
        raise combine(f"{'DAPE' if use_dape else 'RAM'} prompts", errors)
    return found


def resolve_captioner(model: str | os.PathLike | None = None, *, local_files_only: bool = False,
                      models_dir: str | os.PathLike | None = None) -> Path:
    """A local folder holding the image-to-text model: a folder as given; a hub id from the models
    folder (``captioners/OWNER--NAME``), else the hub cache, else downloaded once into the hub cache."""
    spec = str(model or DEFAULT_CAPTIONER)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    if looks_like_path(spec):
        raise ModelNotFoundError(MissingFile(f"captioner {spec}", "folder not found", CAPTIONER_OPTION))
    stored, note = lookup_captioner(spec, models_dir)
    if stored is not None:
        return stored

    def resolve() -> Path:
        try:
            return snapshot(spec, None, local_files_only, ignore=_CAPTIONER_IGNORE)
        except Miss as miss:
            raise ModelNotFoundError(describe_misses(f"captioner {spec}", [miss], CAPTIONER_OPTION)) from None

    return with_note(note, lambda: remembered(("captioner", spec, local_files_only), resolve, network_failure))
