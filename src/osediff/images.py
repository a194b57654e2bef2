"""Reading user images robustly and writing outputs atomically."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import OSEDiffError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageLoadError(OSEDiffError, ValueError):
    """An input that cannot be used as an image; the message names the file and the problem."""


@dataclass
class LoadedImage:
    rgb: Image.Image
    alpha: Image.Image | None
    path: Path | None = None


def load_image(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, *,
               name: str | None = None) -> LoadedImage:
    """Open a file path or encoded bytes as 8-bit RGB (+ optional alpha), honouring EXIF orientation.

    Grayscale, palette, CMYK and 16-bit images are converted; animations give their first frame
    with a warning; images over ``max_pixels`` are refused from their header, before decoding.
    ``name`` is how messages call the image (default: the path, or ``<upload>`` for bytes).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label, path, size = name or "<upload>", None, len(source)
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise ImageLoadError(f"{label}: no such file")
        size, stream = path.stat().st_size, path
    if size == 0:
        raise ImageLoadError(f"{label}: file is empty (0 bytes)")
    try:
        with Image.open(stream) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageLoadError(
                    f"{label}: {img.width}x{img.height} exceeds the pixel limit of {max_pixels} "
                    "(raise it with --max-pixels)"
                )
            if getattr(img, "n_frames", 1) > 1:
                warnings.warn(f"{label}: animated image, using the first frame only", stacklevel=2)
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return LoadedImage(*split_alpha(to_8bit(img)), path=path)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{label}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{label}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{label}: cannot decode image ({err})") from None


def to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode as ``RGB`` or ``RGBA`` with 8 bits per channel."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    return img


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB and the alpha channel of an RGBA image (kept even when fully opaque: RGBA in, RGBA out)."""
    if img.mode == "RGBA":
        return img.convert("RGB"), img.getchannel("A")
    return img, None


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


def _umask_mode() -> int:
    """The permission bits an ordinary ``open()`` would give (mkstemp's own are 0600)."""
    return 0o666 & ~_read_umask()


def save_image_atomic(img: Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write via a temporary file in the same folder and rename, so no half-written file remains."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        img.save(tmp, format=Image.registered_extensions().get(path.suffix.lower()), **save_kwargs)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)
    return path


def is_image_file(path: Path) -> bool:
    """An image by its suffix, and not a hidden file (atomic writes leave ``.name.XXXX.png`` while running)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def collect_inputs(specs: list[str]) -> list[Path]:
    """Files, folders (non-recursive, image suffixes) and glob patterns, de-duplicated, in order."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found.extend(list_images(path))
        elif any(ch in spec for ch in "*?["):
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(anchor)) if path.is_absolute() else spec
            found.extend(sorted(p for p in anchor.glob(pattern) if p.is_file() and not p.name.startswith(".")))
        else:
            found.append(path)
    return list(dict.fromkeys(found))
