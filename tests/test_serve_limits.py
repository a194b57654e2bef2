"""The service's request checks and batch grouping, without Ray or HTTP: statuses, messages, sizes."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from osediff.errors import OSEDiffError
from osediff.images import ImageLoadError
from osediff.limits import DEMO_LIMITS, SERVE_LIMITS, LimitExceeded, LimitsError, RequestLimits
from osediff.params import ALIGN_METHODS
from osediff.serve.limits import (
    RequestError,
    TimedOut,
    TooLarge,
    Unprocessable,
    check_content_length,
    error_status,
    media_type,
    open_checked,
    parse_params,
    read_limited,
)

LIMITS = RequestLimits(max_bytes=1000, max_pixels=64 * 64, max_output_pixels=128 * 128, max_upscale=4)
LOADED = ("text", "none")


def png_bytes(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def declared_size_png(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width`` x ``height`` (a decompression bomb's header)."""
    data = png_bytes(4, 4)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    start = 8  # signature
    return data[:start] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[start + 25:]


def test_parameters_default_to_the_cli_defaults():
    params = parse_params({}, LOADED, LIMITS)
    assert (params.upscale, params.align, params.prompt, params.prompt_extractor) == (4.0, "adain", "", "text")
    assert (params.format, params.quality, media_type(params)) == ("png", 95, "image/png")
    params = parse_params({"upscale": "2.5", "align": "wavelet", "prompt": "a cat", "format": "jpg",
                           "quality": "80", "prompt_extractor": "none"}, LOADED, LIMITS)
    assert (params.upscale, params.align, params.prompt, params.format, params.quality) == (
        2.5, "wavelet", "a cat", "jpeg", 80)
    params = parse_params({"strength": "0.25", "guidance": "3", "negative_prompt": "blurry"}, LOADED, LIMITS)
    assert (params.strength, params.guidance, params.negative_prompt) == (0.25, 3.0, "blurry")


@pytest.mark.parametrize(("values", "message"), [
    ({"upscale": "0.5"}, "upscale must be between 1 and 4"),
    ({"upscale": "5"}, "upscale must be between 1 and 4"),
    ({"upscale": "nan"}, "upscale must be between 1 and 4"),
    ({"upscale": "two"}, "upscale must be a number"),
    ({"align": "colour"}, f"align must be one of {', '.join(ALIGN_METHODS)}, got 'colour'"),
    ({"prompt_extractor": "dape"}, "prompt_extractor 'dape' is not loaded on this server"),
    ({"format": "gif"}, "format must be one of png, jpeg, webp, tiff (or jpg), got 'gif'"),
    ({"format": "same"}, "format must be one of png, jpeg, webp, tiff (or jpg), got 'same'"),
    ({"quality": "0"}, "quality must be an integer 1-100"),
    ({"quality": "high"}, "quality must be an integer"),
    ({"seed": "1"}, "unknown parameter 'seed'"),
    ({"prompt": "x" * 1001}, "prompt is 1001 characters"),
    ({"negative_prompt": "x" * 1001}, "negative_prompt is 1001 characters"),
    ({"strength": "1.5"}, "strength must be a number from 0 to 1, got 1.5"),
    ({"strength": "inf"}, "strength must be a number from 0 to 1"),
    ({"guidance": "-1"}, "guidance must be a number from 0 to"),
    ({"guidance": "lots"}, "guidance must be a number"),
])
def test_unsupported_parameters_are_422(values, message):
    with pytest.raises(Unprocessable, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_params(values, LOADED, LIMITS)
    assert error_status(err.value) == 422


def test_body_size_is_refused_from_the_header_and_while_streaming():
    check_content_length("1000", LIMITS)
    check_content_length(None, LIMITS)
    with pytest.raises(TooLarge, match="request body is 1001 bytes; at most 1000"):
        check_content_length("1001", LIMITS)
    with pytest.raises(RequestError, match="invalid Content-Length"):
        check_content_length("lots", LIMITS)

    consumed = []

    async def chunks(n: int):
        for i in range(n):
            consumed.append(i)
            yield b"x" * 300

    assert asyncio.run(read_limited(chunks(3), LIMITS)) == b"x" * 900
    consumed.clear()
    with pytest.raises(TooLarge, match="request body exceeds 1000 bytes"):
        asyncio.run(read_limited(chunks(100), LIMITS))
    assert len(consumed) == 4  # stopped at the first chunk past the limit, not at the end of the body


def test_a_body_that_stalls_or_drags_is_refused_with_408():
    async def chunks(pause: float, n: int = 50):
        for _ in range(n):
            await asyncio.sleep(pause)
            yield b"x"

    async def read(pause: float, **deadlines) -> tuple[str, float]:
        started = time.monotonic()
        try:
            await read_limited(chunks(pause), LIMITS, **deadlines)
        except TimedOut as err:
            assert error_status(err) == 408
            return str(err), time.monotonic() - started
        return "complete", time.monotonic() - started

    message, seconds = asyncio.run(read(5.0, pause_s=0.2))  # a client that stops sending
    assert message == "the request body stalled: nothing for 0.2 s (0 bytes received)" and seconds < 1
    message, seconds = asyncio.run(read(0.05, pause_s=0.2, deadline=time.monotonic() + 0.5))  # a trickle
    assert message.startswith("the request body did not arrive in time (") and 0.4 < seconds < 1.5
    assert asyncio.run(read(0.001, pause_s=0.2, deadline=time.monotonic() + 5))[0] == "complete"


def test_pixel_limits_are_checked_from_the_header_before_decoding(monkeypatch):
    bomb, big_output = declared_size_png(13000, 13000), png_bytes(40, 40)
    assert len(bomb) < 200
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(LimitExceeded, match="the image is 13000x13000 = 169000000 pixels; at most 4096") as err:
        open_checked(bomb, parse_params({"upscale": "1"}, LOADED, LIMITS), LIMITS)
    assert error_status(err.value) == 413
    with pytest.raises(LimitExceeded, match=r"x4 of 40x40 would be 160x160 = 25600 pixels; at most 16384") as err:
        open_checked(big_output, parse_params({"upscale": "4"}, LOADED, LIMITS), LIMITS)
    assert error_status(err.value) == 413
    assert decoded == []  # neither was decoded


def test_images_that_cannot_be_used_are_400():
    params = parse_params({"upscale": "2"}, LOADED, LIMITS)
    good = png_bytes(20, 10)
    for data, message in [(b"", "no image in the request body"),
                          (b"this is not an image", "the upload is not an image"),
                          (good[: len(good) // 2], "upload: cannot decode image")]:
        with pytest.raises(OSEDiffError, match=message) as err:
            open_checked(data, params, LIMITS)
        assert error_status(err.value) == 400
    loaded = open_checked(good, params, LIMITS)
    assert loaded.rgb.size == (20, 10) and loaded.alpha is None


def test_error_statuses():
    assert error_status(ImageLoadError("x")) == 400
    assert error_status(OSEDiffError("x")) == 422
    assert error_status(RequestError("x", status=401)) == 401
    assert error_status(RuntimeError("x")) == 500


@pytest.mark.parametrize(("field", "value", "flag"), [("max_pixels", 0, "--max-pixels"),
                                                       ("max_bytes", -1, "--max-upload-mb"),
                                                       ("max_upscale", float("nan"), "--max-upscale"),
                                                       ("max_output_pixels", 0.5, "--max-output-pixels")])
def test_limits_below_one_are_refused_naming_field_and_flag(field, value, flag):
    from osediff.cli.flags import flag_for

    with pytest.raises(LimitsError, match=f"^{field} must be a finite number of at least 1") as info:
        RequestLimits(**{field: value})
    assert info.value.message(flag_for).startswith(f"{flag} must be")


@pytest.mark.parametrize(("command", "limits"), [("demo", DEMO_LIMITS), ("serve", SERVE_LIMITS)])
def test_front_end_flags_default_to_the_library_limits(command, limits):
    from osediff.cli import build_parser
    from osediff.cli.options import limits_from_args

    assert limits_from_args(build_parser().parse_args([command])) == limits
    custom = build_parser().parse_args([command, "--max-upload-mb", "1.5", "--max-pixels", "100", "--max-upscale", "2"])
    assert limits_from_args(custom) == RequestLimits(max_bytes=int(1.5 * 2**20), max_pixels=100,
                                                     max_output_pixels=limits.max_output_pixels, max_upscale=2.0)


def test_front_end_refuses_bad_limit_flags_before_loading(capsys):
    from osediff.cli import main

    assert main(["serve", "--max-pixels", "0", "--offline"]) == 2
    assert capsys.readouterr().err == "error: --max-pixels must be a finite number of at least 1, got 0\n"
