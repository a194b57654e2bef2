"""The service's HTTP edge: its timeouts and caps, request ids, the JSON error shape, and the
middleware that Ray Serve's HTTP proxy runs in front of every request.

The proxy (uvicorn) parses a request's headers and hands it to an ingress replica at once; the
ingress reads the body under :class:`EdgeSettings`' deadlines. This module's
:class:`EdgeMiddleware` runs inside the proxy process, before any replica sees the request, and is
installed through Ray Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (see
:func:`proxy_environment`). It

- caps the requests one client address has open at once (429, the body left unread, the
  connection closed), so one client cannot take every ingress slot;
- gives every request an id (the client's ``X-Request-ID`` when it is sane, else a new one) that
  the replicas, the answer's header and the access log share;
- turns whatever Ray or uvicorn would answer in plain text (a full ingress queue, a proxy timeout,
  a replica that died mid-request) into the service's JSON error, and closes that connection;
- writes one access line per request: id, client, method, path, status, bytes in and out, seconds.

No Ray import here: the module is loaded by the proxy before anything else of osediff.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from http import HTTPStatus

from ..errors import OptionError
from .logs import LOG_FORMATS, osediff_logger, quiet_serve_logs

REQUEST_ID_HEADER = "x-request-id"
SETTINGS_ENV = "OSEDIFF_SERVE_EDGE"
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "osediff.serve.edge.proxy_middlewares"
TOPOLOGY_ENV = "OSEDIFF_SERVE_TOPOLOGY"
PROBES = ("/healthz", "/readyz")  # never capped: a load balancer's probes come from one address
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class EdgeError(OptionError):
    """An edge setting that cannot work; ``argument`` names it."""


@dataclass(frozen=True)
class EdgeSettings:
    """How long a client may take and how much of the service it may hold.

    ``read_timeout_s``: the longest pause inside a request body; ``body_timeout_s``: the whole body;
    ``request_timeout_s``: the whole request, body and model (504 after it); ``keep_alive_s``: an idle
    connection between requests; ``max_per_client``: requests one client address has open at once
    (0: no cap); ``grace_s``: what requests in flight get after SIGTERM.
    """

    read_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    request_timeout_s: float = 600.0
    keep_alive_s: int = 5
    max_per_client: int = 8
    grace_s: float = 30.0
    log_format: str = "text"
    access_log: bool = True

    def __post_init__(self) -> None:
        for name in ("read_timeout_s", "body_timeout_s", "request_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise EdgeError(f"must be a number of seconds above 0, got {value!r}", argument=name)
        if self.grace_s < 0 or not math.isfinite(self.grace_s):
            raise EdgeError(f"must be 0 or more seconds, got {self.grace_s!r}", argument="grace_s")
        if self.max_per_client < 0:
            raise EdgeError(f"must be 0 (no cap) or more, got {self.max_per_client}", argument="max_per_client")
        if self.body_timeout_s < self.read_timeout_s:
            raise EdgeError(f"({self.body_timeout_s:g} s) must be at least the read timeout "
                            f"({self.read_timeout_s:g} s)", argument="body_timeout_s")
        if self.request_timeout_s < self.body_timeout_s:
            raise EdgeError(f"({self.request_timeout_s:g} s) must be at least the body timeout "
                            f"({self.body_timeout_s:g} s)", argument="request_timeout_s")
        if self.log_format not in LOG_FORMATS:
            raise EdgeError(f"must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}",
                            argument="log_format")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> EdgeSettings:
        text = os.environ.get(SETTINGS_ENV)
        return cls(**json.loads(text)) if text else cls()


@dataclass(frozen=True)
class Topology:
    """The names the proxy's middleware and the replicas look for: the Serve application, its two
    deployments, the drain control actor; and whether the model may scale to zero replicas."""

    app: str = "osediff"
    model: str = "OSEDiffModel"
    ingress: str = "OSEDiffIngress"
    control: str = "osediff-control"
    namespace: str = "osediff"
    scales_to_zero: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Topology:
        text = os.environ.get(TOPOLOGY_ENV)
        return cls(**json.loads(text)) if text else cls()


def proxy_environment(settings: EdgeSettings, topology: Topology | None = None) -> dict[str, str]:
    """What a local Ray node must inherit so that its HTTP proxy runs :class:`EdgeMiddleware`
    with ``settings`` (set before ``ray.init``; a cluster's nodes need the same variables)."""
    return {CALLBACK_ENV: CALLBACK, SETTINGS_ENV: settings.to_json(), TOPOLOGY_ENV: (topology or Topology()).to_json()}


def proxy_middlewares() -> list:
    """Ray Serve's proxy callback: the middlewares its HTTP proxy runs, answering the probes from a
    :class:`~osediff.serve.control.ServiceWatch` of its own."""
    from starlette.middleware import Middleware

    from .control import ServiceWatch

    watch = ServiceWatch(Topology.from_env())
    watch.start()
    return [Middleware(EdgeMiddleware, settings=EdgeSettings.from_env(), watch=watch)]


def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str | None:
    """The client's id if it is short and plain (it goes into logs and headers), else None."""
    return value if value is not None and _SANE_ID.fullmatch(value) else None


def error_body(message: str, request_id: str | None) -> bytes:
    """The one JSON shape of every refusal and failure."""
    return json.dumps({"error": message, "request_id": request_id}, ensure_ascii=False).encode()


def _header(headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class _Exchange:
    """What the middleware learns about one request and its answer as they pass through."""

    def __init__(self, request_id: str, send, receive) -> None:
        self.request_id = request_id
        self._send, self._receive = send, receive
        self.status: int | None = None  # once the answer has started
        self.bytes_in = self.bytes_out = 0
        self.disconnected = False
        self._held: dict | None = None  # a non-JSON error's start, while its body is collected
        self._held_body = bytearray()

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self.bytes_in += len(message.get("body", b""))
        elif message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def send(self, message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            content_type = _header(message.get("headers", []), b"content-type") or b""
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self._held = message  # Ray's or uvicorn's plain text: answered as JSON below
                return
            self.status = message["status"]
        elif kind == "http.response.body" and self._held is not None:
            self._held_body += message.get("body", b"")
            if not message.get("more_body", False):
                held, self._held = self._held, None
                text = self._held_body.decode("utf-8", "replace").strip()
                keep = [(k, v) for k, v in held.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length", b"connection", b"x-request-id")]
                await self.answer(held["status"], text or HTTPStatus(held["status"]).phrase, headers=keep)
            return
        elif kind == "http.response.body":
            self.bytes_out += len(message.get("body", b""))
        await self._send(message)

    async def answer(self, status: int, message: str, *, headers=(), retry_after: float | None = None) -> None:
        """A JSON error of our own; the connection is closed after it (its body may be unread)."""
        await self._answer(status, error_body(message, self.request_id), [*headers, (b"connection", b"close")],
                           retry_after)

    async def answer_json(self, status: int, payload: dict, *, retry_after: float | None = None) -> None:
        """A probe's answer (a GET: nothing unread, the connection stays open)."""
        await self._answer(status, json.dumps(payload).encode(), [], retry_after)

    async def _answer(self, status: int, body: bytes, headers, retry_after: float | None) -> None:
        extra = [(b"retry-after", str(math.ceil(retry_after)).encode())] if retry_after is not None else []
        await self._send({"type": "http.response.start", "status": status, "headers": [
            *headers, *extra, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self.request_id.encode())]})
        await self._send({"type": "http.response.body", "body": body})
        self.status, self.bytes_out = status, len(body)

    @property
    def started(self) -> bool:
        return self.status is not None or self._held is not None


class EdgeMiddleware:
    """ASGI middleware of Ray Serve's HTTP proxy (see the module's docstring)."""

    def __init__(self, app, settings: EdgeSettings | None = None, watch=None) -> None:
        self.app = app
        self.settings = settings or EdgeSettings()
        self.watch = watch  # a ServiceWatch: the probes are answered here, without a hop to a replica
        self.open_requests: Counter[str] = Counter()
        quiet_serve_logs()  # the proxy's router to the ingress logs the same routine warnings
        self.log = osediff_logger("osediff.serve", self.settings.log_format)
        self.access = osediff_logger("osediff.access", self.settings.log_format) if self.settings.access_log else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self._request_id(scope)
        exchange = _Exchange(request_id, send, receive)
        client = (scope.get("client") or ("-", 0))[0]
        cap = self.settings.max_per_client if scope.get("path") not in PROBES else 0
        if scope.get("path") in PROBES and scope.get("method") in ("GET", "HEAD") and self.watch is not None \
                and self.watch.known:
            await self._probe(scope["path"], exchange)
        elif cap and self.open_requests[client] >= cap:
            await exchange.answer(429, f"too many requests at once from {client} (at most {cap}); retry later",
                                  retry_after=1)
        else:
            self.open_requests[client] += 1
            try:
                await self.app(scope, exchange.receive, exchange.send)
            except Exception:  # Ray's proxy answers its own failures; this is a bug to report
                self.log.exception("the HTTP proxy failed on request %s", request_id)
            finally:
                self.open_requests[client] -= 1
                if self.open_requests[client] <= 0:
                    del self.open_requests[client]
            if not exchange.started and not exchange.disconnected:
                # the replica holding the request died (Ray answers nothing, uvicorn plain text)
                await exchange.answer(503, "the request was lost by a replica that stopped; retry", retry_after=1)
        if self.access is not None:
            self._access_line(scope, client, exchange, time.perf_counter() - started)

    async def _probe(self, path: str, exchange: _Exchange) -> None:
        """``/healthz``: this front answers; ``/readyz``: an ingress and a model replica run and the
        service is not draining (as :class:`ServiceWatch` last saw it)."""
        if path == "/healthz":
            await exchange.answer_json(200, {"status": "draining" if self.watch.draining else "ok"})
            return
        problem = self.watch.readiness()
        if problem is None:
            await exchange.answer_json(200, {"ready": True})
        else:
            await exchange.answer_json(503, {"ready": False, "error": problem, "request_id": exchange.request_id},
                                       retry_after=1)

    @staticmethod
    def _request_id(scope) -> str:
        """The request's id, written into its headers for Ray's proxy and the replicas to reuse."""
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
        given = _header(scope.get("headers", []), REQUEST_ID_HEADER.encode())
        request_id = sane_request_id(given.decode("latin-1") if given is not None else None) or new_request_id()
        scope["headers"] = [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]
        return request_id

    def _access_line(self, scope, client: str, exchange: _Exchange, seconds: float) -> None:
        status = 499 if exchange.status is None else exchange.status  # 499: the client hung up first
        fields = {"request_id": exchange.request_id, "client": client, "method": scope.get("method", ""),
                  "path": scope.get("path", ""), "status": status, "bytes_in": exchange.bytes_in,
                  "bytes_out": exchange.bytes_out, "seconds": round(seconds, 4)}
        self.access.info("%s %s %s %s %d %dB %.3fs in=%dB", fields["request_id"], client, fields["method"],
                         fields["path"], status, exchange.bytes_out, seconds, exchange.bytes_in,
                         extra={"fields": fields})
