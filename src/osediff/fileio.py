"""Small file helpers every part shares: all-or-nothing writes (files and folders), file hashes,
first lines of errors.

An atomic write goes to a hidden temporary file in the target's folder (``.name.XXXX.suffix``, which
listings skip) and is renamed over the target once complete, so a reader or a killed run never
leaves half a file; the result gets the permissions an ordinary ``open()`` would give.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _read_umask() -> int:
    """The process umask, read without setting it (``os.umask`` can only swap, which races threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK_AT_IMPORT


# a fallback for systems without /proc: swapped once, while importing, before any writer thread exists
_UMASK_AT_IMPORT = os.umask(0o022)
os.umask(_UMASK_AT_IMPORT)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_read_umask())  # mkstemp's own mode is 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def replaced_folder(folder: Path) -> Iterator[Path]:
    """A staging folder beside ``folder`` that replaces it once the block ends without an error; a
    failed block leaves ``folder`` as it was and removes the staging folder."""
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)  # the umask's mode, as every other output
    try:
        yield staging
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# what atomic_write leaves while it writes: "." + stem + "." + tempfile's 8 random characters + suffix
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)", re.DOTALL)


def atomic_temporary_parts(name: str) -> tuple[str, str] | None:
    """``(stem, suffix)`` of the target whose :func:`atomic_write` made the hidden temporary ``name``
    (``.cat.k2j4x_9q.png`` -> ``("cat", ".png")``; a target without a suffix gives ``".tmp"``), or
    None when ``name`` is not of that form. A run killed mid-write leaves such a file behind."""
    match = _TEMPORARY.fullmatch(name)
    return (match["stem"], match["suffix"]) if match else None


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error's message, or its type's name when it has none."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if isinstance(err, BaseException) else ""
