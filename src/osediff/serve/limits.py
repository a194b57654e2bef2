"""What ``POST /v1/upscale`` accepts: request parameters, byte and pixel limits, and error statuses.

Everything here runs before the model sees a request, and without torch, so a refusal costs
milliseconds: sizes are read from ``Content-Length`` and while the body streams in, pixel counts
from the image header. The parameters are :class:`~osediff.params.UpscaleParams` fields, checked
there; what a request leaves out comes from the server's defaults.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import OSEDiffError
from ..images import ImageLoadError, LoadedImage, load_image
from ..limits import LimitExceeded, RequestLimits, check_request
from ..outputs import MEDIA_TYPES
from ..params import FORMAT_ALIASES, OUTPUT_FORMATS, ParamError, UpscaleParams

PARAMETERS = ("upscale", "align", "prompt", "prompt_extractor", "format", "quality", "strength", "guidance",
              "negative_prompt")
MAX_PROMPT_CHARS = 1000


class RequestError(OSEDiffError):
    """A refused request: ``status`` is the HTTP status, the message goes to the client as is;
    ``retry_after`` (seconds) becomes a ``Retry-After`` header."""

    status = 400
    retry_after: float | None = None

    def __init__(self, problem: str = "", *, argument: str | None = None, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(problem, argument=argument)
        if status is not None:
            self.status = status
        if retry_after is not None:
            self.retry_after = retry_after


class TooLarge(RequestError):
    status = 413


class Unprocessable(RequestError):
    status = 422


class Unauthorized(RequestError):
    status = 401


class TimedOut(RequestError):
    """The client was too slow: a pause in its body or the whole body took too long."""

    status = 408


class ClientGone(RequestError):
    """The client hung up before its request was read (nobody reads the answer; nginx's 499)."""

    status = 499


class Unavailable(RequestError):
    """Not the request's fault: the service is draining, or its model is full or restarting."""

    status = 503
    retry_after = 1.0


class NoResult(RequestError):
    """The model gave no result within the request's time."""

    status = 504


def error_status(err: BaseException) -> int:
    """The HTTP status of an error: the request's fault (4xx) or ours (500)."""
    if isinstance(err, RequestError):
        return err.status
    if isinstance(err, ImageLoadError):
        return 400
    if isinstance(err, LimitExceeded):
        return 422 if err.kind == "upscale" else 413
    if isinstance(err, OSEDiffError):
        return 422
    return 500


def media_type(params: UpscaleParams) -> str:
    return MEDIA_TYPES[params.format]


def parse_params(values: Mapping[str, str | None], extractors: Sequence[str], limits: RequestLimits,
                 defaults: UpscaleParams | None = None) -> UpscaleParams:
    """The request's parameters (query string or form fields) as checked UpscaleParams; 422 otherwise.

    What the request leaves out comes from ``defaults`` (the server's preset and prompt extractor);
    the fields are those of :class:`UpscaleParams`, so a refusal names the parameter as sent."""
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise Unprocessable(f"unknown parameter {unknown[0]!r}; accepted: {', '.join(PARAMETERS)}")
    given = {key: value for key, value in values.items() if value is not None and value != ""}
    changes: dict = {key: given[key] for key in ("align", "prompt_extractor", "format") if key in given}
    changes["prompt"] = values.get("prompt") or ""
    if "negative_prompt" in given:
        changes["negative_prompt"] = given["negative_prompt"]
    if "upscale" in given:
        upscale = changes["upscale"] = _number(given["upscale"], "upscale", float)
        if not (math.isfinite(upscale) and 1.0 <= upscale <= limits.max_upscale):
            raise Unprocessable(f"must be between 1 and {limits.max_upscale:g}, got {given['upscale']}",
                                argument="upscale")
    if "quality" in given:
        changes["quality"] = _number(given["quality"], "quality", int)
    for name in ("strength", "guidance"):  # their ranges are UpscaleParams' own
        if name in given:
            changes[name] = _number(given[name], name, float)
    for name in ("prompt", "negative_prompt"):
        if len(changes.get(name, "")) > MAX_PROMPT_CHARS:
            raise Unprocessable(f"is {len(changes[name])} characters; at most {MAX_PROMPT_CHARS} are accepted",
                                argument=name)
    if "format" in given and FORMAT_ALIASES.get(given["format"].lower(), given["format"].lower()) not in OUTPUT_FORMATS:
        raise Unprocessable(f"must be one of {', '.join(OUTPUT_FORMATS)} (or jpg), got {given['format']!r}",
                            argument="format")
    try:
        params = (defaults or UpscaleParams()).replace(**changes)
    except ParamError as err:
        raise Unprocessable(err.problem, argument=err.argument) from None
    if params.prompt_extractor not in extractors:
        raise Unprocessable(f"{params.prompt_extractor!r} is not loaded on this server; "
                            f"choose one of {', '.join(extractors)}", argument="prompt_extractor")
    return params


def _number(text: str, name: str, kind: type[float] | type[int]) -> float | int:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise Unprocessable(f"must be a{'n integer' if kind is int else ' number'}, got {text!r}",
                            argument=name) from None


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


async def read_limited(chunks: AsyncIterator[bytes], limits: RequestLimits, *, pause_s: float | None = None,
                       deadline: float | None = None) -> bytes:
    """The body, refused with 413 as soon as it grows past the limit (a missing or false length), and
    with 408 when no byte came for ``pause_s`` seconds or the body is not complete at ``deadline``
    (a :func:`time.monotonic` time): a client that stops sending is not waited for."""
    body = bytearray()
    iterator = aiter(chunks)
    while True:
        timeout = pause_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimedOut(f"the request body did not arrive in time ({len(body)} bytes received)")
            timeout = left if timeout is None else min(timeout, left)
        try:
            chunk = await asyncio.wait_for(anext(iterator), timeout)
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(f"the request body did not arrive in time ({len(body)} bytes received)") from None
            raise TimedOut(f"the request body stalled: nothing for {pause_s:g} s "
                           f"({len(body)} bytes received)") from None
        body += chunk
        if len(body) > limits.max_bytes:
            raise TooLarge(f"request body exceeds {limits.max_bytes} bytes")


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
    check_request(width, height, params.upscale, limits)
    # load_image checks the header again, then decodes; its errors name the upload, never a path
    return load_image(data, max_pixels=limits.max_pixels, name="upload")
