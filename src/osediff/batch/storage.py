"""Where a batch reads and writes: a local folder, or any URI pyarrow.fs opens (``s3://``, ``gs://``, ``file://``).

Local outputs are written through a temporary file and a rename; object stores make an object
visible only once its upload completes, which gives remote outputs the same all-or-nothing property.
"""

from __future__ import annotations

import fnmatch
import io
import os
import urllib.parse
from pathlib import Path, PurePosixPath

from PIL import Image

from ..fileio import first_line, write_text_atomic
from ..images import IMAGE_SUFFIXES, collect_inputs, save_image_atomic
from ..outputs import for_format, save_options
from .config import GLOB_CHARS, BatchConfigError, is_uri


def _filesystem(uri: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for unknown schemes or bad URIs
        raise BatchConfigError(f"{uri}: cannot open ({first_line(err)})") from None


class Folder:
    """An output folder: a local path or a URI."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = str(location)
        if self.location.startswith("file://"):  # a local folder: keep the atomic local writes
            self.location = urllib.parse.unquote(urllib.parse.urlparse(self.location).path)
        self.remote = is_uri(self.location)
        if self.remote:
            self._fs, self._root = _filesystem(self.location.rstrip("/"))

    def path(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{name}" if self.remote else str(Path(self.location) / name)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (Path(self.location) / name).exists()
        from pyarrow import fs

        return self._fs.get_file_info(f"{self._root}/{name}").type != fs.FileType.NotFound

    def write_image(self, name: str, image: Image.Image, quality: int) -> str:
        image, options = for_format(image, name), save_options(name, quality)
        if not self.remote:
            return str(save_image_atomic(image, Path(self.location) / name, **options))
        buffer = io.BytesIO()
        image.save(buffer, format=Image.registered_extensions()[PurePosixPath(name).suffix.lower()], **options)
        return self.write_bytes(name, buffer.getvalue())

    def write_text(self, name: str, text: str) -> str:
        if not self.remote:
            return str(write_text_atomic(text, Path(self.location) / name))
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> str:
        """Remote folders only (local writes go through the atomic helpers of ``osediff.fileio``)."""
        self._fs.create_dir(self._root, recursive=True)
        with self._fs.open_output_stream(f"{self._root}/{name}") as out:
            out.write(data)
        return self.path(name)


def read_bytes(uri: str) -> bytes:
    """The bytes of a local file or a URI."""
    if not is_uri(uri):
        return Path(uri).read_bytes()
    filesystem, path = _filesystem(uri)
    with filesystem.open_input_file(path) as fh:
        return fh.read()


def collect_any(specs: list[str]) -> list[str]:
    """Like :func:`osediff.images.collect_inputs`, also for URIs: files, folders and globs, in order."""
    found: list[str] = []
    for spec in specs:
        if not is_uri(spec):
            found.extend(str(p) for p in collect_inputs([spec]))
            continue
        from pyarrow import fs

        pattern = spec if any(ch in spec for ch in GLOB_CHARS) else None
        folder = spec.rsplit("/", 1)[0] if pattern else spec.rstrip("/")
        filesystem, root = _filesystem(folder)
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.File:
            found.append(spec)
            continue
        if info.type == fs.FileType.NotFound:
            raise BatchConfigError(f"{spec}: no such file or folder")
        names = sorted(entry.base_name for entry in filesystem.get_file_info(fs.FileSelector(root))
                       if entry.type == fs.FileType.File and not entry.base_name.startswith("."))
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern.rsplit("/", 1)[1])]
        else:
            names = [n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
        found.extend(f"{folder}/{name}" for name in names)
    return list(dict.fromkeys(found))
