"""The models folder: every default model file under one fixed layout, read before caches and network.

One folder holds what the default runs load, so it can be filled once (``osediff models download
--to DIR`` or :func:`osediff.checkpoint.download`, :mod:`.store_fill`), copied to a machine without a
network, or put on a volume that every node of a cluster mounts. Every resolver
(:func:`osediff.checkpoint.resolve_base`, :func:`osediff.presets.resolve_weights`, the prompt
extractors' file resolvers, and so :func:`osediff.model_files.find_model_files` and every front end)
looks here first, then in the hub and osediff caches, then on the network. Layout::

    DIR/
      osediff-models.json                 what was downloaded: size, sha256 and source of each file
      base/                               SD-2.1-base in diffusers layout (fp32 weights only)
        model_index.json
        scheduler/scheduler_config.json
        text_encoder/config.json  text_encoder/model.safetensors
        tokenizer/...                     the tokenizer files of the base repository
        unet/config.json          unet/diffusion_pytorch_model.safetensors
        vae/config.json           vae/diffusion_pytorch_model.safetensors
      weights/osediff.pkl                 preset osediff (the paper's x4 model)
      weights/osediff_face.pkl            preset face
      prompts/ram_swin_large_14m.pth      RAM (prompt extractors dape and ram)
      prompts/DAPE.pth                    DAPE (prompt extractor dape)
      prompts/ram_tag_list.txt            RAM's tag vocabulary (dape and ram)
      prompts/ram_tag_list_threshold.txt
      captioners/OWNER--NAME/             an image-to-text model of the hub (prompt extractor caption)

Which folder: ``models_dir`` where a function takes it (``ModelOptions.models_dir``, ``--models-dir``,
``from_pretrained(models_dir=...)``), else ``$OSEDIFF_MODELS``, else ``~/.cache/osediff/models``
(``$OSEDIFF_CACHE/models``). It serves the default files only: a ``--weights``/``--base``/``--ram``
path or spec of your own is read as given. A file whose size differs from the one recorded when it
was downloaded (an incomplete copy) is not used. No torch here.

This module holds the layout and the lookups the resolvers make, the record of what was downloaded
(``osediff-models.json``), and every known default file with where it comes from (:func:`known_files`)
and where a cache holds a copy of it (:func:`cached_copy`). Filling the folder is :mod:`.store_fill`
(:func:`download`); what ``osediff models list`` prints is :mod:`.store_inventory` (:func:`inventory`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic
from .hub import _BASE_PATTERNS, BASE_ALTERNATIVES, KNOWN_SHA256, cache_dir, hub_cache_file, url_cache_path
from .missing import MissingFile, Option

ENV = "OSEDIFF_MODELS"
MANIFEST = "osediff-models.json"
BASE = "base"
WEIGHTS = "weights"
PROMPTS = "prompts"
CAPTIONERS = "captioners"
RAM_FILE = f"{PROMPTS}/ram_swin_large_14m.pth"
DAPE_FILE = f"{PROMPTS}/DAPE.pth"
TAG_LIST_FILE = f"{PROMPTS}/ram_tag_list.txt"
THRESHOLDS_FILE = f"{PROMPTS}/ram_tag_list_threshold.txt"
# what a base folder must hold to be used (model_index.json and the tokenizer's vocabulary files vary)
BASE_REQUIRED = ("scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
                 "tokenizer/tokenizer_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
# where a known file is: this folder, a cache (what :func:`cached_copy` names), or nowhere
MODELS_FOLDER, HUB_CACHE, OSEDIFF_CACHE, MISSING = "models folder", "hub cache", "osediff cache", "missing"

MODELS_DIR_OPTION = Option("models_dir", "<folder filled by osediff models download>")
_active: ContextVar[str | None] = ContextVar("osediff_models_dir", default=None)


# -- which folder ---------------------------------------------------------------------------------

def default_models_dir() -> Path:
    """``$OSEDIFF_CACHE/models`` or ``~/.cache/osediff/models``: the folder when none is named."""
    return cache_dir() / "models"


def named_models_dir(models_dir: str | os.PathLike | None = None) -> str | None:
    """The folder named by ``models_dir``, :func:`using` or ``$OSEDIFF_MODELS``, in that order (None: none is)."""
    for given in (models_dir, _active.get(), os.environ.get(ENV)):
        if given is not None and str(given) != "":
            return str(given)
    return None


def models_folder(models_dir: str | os.PathLike | None = None) -> Path:
    """The models folder to read: the one named (:func:`named_models_dir`) or :func:`default_models_dir`."""
    named = named_models_dir(models_dir)
    return Path(named).expanduser() if named is not None else default_models_dir()


@contextlib.contextmanager
def using(models_dir: str | os.PathLike | None) -> Iterator[None]:
    """Resolvers called inside (without their own ``models_dir``) read ``models_dir``; None changes nothing."""
    if models_dir is None:
        yield
        return
    token = _active.set(str(models_dir))
    try:
        yield
    finally:
        _active.reset(token)


def weights_file(weights_spec: str) -> str:
    """A published weights file's name in the layout: ``weights/<its file name>``."""
    return f"{WEIGHTS}/{posixpath.basename(weights_spec)}"


def captioner_folder(repo_id: str) -> str:
    """A hub captioner's folder in the layout: ``captioners/OWNER--NAME``."""
    return f"{CAPTIONERS}/{repo_id.replace('/', '--')}"


# -- the record of what was downloaded ---------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"format": 1, "files": {}, "repos": {}}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("format", 1)
    for key in ("files", "repos"):
        if not isinstance(data.get(key), dict):
            data[key] = {}
    return data


def file_record(folder: Path, name: str) -> dict | None:
    """The manifest's record of the file ``name`` (None when there is none)."""
    record = read_manifest(folder)["files"].get(name)
    return record if isinstance(record, dict) else None


def update_manifest(folder: Path, files: dict[str, dict] | None = None, repos: dict[str, dict] | None = None) -> None:
    """Merge records into the manifest (read again first, so records written meanwhile are kept)."""
    data = read_manifest(folder)
    data["files"].update(files or {})
    data["repos"].update(repos or {})
    write_text_atomic(json.dumps(data, indent=1, sort_keys=True) + "\n", folder / MANIFEST)


def new_record(path: Path, sha256: str, check: str, source: str) -> dict:
    """A file's record as placed now: its size and time (to tell later whether it changed), sha256,
    ``check`` (``pinned``, ``hub`` or ``recorded``) and source."""
    stat = path.stat()
    return {"size": stat.st_size, "sha256": sha256, "check": check, "source": source, "mtime_ns": stat.st_mtime_ns}


# -- lookups of the resolvers (a stat or two; no hashing) ---------------------------------------------

def _folder_note(models_dir: str | os.PathLike | None) -> MissingFile | None:
    named = named_models_dir(models_dir)
    if named is not None and not Path(named).expanduser().is_dir():
        return MissingFile(f"models folder {named}", "not found", MODELS_DIR_OPTION)
    return None


def _size_note(folder: Path, name: str, records: dict) -> MissingFile | None:
    record = records.get(name)
    if not isinstance(record, dict) or "size" not in record:
        return None
    size = (folder / name).stat().st_size
    if size == record["size"]:
        return None
    return MissingFile(str(folder / name), f"{size} bytes, not the {record['size']} recorded when it was "
                                           "downloaded (an incomplete copy?)", MODELS_DIR_OPTION)


def lookup_file(name: str, models_dir: str | os.PathLike | None = None) -> tuple[Path | None, MissingFile | None]:
    """``(path, None)`` when the models folder holds ``name``; else ``(None, why)``, ``why`` None when
    there is nothing worth saying (the file is simply not there)."""
    folder = models_folder(models_dir)
    path = folder / name
    if not path.is_file():
        return None, _folder_note(models_dir)
    note = _size_note(folder, name, read_manifest(folder)["files"])
    return (None, note) if note else (path, None)


def _lookup_tree(name: str, required: Iterable[str], models_dir: str | os.PathLike | None,
                 what: str) -> tuple[Path | None, MissingFile | None]:
    folder = models_folder(models_dir)
    root = folder / name
    if not root.is_dir():
        return None, _folder_note(models_dir)
    records = read_manifest(folder)["files"]
    recorded = [key[len(name) + 1:] for key in records if key.startswith(name + "/")]
    missing = [f for f in dict.fromkeys([*required, *recorded]) if not (root / f).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return None, MissingFile(str(root), f"incomplete {what} (missing {shown})", MODELS_DIR_OPTION)
    for rel in recorded:
        note = _size_note(folder, f"{name}/{rel}", records)
        if note:
            return None, note
    return root, None


def lookup_base(models_dir: str | os.PathLike | None = None) -> tuple[Path | None, MissingFile | None]:
    """The models folder's ``base/`` when it holds every file the loader reads (see :func:`lookup_file`)."""
    return _lookup_tree(BASE, BASE_REQUIRED, models_dir, "SD-2.1-base folder")


def lookup_captioner(repo_id: str, models_dir: str | os.PathLike | None = None) -> tuple[Path | None,
                                                                                        MissingFile | None]:
    """The models folder's copy of the hub captioner ``repo_id`` (``captioners/OWNER--NAME``)."""
    return _lookup_tree(captioner_folder(repo_id), ("config.json",), models_dir, "captioner folder")


# -- what is known, and the caches' copies of it --------------------------------------------------------

@dataclass(frozen=True)
class Known:
    """A default model file (or, ``repo``, a hub repository's files) and where it comes from.

    ``name``: its place in the layout; ``sources``: ``hf://`` specs or URLs tried in order (for a
    repo, hub ids); ``sha256``: the pinned hash (:data:`~osediff.checkpoint.KNOWN_SHA256`);
    ``used_by``: the presets and prompt extractors that load it.
    """

    name: str
    sources: tuple[str, ...]
    sha256: str | None = None
    used_by: tuple[str, ...] = ()
    repo: bool = False
    include: tuple[str, ...] = ()  # a repo's files: those matching any of these (all when empty) ...
    exclude: tuple[str, ...] = ()  # ... and none of these

    def select(self, paths: Iterable[str]) -> list[str]:
        """The files of a repository (``paths`` in it) that belong in the layout, in the order given."""
        chosen = [p for p in paths
                  if (not self.include or any(fnmatch.fnmatch(p, pat) for pat in self.include))
                  and not any(fnmatch.fnmatch(posixpath.basename(p), pat) or fnmatch.fnmatch(p, pat)
                              for pat in self.exclude)]
        # transformers reads safetensors first: no .bin beside a .safetensors of the same folder
        folders_with_safetensors = {posixpath.dirname(p) for p in chosen if p.endswith(".safetensors")}
        return [p for p in chosen if not (p.endswith(".bin") and posixpath.dirname(p) in folders_with_safetensors)]


def known_files(captioner: str | None = None) -> list[Known]:
    """Every default file of every preset and prompt extractor (the caption one with ``captioner``)."""
    from ..presets import PRESETS
    from ..prompts import files as prompt_files
    from ..prompts import tags

    presets = tuple(f"preset {name}" for name in PRESETS)
    tag_sources = (tags.DEFAULT_TAG_LIST, *(s + tags.TAG_LIST_NAME for s in tags._SOURCES[1:]))
    threshold_sources = (tags.DEFAULT_THRESHOLDS, *(s + tags.THRESHOLDS_NAME for s in tags._SOURCES[1:]))
    found = [Known(BASE, BASE_ALTERNATIVES, used_by=presets, repo=True, include=tuple(_BASE_PATTERNS))]
    for preset in PRESETS.values():
        found.append(Known(weights_file(preset.weights), (preset.weights, *preset.weights_mirrors),
                           KNOWN_SHA256.get(posixpath.basename(preset.weights)), (f"preset {preset.name}",)))
    found += [
        Known(RAM_FILE, (prompt_files.DEFAULT_RAM, *prompt_files.RAM_MIRRORS), KNOWN_SHA256["ram_swin_large_14m.pth"],
              ("dape", "ram")),
        Known(DAPE_FILE, (prompt_files.DEFAULT_DAPE, *prompt_files.DAPE_MIRRORS), KNOWN_SHA256["DAPE.pth"], ("dape",)),
        Known(TAG_LIST_FILE, tag_sources, None, ("dape", "ram")),
        Known(THRESHOLDS_FILE, threshold_sources, None, ("dape", "ram")),
    ]
    repo_id = str(captioner or prompt_files.DEFAULT_CAPTIONER)
    found.append(Known(captioner_folder(repo_id), (repo_id,), used_by=("caption",), repo=True,
                       exclude=(*prompt_files._CAPTIONER_IGNORE, ".gitattributes")))
    return found


def cached_copy(source: str) -> tuple[Path, str] | None:
    """A cached copy of ``source`` (``hf://`` in the hub cache, a URL in osediff's): (path, which cache:
    :data:`HUB_CACHE` or :data:`OSEDIFF_CACHE`)."""
    if source.startswith("hf://"):
        found = hub_cache_file(source)
        return (found, HUB_CACHE) if found is not None else None
    if "://" in source:
        found = url_cache_path(source)
        return (found, OSEDIFF_CACHE) if found.is_file() else None
    return None


def blob_sha(path: Path) -> str | None:
    """The sha256 the hub cache names a blob by (LFS files), or None."""
    name = Path(os.path.realpath(path)).name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


# -- the names of the modules that fill the folder and list it, importable from here as before -----------

_MOVED = {"Placed": "store_fill", "OnFile": "store_fill", "OnProgress": "store_fill", "download": "store_fill",
          "needed_files": "store_fill", "Inventory": "store_inventory", "Located": "store_inventory",
          "inventory": "store_inventory"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # imported on first use: those modules import this one
        return getattr(import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
