"""The models folder: every default model file under one fixed layout, read before caches and network.

One folder holds what the default runs load, so it can be filled once (``osediff models download
--to DIR`` or :func:`download`), copied to a machine without a network, or put on a volume that every
node of a cluster mounts. Every resolver (:func:`osediff.checkpoint.resolve_base`,
:func:`osediff.presets.resolve_weights`, the prompt extractors' file resolvers, and so
:func:`osediff.model_files.find_model_files` and every front end) looks here first, then in the hub
and osediff caches, then on the network. Layout::

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
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import _read_umask, file_sha256, write_text_atomic
from . import fetch, network
from .hub import (
    _BASE_PATTERNS,
    BASE_ALTERNATIVES,
    KNOWN_SHA256,
    cache_dir,
    cached_snapshot,
    hub_cache_file,
    url_cache_path,
)
from .missing import MissingFile, ModelNotFoundError, Option

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


def _update_manifest(folder: Path, files: dict[str, dict] | None = None, repos: dict[str, dict] | None = None) -> None:
    """Merge records into the manifest (read again first, so records written meanwhile are kept)."""
    data = read_manifest(folder)
    data["files"].update(files or {})
    data["repos"].update(repos or {})
    write_text_atomic(json.dumps(data, indent=1, sort_keys=True) + "\n", folder / MANIFEST)


def _record(path: Path, sha256: str, check: str, source: str) -> dict:
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


# -- what is known ---------------------------------------------------------------------------------------

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


def needed_files(preset: str, extractors: Iterable[str], captioner: str | None = None) -> list[Known]:
    """The files a run of ``preset`` with the prompt ``extractors`` loads (the base always)."""
    from ..presets import get_preset
    from ..prompts import known_prompt_extractor

    get_preset(preset)
    wanted = {f"preset {preset}", *(known_prompt_extractor(name) for name in extractors)}
    return [known for known in known_files(captioner) if known.name == BASE or wanted & set(known.used_by)]


# -- downloading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    """One file of a :func:`download`: its ``name`` in the layout, ``size``, what was done (``fetched``,
    ``resumed`` (from ``resumed_from``), ``copied`` from a cache, or already ``present``), where
    from, and its hash ``check``: ``pinned`` (matches the published sha256), ``hub`` (matches the
    hub's sha256 of the file) or ``recorded`` (no published hash: its sha256 is recorded)."""

    name: str
    path: Path
    size: int
    action: str
    source: str
    check: str
    sha256: str
    resumed_from: int = 0


@dataclass
class _Failure:
    """Why one file could not be placed: hosts that could not be used, and each source's own failure."""

    offline: list[str] = field(default_factory=list)  # network.offline_reason's phrases
    misses: list[MissingFile] = field(default_factory=list)

    def usable(self, url: str) -> bool:
        reason = network.offline_reason(url, False, hub=fetch.is_hub_url(url))
        if reason is not None and reason not in self.offline:
            self.offline.append(reason)
        return reason is None

    def errors(self, name: str) -> list[MissingFile]:
        found = list(self.misses)
        if self.offline:
            suffix = " could not be reached"
            hosts = [r[:-len(suffix)] for r in self.offline if r.endswith(suffix)]
            others = [r for r in self.offline if not r.endswith(suffix)]
            if len(hosts) > 1:
                others.insert(0, f"neither {' nor '.join(hosts)} could be reached")
            elif hosts:
                others.insert(0, hosts[0] + suffix)
            found.insert(0, MissingFile(name, "; ".join(others), network=True))
        return found or [MissingFile(name, "no source to fetch it from")]


OnFile = Callable[[Placed], None]
OnProgress = Callable[[str, int, "int | None"], None]  # (name, bytes on disk, total or None)


def download(preset: str = "osediff", extractors: Iterable[str] = ("dape",), *,
             to: str | os.PathLike | None = None, captioner: str | None = None,
             on_file: OnFile | None = None, on_progress: OnProgress | None = None) -> list[Placed]:
    """Fill the models folder ``to`` (default: :func:`models_folder`) with what a run of ``preset``
    with the prompt ``extractors`` loads, and return what is there.

    Each file is taken from the folder if it is already there and intact, else copied from the hub
    or osediff cache, else downloaded (a ``.part`` left by an interrupted download is resumed with
    an HTTP Range request). Pinned files must match their sha256, hub LFS files the hub's sha256;
    the sha256 of every file is recorded in ``osediff-models.json``. A file that fails its check is
    deleted, never kept. Files that could not be placed end in one :class:`ModelNotFoundError`
    after the others were placed (``on_file`` sees each placed file as it is done).
    """
    folder = Path(to).expanduser() if to is not None else models_folder()
    wanted = needed_files(preset, list(extractors), captioner)
    placed: list[Placed] = []
    misses: list[MissingFile] = []

    def done(item: Placed) -> None:
        placed.append(item)
        if on_file is not None:
            on_file(item)

    try:
        for known in wanted:
            if known.repo:
                misses += _download_repo(folder, known, done, on_progress)
            else:
                failure = _Failure()
                item = _place(folder, known.name, known.sources, known.sha256, None, failure, on_progress)
                if item is None:
                    misses += failure.errors(known.name)
                else:
                    done(item)
    finally:
        network.forget()  # the folder changed: earlier misses are looked up again
    if misses:
        raise ModelNotFoundError(misses, subject=f"not downloaded into {folder}")
    return placed


def _check_label(expected: str | None, hub_sha: str | None, digest: str) -> str | None:
    """``pinned``/``hub``/``recorded`` for a file of sha256 ``digest``; None when it fails a check."""
    if expected:
        return "pinned" if digest == expected.lower() else None
    if hub_sha:
        return "hub" if digest == hub_sha.lower() else None
    return "recorded"


def _present(folder: Path, name: str, expected: str | None, hub_sha: str | None, size: int | None) -> Placed | None:
    """The file already in the folder, if it is whole and passes its checks (hashed unless the record
    made when it was placed still fits)."""
    path = folder / name
    if not path.is_file():
        return None
    stat = path.stat()
    if size is not None and stat.st_size != size:
        return None
    record = read_manifest(folder)["files"].get(name)
    fits = isinstance(record, dict) and (record.get("size"), record.get("mtime_ns")) == (stat.st_size,
                                                                                         stat.st_mtime_ns)
    digest = record["sha256"] if fits else file_sha256(path)
    check = _check_label(expected, hub_sha, digest)
    if check is None:
        return None
    if fits and not expected and not hub_sha:
        check = record.get("check", check)  # as it was checked when placed
    if not fits:
        _update_manifest(folder, {name: _record(path, digest, check, (record or {}).get("source", "present"))})
    return Placed(name, path, stat.st_size, "present", (record or {}).get("source", "present"), check, digest)


def _cached_copy(source: str) -> tuple[Path, str] | None:
    """A cached copy of ``source`` (``hf://`` in the hub cache, a URL in osediff's): (path, which cache)."""
    if source.startswith("hf://"):
        found = hub_cache_file(source)
        return (found, "hub cache") if found is not None else None
    if "://" in source:
        found = url_cache_path(source)
        return (found, "osediff cache") if found.is_file() else None
    return None


def _blob_sha(path: Path) -> str | None:
    """The sha256 the hub cache names a blob by (LFS files), or None."""
    name = Path(os.path.realpath(path)).name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def _place(folder: Path, name: str, sources: tuple[str, ...], expected: str | None, hub_sha: str | None,
           failure: _Failure, on_progress: OnProgress | None, size: int | None = None,
           listed: bool = False) -> Placed | None:
    """Put one file in place from the folder itself, a cache or the network; None (and ``failure``) if not.

    ``listed``: ``hub_sha`` and ``size`` come from the hub's listing already (a repository's files)."""
    present = _present(folder, name, expected, hub_sha, size)
    if present is not None:
        return present
    target = folder / name
    for source in sources:
        cached = _cached_copy(source)
        if cached is not None:
            item = _copy(folder, name, cached[0], f"{cached[1]} ({source})", expected,
                         hub_sha or _blob_sha(cached[0]))
            if item is not None:
                return item
    for source in sources:
        url = fetch.source_url(source)
        if not failure.usable(url):
            continue
        want_sha, want_size = expected, size
        if source.startswith("hf://") and not expected and not listed:
            repo_id, path = fetch.split_hub_spec(source)
            try:
                entry = next((e for e in fetch.hub_tree(repo_id, posixpath.dirname(path), recursive=False)
                              if e.path == path), None)
            except fetch.FetchError as err:
                if err.missing:
                    failure.misses.append(MissingFile(f"{name} from {source}", "not on the hub"))
                    continue
                entry = None  # the listing is a check, not a requirement
            if entry is not None:
                want_sha, want_size = entry.sha256, entry.size if size is None else size
        else:
            want_sha = expected or hub_sha
        try:
            got = fetch.fetch(url, target, sha256=want_sha, size=want_size,
                              progress=None if on_progress is None else lambda n, total: on_progress(name, n, total))
        except fetch.FetchError as err:
            failure.misses.append(MissingFile(f"{name} from {source}", err.why))
            continue
        check = "pinned" if expected else "hub" if want_sha else "recorded"
        _update_manifest(folder, {name: _record(target, got.sha256, check, url)})
        action = "resumed" if got.resumed_from else "fetched"
        return Placed(name, target, got.size, action, url, check, got.sha256, got.resumed_from)
    return None


def _copy(folder: Path, name: str, cached: Path, source: str, expected: str | None,
          known_sha: str | None) -> Placed | None:
    """A cached file into the folder (a hard link where the file system allows, else a copy), checked."""
    target = folder / name
    part = target.with_name(f".{target.name}.copy.part")
    target.parent.mkdir(parents=True, exist_ok=True)
    part.unlink(missing_ok=True)
    try:
        try:
            os.link(os.path.realpath(cached), part)
        except OSError:
            shutil.copyfile(cached, part)
            os.chmod(part, 0o666 & ~_read_umask())
        digest = file_sha256(part)
        check = _check_label(expected, known_sha, digest)
        if check is None:  # a cached file that is not the published one: not taken
            return None
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    _update_manifest(folder, {name: _record(target, digest, check, source)})
    return Placed(name, target, target.stat().st_size, "copied", source, check, digest)


def _select(paths: Iterable[str], known: Known) -> list[str]:
    chosen = [p for p in paths
              if (not known.include or any(fnmatch.fnmatch(p, pat) for pat in known.include))
              and not any(fnmatch.fnmatch(posixpath.basename(p), pat) or fnmatch.fnmatch(p, pat)
                          for pat in known.exclude)]
    # transformers reads safetensors first: no .bin beside a .safetensors of the same folder
    folders_with_safetensors = {posixpath.dirname(p) for p in chosen if p.endswith(".safetensors")}
    return [p for p in chosen if not (p.endswith(".bin") and posixpath.dirname(p) in folders_with_safetensors)]


def _download_repo(folder: Path, known: Known, done: OnFile, on_progress: OnProgress | None) -> list[MissingFile]:
    """A hub repository's selected files into ``folder/known.name``; the misses (none when all are placed)."""
    record = read_manifest(folder)["repos"].get(known.name)
    if isinstance(record, dict) and isinstance(record.get("files"), list):  # placed before: intact still?
        items = [_present(folder, f"{known.name}/{p}", None, None, None) for p in record["files"]]
        items = [i for i in items if i is not None]
        if len(items) == len(record["files"]) and items:
            for item in items:
                done(item)
            return []
    failure = _Failure()
    for repo_id in known.sources:
        entries: dict[str, fetch.TreeEntry] = {}
        if not failure.usable(fetch.hub_url(repo_id, "")):
            snapshot = cached_snapshot(repo_id)
            if snapshot is None:
                continue
            for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
                rel = path.relative_to(snapshot).as_posix()
                entries[rel] = fetch.TreeEntry(rel, path.stat().st_size, _blob_sha(path))
        else:
            try:
                entries = {e.path: e for e in fetch.hub_tree(repo_id)}
            except fetch.FetchError as err:
                failure.misses.append(MissingFile(f"{known.name} from {repo_id}",
                                                  "not on the hub" if err.missing else err.why))
                continue
        chosen = _select(entries, known)
        if not chosen:
            failure.misses.append(MissingFile(f"{known.name} from {repo_id}", "has none of the files needed"))
            continue
        misses: list[MissingFile] = []
        for rel in chosen:
            entry = entries[rel]
            file_failure = _Failure()
            item = _place(folder, f"{known.name}/{rel}", (f"hf://{repo_id}/{rel}",), None, entry.sha256, file_failure,
                          on_progress, size=entry.size, listed=True)
            if item is None:
                misses += file_failure.errors(f"{known.name}/{rel}")
            else:
                done(item)
        if not misses:
            _update_manifest(folder, repos={known.name: {"source": repo_id, "files": chosen}})
        return misses
    return failure.errors(known.name)


# -- what is where --------------------------------------------------------------------------------------

MODELS_FOLDER, HUB_CACHE, OSEDIFF_CACHE, MISSING = "models folder", "hub cache", "osediff cache", "missing"


@dataclass(frozen=True)
class Located:
    """One known file: its ``name`` in the layout, ``where`` it was found (:data:`MODELS_FOLDER`,
    :data:`HUB_CACHE`, :data:`OSEDIFF_CACHE` or :data:`MISSING`) and its ``path`` there, its ``size``,
    the hash ``check`` (``verified (pinned sha256)``, ``verified (hub sha256)``, ``recorded`` (its
    sha256 as downloaded, no published one), ``not checked``, ``MISMATCH ...``; ``-`` when missing)
    and which presets and extractors use it."""

    name: str
    where: str
    path: Path | None
    size: int | None
    check: str
    used_by: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    """Every known file (:class:`Located`) and what can run with no network now: ``offline`` maps
    ``"preset NAME"`` and each prompt extractor to None (it can) or the reason it cannot."""

    folder: Path
    files: tuple[Located, ...]
    offline: dict[str, str | None]

    def ready(self) -> list[str]:
        return [name for name, why in self.offline.items() if why is None]


_LABELS = {"pinned": "verified (pinned sha256)", "hub": "verified (hub sha256)",
           "recorded": "recorded (none published)"}


def _folder_check(folder: Path, name: str, expected: str | None, verify: bool) -> str:
    path = folder / name
    stat = path.stat()
    record = read_manifest(folder)["files"].get(name)
    record = record if isinstance(record, dict) else None
    if record is not None and record.get("size") not in (None, stat.st_size):
        return f"MISMATCH (size {stat.st_size}, recorded {record['size']})"
    if not verify:
        if record is None:
            return "not checked (no record; --verify hashes it)"
        if record.get("mtime_ns") != stat.st_mtime_ns:
            return "not checked since it changed or was copied (--verify)"
        return _LABELS.get(record.get("check"), _LABELS["recorded"])
    digest = file_sha256(path)
    if expected:
        return _LABELS["pinned"] if digest == expected.lower() else f"MISMATCH (sha256 {digest[:12]}...)"
    if record is not None and record.get("sha256"):
        if digest != record["sha256"]:
            return f"MISMATCH (sha256 {digest[:12]}..., recorded {record['sha256'][:12]}...)"
        return _LABELS.get(record.get("check"), _LABELS["recorded"])
    return f"sha256 {digest[:12]}... (nothing to check it against)"


def _cache_check(path: Path, expected: str | None, verify: bool) -> str:
    if not verify:
        return "not checked (--verify)"
    digest = file_sha256(path)
    blob = _blob_sha(path)
    if expected:
        return _LABELS["pinned"] if digest == expected.lower() else f"MISMATCH (sha256 {digest[:12]}...)"
    if blob:
        return _LABELS["hub"] if digest == blob else f"MISMATCH (sha256 {digest[:12]}..., hub {blob[:12]}...)"
    return f"sha256 {digest[:12]}... (nothing to check it against)"


def inventory(models_dir: str | os.PathLike | None = None, *, verify: bool = False,
              captioner: str | None = None) -> Inventory:
    """Where every known file is (the models folder first, then the caches), its size and hash check,
    and which presets and prompt extractors can run with no network now (found by the resolvers a
    run uses, offline). ``verify`` hashes every file; otherwise a models-folder file is taken as
    checked when its record from :func:`download` still fits its size and time. Sends no request."""
    folder = models_folder(models_dir)
    found: list[Located] = []
    for known in known_files(captioner):
        if known.repo:
            found += _locate_repo(folder, known, verify)
            continue
        path = folder / known.name
        if path.is_file():
            found.append(Located(known.name, MODELS_FOLDER, path, path.stat().st_size,
                                 _folder_check(folder, known.name, known.sha256, verify), known.used_by))
            continue
        cached = next((c for c in map(_cached_copy, known.sources) if c is not None), None)
        if cached is not None:
            where = HUB_CACHE if cached[1] == "hub cache" else OSEDIFF_CACHE
            found.append(Located(known.name, where, cached[0], cached[0].stat().st_size,
                                 _cache_check(cached[0], known.sha256, verify), known.used_by))
        else:
            found.append(Located(known.name, MISSING, None, None, "-", known.used_by))
    return Inventory(folder, tuple(found), _offline_now(models_dir, captioner))


def _locate_repo(folder: Path, known: Known, verify: bool) -> list[Located]:
    root = folder / known.name
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [Located(f"{known.name}/{p.relative_to(root).as_posix()}", MODELS_FOLDER, p, p.stat().st_size,
                        _folder_check(folder, f"{known.name}/{p.relative_to(root).as_posix()}", None, verify),
                        known.used_by) for p in paths]
    for repo_id in known.sources:
        snapshot = cached_snapshot(repo_id)
        if snapshot is None:
            continue
        chosen = _select(sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()), known)
        if chosen:
            return [Located(f"{known.name}/{rel}", HUB_CACHE, snapshot / rel, (snapshot / rel).stat().st_size,
                            _cache_check(snapshot / rel, None, verify), known.used_by) for rel in chosen]
    return [Located(f"{known.name}/", MISSING, None, None, "-", known.used_by)]


def _offline_now(models_dir: str | os.PathLike | None, captioner: str | None) -> dict[str, str | None]:
    from ..presets import PRESETS, resolve_weights
    from ..prompts import available_prompt_extractors, resolve_extractor_files
    from .hub import resolve_base

    def attempt(find: Callable[[], object]) -> str | None:
        try:
            find()
        except ModelNotFoundError as err:
            return err.reason
        return None

    ready: dict[str, str | None] = {}
    base = attempt(lambda: resolve_base(local_files_only=True, models_dir=models_dir))
    for name in PRESETS:
        weights = attempt(lambda name=name: resolve_weights(preset=name, local_files_only=True,
                                                            models_dir=models_dir))
        ready[f"preset {name}"] = "; ".join(why for why in (base, weights) if why) or None
    with using(models_dir):
        for name in available_prompt_extractors():
            ready[name] = attempt(lambda name=name: resolve_extractor_files(name, captioner=captioner,
                                                                           local_files_only=True))
    return ready
