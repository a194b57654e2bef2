"""What the demo accepts from a browser: uploaded files only, within size and pixel limits.

Every refusal is a :class:`DemoInputError` whose message is shown to the user as is, so each one
says what was wrong and what the limit is.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OSEDiffError
from ..images import ImageLoadError, LoadedImage, load_image
from ..limits import LimitExceeded, RequestLimits
from ..limits import check_request as check_limits


class DemoInputError(OSEDiffError, ValueError):
    """A request the demo refuses; the message is meant for the person using the page."""


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def resolve_upload(path: str | os.PathLike, upload_roots: list[Path]) -> Path:
    """``path`` as a real path inside one of ``upload_roots``, or a refusal.

    Gradio hands handlers the server-side path of an uploaded file. Requiring that path to lie in
    the upload cache (after resolving symlinks and ``..``) means a crafted request naming any other
    file on the server is refused even if the web layer let it through.
    """
    try:
        real = Path(os.path.realpath(os.fspath(path)))
    except (TypeError, ValueError) as err:
        raise DemoInputError(f"not an uploaded file ({err})") from None
    for root in upload_roots:
        root_real = Path(os.path.realpath(root))
        if real.is_relative_to(root_real) and real != root_real:
            return real
    raise DemoInputError("only images uploaded through the page can be used; file-system paths are refused")


def check_upload(path: str | os.PathLike, upload_roots: list[Path], limits: RequestLimits) -> LoadedImage:
    """Open an uploaded image after checking where it is, its size in bytes and its pixel count."""
    real = resolve_upload(path, upload_roots)
    if not real.is_file():
        raise DemoInputError("the uploaded file is gone; please upload it again")
    size = real.stat().st_size
    if size > limits.max_bytes:
        raise DemoInputError(f"the upload is {_mb(size)}; this demo accepts files up to {_mb(limits.max_bytes)}")
    return open_limited(real, limits)


def open_limited(path: Path, limits: RequestLimits) -> LoadedImage:
    """:func:`load_image` under the demo's pixel limit, with messages worded for a web page."""
    _check_header(path, limits)
    try:
        return load_image(path, max_pixels=limits.max_pixels)
    except ImageLoadError as err:  # its source is the server-side file: the user only needs the problem
        raise DemoInputError(f"cannot use this image: {err.problem}") from None


def _check_header(path: Path, limits: RequestLimits) -> None:
    """Refuse too many pixels from the header alone, quoting the demo's limit rather than a CLI flag."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError):
        return  # load_image reports undecodable files precisely
    if width * height > limits.max_pixels:
        raise page_message(LimitExceeded(kind="pixels", limit=limits.max_pixels, size=(width, height)), limits)


def check_request(width: int, height: int, upscale: float, limits: RequestLimits) -> tuple[int, int]:
    """The output (width, height), if the factor and the output size are within the demo's limits."""
    try:
        return check_limits(width, height, upscale, limits)
    except LimitExceeded as err:
        raise page_message(err, limits) from None


def page_message(err: LimitExceeded, limits: RequestLimits) -> DemoInputError:
    """A limit the request went over, worded for the person on the page."""
    (width, height), (out_w, out_h) = err.size, err.output
    if err.kind == "pixels":
        side = limits.max_side
        return DemoInputError(f"the image is {width}x{height} = {width * height:,} pixels; this demo accepts up to "
                              f"{limits.max_pixels:,} pixels (about {side}x{side}). Please downscale or crop it first.")
    if err.kind == "upscale":
        return DemoInputError(f"the upscale factor must be between 1 and {limits.max_upscale:g}, got {err.upscale:g}")
    return DemoInputError(f"x{err.upscale:g} of a {width}x{height} image would be {out_w}x{out_h} = {out_w * out_h:,} "
                          f"pixels; this demo produces at most {limits.max_output_pixels:,}. Use a smaller factor or "
                          "image.")
