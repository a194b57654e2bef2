"""The Ray Serve deployment: a FastAPI ingress in front of one :class:`Engine` per replica.

A request is checked completely (key, bytes, parameters, header pixels, decoding) in the replica's
event loop and its thread pool; only then does it join :func:`ray.serve.batch`'s queue, which
hands the model up to ``max_batch_size`` requests at a time in one worker thread, so the event loop
keeps answering health checks and refusing bad requests while the model runs.
"""


import asyncio
import dataclasses
import hashlib
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import OSEDiffError
from ..fileio import first_line
from ..outputs import encode_image
from .engine import Engine, Job, JobResult, ServeConfig
from .limits import (
    PARAMETERS,
    RequestError,
    Unauthorized,
    check_content_length,
    error_status,
    media_type,
    open_checked,
    parse_params,
    read_limited,
)

STAGE_BOUNDARIES = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

api = FastAPI(
    title="OSEDiff super-resolution",
    version=__version__,
    description="One-step diffusion super-resolution. Send an image, get it upscaled. Errors are JSON "
                '`{"error": "..."}`; a full queue answers 503 with `Retry-After`.',
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@api.exception_handler(OSEDiffError)
async def _project_error(request: Request, err: OSEDiffError) -> JSONResponse:
    status = error_status(err)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": first_line(err)}, status_code=status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # a bug or a failed model run: the client learns only that, the server log has the traceback
    return _error(500, f"internal error ({type(err).__name__}); see the server log")


_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"},
                               **{name: {"type": "string"} for name in PARAMETERS}},
            }},
        },
    },
    "responses": {"200": {"description": "the upscaled image",
                          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
}


# module-level helpers come before the class: Ray Serve pickles the class when it is decorated
async def _parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    """The one file part and the text fields of a multipart body already read under the byte limit."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=len(PARAMETERS))
    except HTTPException as err:  # starlette's own limits and malformed bodies
        raise RequestError(f"malformed multipart body ({err.detail})") from None
    try:
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        if not files:
            raise RequestError("multipart body has no file part (send the image as a file field 'image')")
        data = await files[0].read()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        return data, fields
    finally:
        await form.close()


@serve.deployment
@serve.ingress(api)
class OSEDiffServer:
    """One replica: the model, its batching queue and the HTTP routes."""

    def __init__(self, config: ServeConfig) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.config = config
        self.engine = Engine(config)
        # one model thread: batches run one after another, as serve.batch hands them over
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osediff-model")
        self._infer.set_max_batch_size(config.max_batch_size)
        self._infer.set_batch_wait_timeout_s(config.batch_wait_s)
        self.stage_seconds = Histogram("osediff_stage_seconds", description="seconds per request and stage",
                                       boundaries=STAGE_BOUNDARIES, tag_keys=("stage",))
        self.batch_sizes = Histogram("osediff_batch_size", description="requests per model batch",
                                     boundaries=[1, 2, 4, 8, 16, 32])
        self.refused = Counter("osediff_refused_requests", description="requests refused before the model",
                               tag_keys=("status",))

    # -- probes and information ---------------------------------------------------------------
    @api.get("/healthz", summary="the replica process answers")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded and accepts work")
    async def readyz(self) -> JSONResponse:
        ready = self.engine.pipe is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v1/info", summary="model, weights, device, limits and version")
    async def info(self, request: Request) -> dict:
        self._check_key(request)
        c = self.config
        return {
            "version": __version__,
            "model": {"base": c.base_label, "weights": c.weights_label, "weights_sha256": c.weights_sha256},
            "device": self.engine.device,
            "dtype": self.engine.dtype,
            "prompt_extractors": list(c.extractors),
            "default_prompt_extractor": c.defaults.prompt_extractor,
            "defaults": {"upscale": c.defaults.upscale, "align": c.defaults.align},
            "limits": dataclasses.asdict(c.limits),
            "batching": {"max_batch_size": c.max_batch_size, "batch_wait_ms": round(c.batch_wait_s * 1000, 3)},
            "auth": c.api_key_sha256 is not None,
        }

    # -- the work -----------------------------------------------------------------------------
    @api.post("/v1/upscale", summary="upscale one image", openapi_extra=_BODY_DOC,
              response_class=Response)
    async def upscale(
        self,
        request: Request,
        upscale: str | None = Query(None, description="factor, 1 to the server's max_upscale (default 4)"),
        align: str | None = Query(None, description="colour alignment: adain (default), wavelet or none"),
        prompt: str | None = Query(None, description="text prompt (added after extracted tags)"),
        prompt_extractor: str | None = Query(None, description="one of the extractors in /v1/info"),
        format: str | None = Query(None, description="png (default), jpeg, webp or tiff"),
        quality: str | None = Query(None, description="JPEG/WebP quality 1-100 (default 95)"),
    ) -> Response:
        started = time.perf_counter()
        try:
            job = await self._checked_job(request)
        except RequestError as err:
            self.refused.inc(tags={"status": str(err.status)})
            raise
        result = await self._infer(job)
        if isinstance(result, BaseException):
            raise result
        params = job.params
        body = await asyncio.get_running_loop().run_in_executor(None, encode_image, result.image, params.format,
                                                                params.quality)
        timings = {**result.timings, "total": time.perf_counter() - started}
        for stage, seconds in timings.items():
            self.stage_seconds.observe(seconds, tags={"stage": stage})
        headers = {
            "X-OSEDiff-Prompt": quote(result.prompt, safe=" ,.-_()'"),
            "X-OSEDiff-Size": f"{result.image.width}x{result.image.height}",
            "X-OSEDiff-Batch-Size": str(result.batch_size),
            "X-OSEDiff-Seconds": f"{timings['total']:.4f}",
            "Server-Timing": ", ".join(f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in timings.items()),
        }
        return Response(body, media_type=media_type(params), headers=headers)

    async def _checked_job(self, request: Request) -> Job:
        """Every check, cheapest first; nothing here touches the model."""
        self._check_key(request)
        limits = self.config.limits
        check_content_length(request.headers.get("content-length"), limits)
        values = dict(request.query_params)
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        if not multipart:  # the parameters are all known before the body is read
            parse_params(values, self.config.extractors, limits, self.config.defaults)
        body = await read_limited(request.stream(), limits)
        if multipart:
            data, fields = await _parse_multipart(request, body)
            values.update(fields)
        else:
            data = body
        params = parse_params(values, self.config.extractors, limits, self.config.defaults)
        loaded = await asyncio.get_running_loop().run_in_executor(None, open_checked, data, params, limits)
        return Job(loaded, params)

    def _check_key(self, request: Request) -> None:
        expected = self.config.api_key_sha256
        if expected is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise Unauthorized("an API key is required (header 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")
        # compare digests of equal length in constant time: the key's length leaks nothing either
        if not hmac.compare_digest(hashlib.sha256(given.encode()).hexdigest(), expected):
            raise Unauthorized("wrong API key")

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _infer(self, jobs: list[Job]) -> list[JobResult | BaseException]:
        self.batch_sizes.observe(len(jobs))
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, self.engine.run, jobs)

    def __del__(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)
