"""What is where: :func:`inventory`, what ``osediff models list`` prints.

Every known file (:func:`.store.known_files`) is looked for in the models folder, then in the hub and
osediff caches; each one found gets its size and hash check, and every preset and prompt extractor is
tried with the resolvers a run uses, offline, to say which can run with no network now. Sends no
request; no torch here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..fileio import file_sha256
from .hub import cached_snapshot, resolve_base
from .missing import ModelNotFoundError
from .store import (
    HUB_CACHE,
    MISSING,
    MODELS_FOLDER,
    Known,
    blob_sha,
    cached_copy,
    file_record,
    known_files,
    models_folder,
    using,
)


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


def _pinned_check(digest: str, expected: str) -> str:
    return _LABELS["pinned"] if digest == expected.lower() else f"MISMATCH (sha256 {digest[:12]}...)"


def _unchecked(digest: str) -> str:
    return f"sha256 {digest[:12]}... (nothing to check it against)"


def _folder_check(folder: Path, name: str, expected: str | None, verify: bool) -> str:
    path = folder / name
    stat = path.stat()
    record = file_record(folder, name)
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
        return _pinned_check(digest, expected)
    if record is not None and record.get("sha256"):
        if digest != record["sha256"]:
            return f"MISMATCH (sha256 {digest[:12]}..., recorded {record['sha256'][:12]}...)"
        return _LABELS.get(record.get("check"), _LABELS["recorded"])
    return _unchecked(digest)


def _cache_check(path: Path, expected: str | None, verify: bool) -> str:
    if not verify:
        return "not checked (--verify)"
    digest = file_sha256(path)
    blob = blob_sha(path)
    if expected:
        return _pinned_check(digest, expected)
    if blob:
        return _LABELS["hub"] if digest == blob else f"MISMATCH (sha256 {digest[:12]}..., hub {blob[:12]}...)"
    return _unchecked(digest)


def inventory(models_dir: str | os.PathLike | None = None, *, verify: bool = False,
              captioner: str | None = None) -> Inventory:
    """Where every known file is (the models folder first, then the caches), its size and hash check,
    and which presets and prompt extractors can run with no network now (found by the resolvers a
    run uses, offline). ``verify`` hashes every file; otherwise a models-folder file is taken as
    checked when its record from :func:`~.store_fill.download` still fits its size and time. Sends
    no request."""
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
        cached = next((c for c in map(cached_copy, known.sources) if c is not None), None)
        if cached is not None:
            found.append(Located(known.name, cached[1], cached[0], cached[0].stat().st_size,
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
        chosen = known.select(sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()))
        if chosen:
            return [Located(f"{known.name}/{rel}", HUB_CACHE, snapshot / rel, (snapshot / rel).stat().st_size,
                            _cache_check(snapshot / rel, None, verify), known.used_by) for rel in chosen]
    return [Located(f"{known.name}/", MISSING, None, None, "-", known.used_by)]


def _offline_now(models_dir: str | os.PathLike | None, captioner: str | None) -> dict[str, str | None]:
    from ..presets import PRESETS, resolve_weights
    from ..prompts import available_prompt_extractors, resolve_extractor_files

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
