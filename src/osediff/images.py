"""Reading user images robustly and writing outputs atomically."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import OSEDiffError, as_python_argument
from .fileio import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# video containers the batch runner reads frame by frame (osediff.video); the output keeps the container
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageLoadError(OSEDiffError, ValueError):
    """An input that cannot be used as an image: ``source`` names it (a path, ``<upload>``), ``problem``
    says what is wrong, and ``argument`` the option that would let it through (``max_pixels``)."""

    def __init__(self, problem: str = "", *, argument: str | None = None, source: str = "") -> None:
        super().__init__(problem, argument=argument)
        self.source = source

    def message(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        hint = f" (raise it with {name_of(self.argument)})" if self.argument else ""
        return f"{self.source}: {self.problem}{hint}" if self.source else f"{self.problem}{hint}"


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
            raise ImageLoadError("no such file", source=label)
        size, stream = path.stat().st_size, path
    if size == 0:
        raise ImageLoadError("file is empty (0 bytes)", source=label)
    try:
        with Image.open(stream) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageLoadError(f"{img.width}x{img.height} exceeds the pixel limit of {max_pixels}",
                                     source=label, argument="max_pixels")
            if getattr(img, "n_frames", 1) > 1:
                warnings.warn(f"{label}: animated image, using the first frame only", stacklevel=2)
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return LoadedImage(*split_alpha(to_8bit(img)), path=path)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image file (format not recognised)", source=label) from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"refused as a decompression bomb ({err})", source=label) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"cannot decode image ({err})", source=label) from None


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


def save_image_atomic(img: Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write an image all or nothing (see :func:`osediff.fileio.atomic_write`); the suffix picks the format."""
    path = Path(path)
    return atomic_write(path, lambda tmp: img.save(tmp, format=Image.registered_extensions().get(path.suffix.lower()),
                                                   **save_kwargs))


def as_loaded_image(image: object, alpha: Image.Image | None = None) -> LoadedImage:
    """What a Python caller passes, as the step's input: a PIL image, a path, an HxW(xC) uint8 array
    or a (C)xHxW float tensor in [0, 1] (C = 1, 3 or 4); RGBA keeps its alpha, ``alpha`` replaces it."""
    if isinstance(image, LoadedImage):
        loaded = image
    elif isinstance(image, str | os.PathLike):
        loaded = load_image(image, max_pixels=None)
    elif isinstance(image, Image.Image):
        loaded = LoadedImage(*split_alpha(to_8bit(ImageOps.exif_transpose(image))))
    elif hasattr(image, "__array__"):
        loaded = LoadedImage(*split_alpha(to_8bit(Image.fromarray(_as_uint8_hwc(image)))))
    else:
        raise ImageLoadError(f"is a {type(image).__name__}; give a PIL image, a path, an HxWxC uint8 array or a "
                             "CxHxW float tensor in [0, 1]", source="image")
    return LoadedImage(loaded.rgb, alpha if alpha is not None else loaded.alpha, loaded.path)


def _as_uint8_hwc(data: object) -> np.ndarray:
    """An array or tensor as HxW or HxWxC uint8 (tensors are CxHxW floats in [0, 1] or uint8)."""
    is_tensor = hasattr(data, "detach")
    array = np.asarray(data.detach().cpu()) if is_tensor else np.asarray(data)
    if is_tensor and array.ndim == 3 and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"has shape {tuple(array.shape)}; expected HxW or HxWxC with C = 1, 3 or 4",
                             source="image")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageLoadError(f"has dtype {array.dtype}; expected uint8 or floats in [0, 1]", source="image")
    return np.ascontiguousarray(array)


def is_image_file(path: Path) -> bool:
    """An image by its suffix, and not a hidden file (atomic writes leave ``.name.XXXX.png`` while running)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def is_video(path: str | os.PathLike) -> bool:
    """A video container by its suffix (a path or URI)."""
    return os.path.splitext(str(path))[1].lower() in VIDEO_SUFFIXES


def list_images(folder: str | os.PathLike, *, videos: bool = False) -> list[Path]:
    """The image files (and with ``videos``, the video files) directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if is_image_file(p) or (videos and is_video(p) and not p.name.startswith(".") and p.is_file()))


def collect_inputs(specs: list[str]) -> list[Path]:
    """Files, folders (non-recursive: images and videos by suffix) and glob patterns, de-duplicated, in order."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found.extend(list_images(path, videos=True))
        elif any(ch in spec for ch in "*?["):
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(anchor)) if path.is_absolute() else spec
            found.extend(sorted(p for p in anchor.glob(pattern) if p.is_file() and not p.name.startswith(".")))
        else:
            found.append(path)
    return list(dict.fromkeys(found))
