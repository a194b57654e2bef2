"""Filling the models folder: :func:`download` puts what a run loads into the layout of :mod:`.store`.

A file comes from the folder itself, the hub or osediff cache, or the network (:mod:`.fetch`), in
that order; a hub repository (the base, a captioner) file by file, from the hub's listing or, when
the hub cannot be reached, its cached snapshot. No torch here.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import _read_umask, file_sha256
from . import fetch, network
from .hub import cached_snapshot
from .missing import MissingFile, ModelNotFoundError
from .store import (
    BASE,
    Known,
    blob_sha,
    cached_copy,
    file_record,
    known_files,
    models_folder,
    new_record,
    read_manifest,
    update_manifest,
)


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


def needed_files(preset: str, extractors: Iterable[str], captioner: str | None = None) -> list[Known]:
    """The files a run of ``preset`` with the prompt ``extractors`` loads (the base always)."""
    from ..presets import get_preset
    from ..prompts import known_prompt_extractor

    get_preset(preset)
    wanted = {f"preset {preset}", *(known_prompt_extractor(name) for name in extractors)}
    return [known for known in known_files(captioner) if known.name == BASE or wanted & set(known.used_by)]


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
    record = file_record(folder, name)
    fits = record is not None and (record.get("size"), record.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
    digest = record["sha256"] if fits else file_sha256(path)
    check = _check_label(expected, hub_sha, digest)
    if check is None:
        return None
    if fits and not expected and not hub_sha:
        check = record.get("check", check)  # as it was checked when placed
    if not fits:
        update_manifest(folder, {name: new_record(path, digest, check, (record or {}).get("source", "present"))})
    return Placed(name, path, stat.st_size, "present", (record or {}).get("source", "present"), check, digest)


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
        cached = cached_copy(source)
        if cached is not None:
            item = _copy(folder, name, cached[0], f"{cached[1]} ({source})", expected,
                         hub_sha or blob_sha(cached[0]))
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
        update_manifest(folder, {name: new_record(target, got.sha256, check, url)})
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
    update_manifest(folder, {name: new_record(target, digest, check, source)})
    return Placed(name, target, target.stat().st_size, "copied", source, check, digest)


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
                entries[rel] = fetch.TreeEntry(rel, path.stat().st_size, blob_sha(path))
        else:
            try:
                entries = {e.path: e for e in fetch.hub_tree(repo_id)}
            except fetch.FetchError as err:
                failure.misses.append(MissingFile(f"{known.name} from {repo_id}",
                                                  "not on the hub" if err.missing else err.why))
                continue
        chosen = known.select(entries)
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
            update_manifest(folder, repos={known.name: {"source": repo_id, "files": chosen}})
        return misses
    return failure.errors(known.name)
