"""The middleware of Ray Serve's HTTP proxy and the service's log lines, without Ray: fake ASGI apps
stand in for the proxy's answers (plain-text 503s, a replica that died, a client that hung up)."""

from __future__ import annotations

import asyncio
import json
import logging

from osediff.serve.edge import EdgeMiddleware, EdgeSettings, error_body, proxy_environment
from osediff.serve.logs import JsonFormatter, quiet_serve_logs


def scope(path: str = "/v1/upscale", client: str = "10.0.0.1", request_id: str | None = None) -> dict:
    headers = [(b"host", b"test")] + ([(b"x-request-id", request_id.encode())] if request_id else [])
    return {"type": "http", "method": "POST", "path": path, "headers": headers, "client": (client, 5000)}


def call(middleware: EdgeMiddleware, request_scope: dict, body: bytes = b"abc", *, hang_up: bool = False):
    """The messages the middleware sends for one request."""
    sent: list[dict] = []
    messages = [{"type": "http.disconnect"}] if hang_up else [{"type": "http.request", "body": body}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(middleware(request_scope, receive, send))
    return sent


def answer(sent: list[dict]) -> tuple[int, dict, bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def plain_text(status: int, text: bytes, extra=()):
    async def app(request_scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), *extra]})
        await send({"type": "http.response.body", "body": text[:10], "more_body": True})
        await send({"type": "http.response.body", "body": text[10:]})
    return app


def test_plain_text_errors_of_ray_become_the_json_error_and_close(capsys):
    app = plain_text(503, b"Request dropped due to backpressure", [(b"retry-after", b"1")])
    status, headers, body = answer(call(EdgeMiddleware(app, EdgeSettings()), scope(request_id="abc-1")))
    assert status == 503 and json.loads(body) == {"error": "Request dropped due to backpressure", "request_id": "abc-1"}
    assert headers["content-type"] == "application/json" and headers["content-length"] == str(len(body))
    assert (headers["retry-after"], headers["connection"], headers["x-request-id"]) == ("1", "close", "abc-1")
    # uvicorn's own plain 500, and an empty body: the status's phrase
    status, _, body = answer(call(EdgeMiddleware(plain_text(500, b""), EdgeSettings()), scope(request_id="abc-2")))
    assert status == 500 and json.loads(body)["error"] == "Internal Server Error"


def test_json_and_images_pass_through_untouched():
    async def image(request_scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": b"\x89PNG..."})

    sent = call(EdgeMiddleware(image, EdgeSettings()), scope())
    assert answer(sent) == (200, {"content-type": "image/png"}, b"\x89PNG...")

    async def refusal(request_scope, receive, send):
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error":"big"}'})

    assert answer(call(EdgeMiddleware(refusal, EdgeSettings()), scope()))[2] == b'{"error":"big"}'


def test_a_request_left_unanswered_gets_a_json_503_and_a_client_that_left_nothing(capsys):
    async def died(request_scope, receive, send):  # Ray's proxy when the replica died: no answer at all
        await receive()

    status, headers, body = answer(call(EdgeMiddleware(died, EdgeSettings(log_format="json")), scope()))
    assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["request_id"] == headers["x-request-id"]
    assert call(EdgeMiddleware(died, EdgeSettings(log_format="json")), scope(), hang_up=True) == []
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["status"]) for line in lines] == [("osediff.access", 503), ("osediff.access", 499)]


def test_one_client_holds_at_most_its_share_probes_exempt(capsys):
    release = asyncio.Event()
    calls: list[str] = []

    async def slow(request_scope, receive, send):
        calls.append(request_scope["client"][0])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = EdgeMiddleware(slow, EdgeSettings(max_per_client=2, log_format="json"))

    async def scenario() -> list[int]:
        async def one(request_scope: dict) -> int:
            sent: list[dict] = []

            async def receive():
                return {"type": "http.request", "body": b""}

            async def send(message):
                sent.append(message)

            await middleware(request_scope, receive, send)
            return sent[0]["status"]

        holders = [asyncio.ensure_future(one(scope())) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await one(scope())  # a third from the same address: refused at once
        others = asyncio.ensure_future(one(scope(client="10.0.0.2")))
        probe = asyncio.ensure_future(one(scope("/healthz")))
        await asyncio.sleep(0.05)
        release.set()
        return [refused, *await asyncio.gather(*holders, others, probe)]

    assert asyncio.run(scenario()) == [429, 200, 200, 200, 200]
    assert calls.count("10.0.0.1") == 3 and middleware.open_requests == {}  # the refused one never reached Ray
    access = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert sorted(line["status"] for line in access) == [200, 200, 200, 200, 429]
    assert set(access[0]) >= {"request_id", "client", "method", "path", "status", "bytes_in", "bytes_out", "seconds"}


class Watch:
    """Stands in for a ServiceWatch."""

    def __init__(self, known=True, draining=False, problem=None) -> None:
        self.known, self.draining, self.problem = known, draining, problem

    def readiness(self):
        return self.problem


def test_the_probes_are_answered_at_the_proxy_from_the_watch():
    reached: list[str] = []

    async def app(request_scope, receive, send):
        reached.append(request_scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"from":"ingress"}'})

    def probe(watch, path: str):
        request_scope = {**scope(path, request_id="p-1"), "method": "GET"}
        return answer(call(EdgeMiddleware(app, EdgeSettings(access_log=False), watch=watch), request_scope))

    assert probe(Watch(), "/healthz")[::2] == (200, b'{"status": "ok"}')
    assert probe(Watch(draining=True), "/healthz")[::2] == (200, b'{"status": "draining"}')
    assert probe(Watch(), "/readyz")[::2] == (200, b'{"ready": true}')
    status, headers, body = probe(Watch(problem="no model replica is running (one is starting)"), "/readyz")
    assert (status, headers["retry-after"], headers["x-request-id"]) == (503, "1", "p-1")
    assert json.loads(body) == {"ready": False, "error": "no model replica is running (one is starting)",
                                "request_id": "p-1"}
    assert reached == []
    assert probe(Watch(known=False), "/readyz")[2] == b'{"from":"ingress"}'  # nothing known yet: the ingress answers
    assert probe(None, "/healthz")[2] == b'{"from":"ingress"}' and reached == ["/readyz", "/healthz"]


def test_request_ids_are_kept_when_plain_and_shared_with_the_proxy():
    seen: list[bytes] = []

    async def app(request_scope, receive, send):
        seen.append(dict(request_scope["headers"])[b"x-request-id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = EdgeMiddleware(app, EdgeSettings(access_log=False))
    for given, kept in (("trace.1:a-b", True), ("x" * 200, False), ("a b", False), (None, False)):
        call(middleware, scope(request_id=given))
        assert (seen[-1].decode() == given) is kept and 1 <= len(seen[-1]) <= 128
    assert json.loads(error_body("nope", "id-1")) == {"error": "nope", "request_id": "id-1"}
    env = proxy_environment(EdgeSettings(max_per_client=3))
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "osediff.serve.edge.proxy_middlewares"


def test_routine_serve_warnings_are_dropped_and_json_lines_are_json(capsys):
    quiet_serve_logs()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addHandler(handler)
    try:
        serve_logger.warning("Replica at capacity of max_ongoing_requests=8, rejecting request 123.")
        serve_logger.warning("Replica failed health check.")
    finally:
        serve_logger.removeHandler(handler)
    assert records == ["Replica failed health check."]
    record = logging.LogRecord("osediff.serve", logging.ERROR, "x", 1, "model call failed: %s", ("OOM",), None)
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "osediff.serve", "model call failed: OOM")
