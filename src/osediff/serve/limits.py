"""What ``POST /v1/upscale`` accepts: request parameters, byte and pixel limits, and error statuses.

Everything here runs before the model sees a request, and without torch, so a refusal costs
milliseconds: sizes are read from ``Content-Length`` and while the body streams in, pixel counts
from the image header.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..color import ALIGN_METHODS
from ..errors import OSEDiffError
from ..images import ImageLoadError, LoadedImage, load_image
from ..limits import RequestLimits, output_size

OUTPUT_FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PARAMETERS = ("upscale", "align", "prompt", "prompt_extractor", "format", "quality")
MAX_PROMPT_CHARS = 1000


class RequestError(OSEDiffError):
    """A refused request: ``status`` is the HTTP status, the message goes to the client as is."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class TooLarge(RequestError):
    status = 413


class Unprocessable(RequestError):
    status = 422


class Unauthorized(RequestError):
    status = 401


def error_status(err: BaseException) -> int:
    """The HTTP status of an error: the request's fault (4xx) or ours (500)."""
    if isinstance(err, RequestError):
        return err.status
    if isinstance(err, ImageLoadError):
        return 400
    if isinstance(err, OSEDiffError):
        return 422
    return 500


@dataclass(frozen=True)
class UpscaleParams:
    upscale: float = 4.0
    align: str = "adain"
    prompt: str = ""
    prompt_extractor: str = "text"
    format: str = "png"
    quality: int = 95

    @property
    def media_type(self) -> str:
        return OUTPUT_FORMATS[self.format]


def parse_params(values: Mapping[str, str | None], extractors: tuple[str, ...], limits: RequestLimits,
                 defaults: UpscaleParams = UpscaleParams()) -> UpscaleParams:
    """Validate the request's parameters (query string or form fields); 422 on anything unsupported.

    What the request leaves out comes from ``defaults`` (the server's preset and prompt extractor)."""
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise Unprocessable(f"unknown parameter {unknown[0]!r}; accepted: {', '.join(PARAMETERS)}")
    given = {key: value for key, value in values.items() if value is not None and value != ""}
    upscale = _number(given["upscale"], "upscale", float) if "upscale" in given else defaults.upscale
    if not (math.isfinite(upscale) and 1.0 <= upscale <= limits.max_upscale):
        raise Unprocessable(f"upscale must be between 1 and {limits.max_upscale:g}, got {given.get('upscale')}")
    align = given.get("align", defaults.align)
    if align not in ALIGN_METHODS:
        raise Unprocessable(f"unknown align {align!r}; choose one of {', '.join(ALIGN_METHODS)}")
    extractor = given.get("prompt_extractor", defaults.prompt_extractor)
    if extractor not in extractors:
        raise Unprocessable(f"prompt_extractor {extractor!r} is not loaded on this server; "
                            f"choose one of {', '.join(extractors)}")
    prompt = values.get("prompt") or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise Unprocessable(f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    fmt = given.get("format", defaults.format).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in OUTPUT_FORMATS:
        raise Unprocessable(f"unknown format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    quality = _number(given["quality"], "quality", int) if "quality" in given else defaults.quality
    if not 1 <= quality <= 100:
        raise Unprocessable(f"quality must be between 1 and 100, got {quality}")
    return UpscaleParams(upscale, align, prompt, extractor, fmt, quality)


def _number(text: str, name: str, kind: type[float] | type[int]) -> float | int:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise Unprocessable(f"{name} must be a{'n integer' if kind is int else ' number'}, got {text!r}") from None


def check_content_length(header: str | None, limits: RequestLimits) -> None:
    """413 from the declared length alone, before a byte of the body is read."""
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise RequestError(f"invalid Content-Length {header!r}") from None
    if length > limits.max_bytes:
        raise TooLarge(f"request body is {length} bytes; at most {limits.max_bytes} are accepted")


async def read_limited(chunks: AsyncIterator[bytes], limits: RequestLimits) -> bytes:
    """The body, refused with 413 as soon as it grows past the limit (a missing or false length)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limits.max_bytes:
            raise TooLarge(f"request body exceeds {limits.max_bytes} bytes")
    return bytes(body)


def open_checked(data: bytes, params: UpscaleParams, limits: RequestLimits) -> LoadedImage:
    """Decode an uploaded image after checking input and output pixels from its header alone."""
    if not data:
        raise RequestError("no image in the request body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limits below decide
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                width, height = img.size
    except Image.DecompressionBombError as err:
        raise TooLarge(f"the image is refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise RequestError("the upload is not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise RequestError(f"cannot read the image header ({err})") from None
    if width * height > limits.max_pixels:
        raise TooLarge(f"the image is {width}x{height} = {width * height} pixels; "
                       f"at most {limits.max_pixels} are accepted")
    out_w, out_h = output_size(width, height, params.upscale)
    if out_w * out_h > limits.max_output_pixels:
        raise TooLarge(f"x{params.upscale:g} of {width}x{height} would be {out_w}x{out_h} = {out_w * out_h} "
                       f"pixels; at most {limits.max_output_pixels} are produced")
    # load_image checks the header again, then decodes; its errors name the upload, never a path
    return load_image(data, max_pixels=limits.max_pixels, name="upload")
