"""The ingress deployment: a light FastAPI replica that owns everything HTTP.

Ray Serve's proxy hands a request to an ingress replica as soon as its headers are parsed, so
slow and bad clients are met here, on slots that cost nothing but a coroutine: the body is read
under a pause timeout, a whole-body deadline and the byte cap; the key, the parameters, the image
header and the decoding are checked. Only a request that passed every check goes to the model
deployment, through its handle. Every refusal and failure is JSON ``{"error": ..., "request_id":
...}``; one whose body was not read to the end also closes its connection, so the proxy stops
reading an upload that nobody will use. ``/healthz`` and ``/readyz`` are answered by the proxy's
middleware (:mod:`.edge`); the routes here answer them where that middleware is not installed.
"""

# no `from __future__ import annotations`: FastAPI must see the routes' annotations as objects
import asyncio
import dataclasses
import hashlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import OSEDiffError
from ..fileio import first_line
from ..outputs import encode_image
from .body import BODY_DOC, body_chunks, parse_multipart
from .edge import REQUEST_ID_HEADER, EdgeSettings, new_request_id, sane_request_id
from .engine import Job, JobResult, ServeConfig
from .limits import (
    PARAMETERS,
    ClientGone,
    NoResult,
    RequestError,
    Unauthorized,
    Unavailable,
    check_content_length,
    error_status,
    media_type,
    open_checked,
    parse_params,
    read_limited,
)
from .logs import osediff_logger, quiet_serve_logs
from .model import JobFailure

STAGE_BOUNDARIES = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
MODEL_POLL_S = 1.0  # how often each ingress replica asks Serve how many model replicas run

api = FastAPI(
    title="OSEDiff super-resolution",
    version=__version__,
    description="One-step diffusion super-resolution. Send an image, get it upscaled. Every refusal and "
                'failure is JSON `{"error": "...", "request_id": "..."}` (the id is also the `X-Request-ID` '
                "header); 503 and 429 come with `Retry-After`.",
)


def request_id(request: Request) -> str:
    """The id the proxy gave the request (kept in its headers), or a new one without the proxy's help."""
    found = sane_request_id(request.headers.get(REQUEST_ID_HEADER))
    if found is None:
        found = getattr(request.state, "request_id", None) or new_request_id()
        request.state.request_id = found
    return found


def error_response(request: Request, status: int, message: str, *, retry_after: float | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """The JSON error; the connection is closed when the request's body was not read to its end."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    if not getattr(request.state, "body_read", True):
        headers["Connection"] = "close"
    return JSONResponse({"error": message, "request_id": request_id(request)}, status_code=status, headers=headers)


@api.exception_handler(OSEDiffError)
async def _project_error(request: Request, err: OSEDiffError) -> JSONResponse:
    status = error_status(err)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(request, status, first_line(err), retry_after=getattr(err, "retry_after", None),
                          headers=headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return error_response(request, 422, f"{where}: {first.get('msg', 'invalid request')}")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return error_response(request, err.status_code, str(err.detail), headers=err.headers)


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # a bug: the client learns only that, the server log has the traceback
    logging.getLogger("osediff.serve").error("request %s failed", request_id(request), exc_info=err)
    return error_response(request, 500, f"internal error ({type(err).__name__}); see the server log")


async def _awaited(response):
    return await response


@serve.deployment
@serve.ingress(api)
class OSEDiffIngress:
    """One ingress replica: HTTP, checks and limits; the model is ``model``, a deployment handle."""

    def __init__(self, config: ServeConfig, model, edge: EdgeSettings | None = None, control=None,
                 model_name: str = "OSEDiffModel", scales_to_zero: bool = False) -> None:
        from ray.serve.metrics import Counter, Histogram

        quiet_serve_logs()
        self.config = config
        self.edge = edge or EdgeSettings()
        self.log = osediff_logger("osediff.serve", self.edge.log_format)
        self.upscale_handle = model.options(method_name="upscale")
        self.describe_handle = model.options(method_name="describe")
        self.model_name = model_name
        self.model_info: dict | None = None
        self.model_replicas: int | None = None  # running, as Serve last said; None: not asked yet
        self.scales_to_zero = scales_to_zero  # autoscaling from 0: no replica is no fault, a request starts one
        self.in_flight = 0
        self.draining = False
        # decoding and encoding happen here, off the event loop and off the model's replicas
        self.image_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="osediff-image")
        self.stage_seconds = Histogram("osediff_stage_seconds", description="seconds per request and stage",
                                       boundaries=STAGE_BOUNDARIES, tag_keys=("stage",))
        self.refused = Counter("osediff_refused_requests", description="requests refused before the model",
                               tag_keys=("status",))
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._watch_model())]
        if control is not None:
            self.tasks += [loop.create_task(self._watch_drain(control)), loop.create_task(self._report(control))]

    # -- background: the model's replicas and the drain ------------------------------------------
    def _no_model(self) -> bool:
        return self.model_replicas == 0 and not self.scales_to_zero

    async def _watch_model(self) -> None:
        app = serve.get_replica_context().app_name
        while True:
            try:
                status = await asyncio.get_running_loop().run_in_executor(None, serve.status)
                states = status.applications[app].deployments[self.model_name].replica_states
                self.model_replicas = sum(count for state, count in states.items() if str(state).endswith("RUNNING"))
            except Exception:  # the controller is busy or restarting: keep the last answer
                pass
            await asyncio.sleep(MODEL_POLL_S)

    async def _watch_drain(self, control) -> None:
        try:
            await control.wait_for_drain.remote()
        except Exception:  # the driver is gone: nobody will ask us to drain
            return
        self.draining = True

    async def _report(self, control) -> None:
        replica = serve.get_replica_context().replica_id.unique_id
        while True:
            try:
                await control.report.remote(replica, self.in_flight, self.draining)
            except Exception:  # a busy or lost control: try again (the drain treats silence as gone)
                await asyncio.sleep(1.0)
            await asyncio.sleep(0.1 if self.draining else 0.5)

    @contextmanager
    def _counted(self):
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _refuse_while_draining(self) -> None:
        if self.draining:
            raise Unavailable("the service is shutting down; send the request again (to another instance)")

    # -- probes and information ---------------------------------------------------------------
    @api.get("/healthz", summary="the service answers (also while it drains)")
    async def healthz(self) -> dict:
        return {"status": "draining" if self.draining else "ok"}

    @api.get("/readyz", summary="a model replica runs and the service takes requests")
    async def readyz(self, request: Request) -> JSONResponse:
        if self.draining:
            problem = "the service is shutting down"
        elif self._no_model():
            problem = "no model replica is running (one is starting)"
        else:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": problem, "request_id": request_id(request)}, status_code=503,
                            headers={"Retry-After": "1"})

    @api.get("/v1/info", summary="model, weights, device, limits and version")
    async def info(self, request: Request) -> dict:
        self._check_key(request)
        self._refuse_while_draining()
        with self._counted():
            if self.model_info is None:
                self.model_info = await self._call_model(self.describe_handle.remote(), time.monotonic() + 30)
        c = self.config
        return {
            "version": __version__,
            "model": {"base": c.base_label, "weights": c.weights_label, "weights_sha256": c.weights_sha256},
            "device": self.model_info["device"],
            "dtype": self.model_info["dtype"],
            "prompt_extractors": list(c.extractors),
            "default_prompt_extractor": c.defaults.prompt_extractor,
            "defaults": {"upscale": c.defaults.upscale, "align": c.defaults.align,
                         "strength": c.defaults.strength, "guidance": c.defaults.guidance},
            "parameters": list(PARAMETERS),
            "limits": dataclasses.asdict(c.limits),
            "batching": {"max_batch_size": c.max_batch_size, "batch_wait_ms": round(c.batch_wait_s * 1000, 3)},
            "timeouts": {"read_s": self.edge.read_timeout_s, "body_s": self.edge.body_timeout_s,
                         "request_s": self.edge.request_timeout_s},
            "auth": c.api_key_sha256 is not None,
        }

    # -- the work -----------------------------------------------------------------------------
    @api.post("/v1/upscale", summary="upscale one image", openapi_extra=BODY_DOC,
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
        strength: str | None = Query(None, description="0 (the input) to 1 (the model's output, default)"),
        guidance: str | None = Query(None, description="prompt weight against negative_prompt (default 1: "
                                                       "the prompt alone)"),
        negative_prompt: str | None = Query(None, description="what guidance steers away from"),
    ) -> Response:
        started = time.monotonic()
        request.state.body_read = False
        with self._counted():
            try:
                self._refuse_while_draining()
                job = await self._checked_job(request, started)
            except OSEDiffError as err:  # every refusal before the model, whatever raised it
                if error_status(err) != ClientGone.status:
                    self.refused.inc(tags={"status": str(error_status(err))})
                raise
            result = await self._call_model(self.upscale_handle.remote(job), started + self.edge.request_timeout_s)
            if isinstance(result, JobFailure):
                raise RequestError(result.message, status=result.status)
            return await self._answer(job, result, started)

    async def _checked_job(self, request: Request, started: float) -> Job:
        """Every check, cheapest first; nothing here touches the model."""
        self._check_key(request)
        limits = self.config.limits
        check_content_length(request.headers.get("content-length"), limits)
        values = dict(request.query_params)
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        if not multipart:  # the parameters are all known before the body is read
            parse_params(values, self.config.extractors, limits, self.config.defaults)
        body = await read_limited(body_chunks(request), limits, pause_s=self.edge.read_timeout_s,
                                  deadline=started + self.edge.body_timeout_s)
        request.state.body_read = True
        if multipart:
            data, fields = await parse_multipart(request, body)
            values.update(fields)
        else:
            data = body
        params = parse_params(values, self.config.extractors, limits, self.config.defaults)
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(self.image_threads, open_checked, data, params, limits)
        return Job(loaded, params)

    async def _call_model(self, response, deadline: float):
        """The model's answer; a JSON 503 when its queue is full, its replica died or none has run for two
        looks at Serve's status (the handle would wait for one), 504 at ``deadline``. A request whose
        client hung up is cancelled at the model too."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        task = asyncio.ensure_future(_awaited(response))
        down_since = None
        try:
            while not task.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoResult("no result in time: the model is overloaded; retry later")
                await asyncio.wait({task}, timeout=min(MODEL_POLL_S, left))
                if task.done() or not self._no_model():
                    down_since = None
                elif down_since is None:
                    down_since = time.monotonic()
                elif time.monotonic() - down_since > 2 * MODEL_POLL_S:
                    raise Unavailable("no model replica is running (one is starting); retry shortly", retry_after=5)
            return task.result()
        except BackPressureError:
            raise Unavailable("the model's queue is full; retry shortly") from None
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as err:
            self.log.warning("a model replica stopped while running a request: %s", first_line(err))
            raise Unavailable("the model replica running this request stopped; retry") from None
        finally:
            if not task.done():
                task.cancel()
                response.cancel()

    async def _answer(self, job: Job, result: JobResult, started: float) -> Response:
        params = job.params
        body = await asyncio.get_running_loop().run_in_executor(self.image_threads, encode_image, result.image,
                                                                params.format, params.quality)
        timings = {**result.timings, "total": time.monotonic() - started}
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

    def __del__(self) -> None:
        for task in getattr(self, "tasks", []):
            task.cancel()
        self.image_threads.shutdown(wait=False, cancel_futures=True)
