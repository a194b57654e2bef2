"""``osediff serve`` as a subprocess: option errors, API key, a full queue's JSON 503s, its log lines
(JSON, one access line per request, nothing routine), and SIGTERM under load: the requests in
flight finish, later ones get a JSON 503, then it stops."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from osediff.cli import main
from test_serve import ALIASES, client, free_port, is_json_error, multipart, request
from test_serve_limits import png_bytes

pytest.importorskip("ray.serve")

KEY = "s3cret-test-key"
START_TIMEOUT = 240  # Ray and the replica start in about a minute on two shared cores


def test_bad_options_fail_in_one_line_before_anything_starts(tiny_base_dir, tiny_pkl, capsys, monkeypatch):
    monkeypatch.delenv("OSEDIFF_NO_SUCH_KEY", raising=False)
    model = ["--base", str(tiny_base_dir), "--weights", str(tiny_pkl), "--device", "cpu"]
    cases = [
        (["--api-key-env", "OSEDIFF_NO_SUCH_KEY"], "--api-key-env OSEDIFF_NO_SUCH_KEY: that environment variable"),
        (["--autoscale", "3:1"], "--autoscale MIN:MAX needs 0 <= MIN <= MAX"),
        (["--max-batch-size", "4", "--max-ongoing-requests", "2"], "--max-ongoing-requests (2) must be at least"),
        (["--weights", str(tiny_base_dir / "missing.pkl")], "missing.pkl"),
        (["--prompt-extractor", "dape", "--offline", "--ram", str(tiny_base_dir / "ram.pth")], "pass --ram"),
        (["--read-timeout-s", "30", "--body-timeout-s", "20"], "--body-timeout-s (20 s) must be at least the read"),
        (["--max-requests-per-client", "-1"], "--max-requests-per-client must be 0 (no cap) or more, got -1"),
    ]
    for extra, message in cases:
        assert main(["serve", *model, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.fixture(scope="module")
def served(tiny_base_dir, tiny_pkl, tmp_path_factory):
    """``osediff serve`` with an API key, a queue of one and JSON logs, in its own process and Ray instance."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OSEDIFF_TEST_KEY": KEY, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osediff", "serve", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
             "--device", "cpu", "--port", str(port), "--api-key-env", "OSEDIFF_TEST_KEY", "--max-batch-size", "1",
             "--max-ongoing-requests", "1", "--max-queued-requests", "1", "--batch-wait-ms", "0",
             "--log-format", "json", "--read-timeout-s", "2", "--body-timeout-s", "4",
             *([] if ALIASES else ["--max-requests-per-client", "0"])],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while "serving on" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "osediff serve did not start in time"
        time.sleep(1)
    yield proc, port, log
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def test_api_key(served):
    _, port, _ = served
    image = png_bytes(8, 8)
    for headers, message in (({}, "an API key is required"), ({"Authorization": "Bearer wrong"}, "wrong API key"),
                             ({"X-API-Key": KEY + "x"}, "wrong API key")):
        status, out_headers, body = request(port, "POST", "/v1/upscale?upscale=2", image, headers)
        assert status == 401 and json.loads(body)["error"].startswith(message)
        assert out_headers["www-authenticate"] == "Bearer"
    assert request(port, "GET", "/v1/info")[0] == 401
    assert request(port, "GET", "/healthz")[0] == 200  # probes stay open
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        status, _, body = request(port, "POST", "/v1/upscale?upscale=2", image, headers)
        assert status == 200, body
    status, _, body = request(port, "GET", "/v1/info", headers={"X-API-Key": KEY})
    assert status == 200 and json.loads(body)["auth"] is True


def test_a_full_queue_answers_json_503_with_retry_after(served):
    _, port, _ = served
    image, headers = png_bytes(96, 96), {"X-API-Key": KEY}

    def send(number: int):
        return request(port, "POST", "/v1/upscale?upscale=4", image, headers, source=client(6, number + 1))

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 1, statuses
    for status, out_headers, body in answers:
        if status == 503:
            assert is_json_error(out_headers, body) and out_headers["retry-after"] == "1", body
            assert json.loads(body)["error"] == "the model's queue is full; retry shortly"
    assert request(port, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8), headers)[0] == 200  # serving again


def ray_session(proc: subprocess.Popen) -> Path:
    """The session folder of the Ray node that ``proc`` started (its raylet's command line names it)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        match = re.search(r"(/\S*?/session_[^/\s]+)/", " ".join(child.cmdline()))
        if match:
            return Path(match.group(1))
    raise AssertionError("no Ray session found")


def test_one_json_access_line_per_request_and_no_routine_noise(served):
    proc, port, log = served
    auth = {"X-API-Key": KEY}
    sent = {}
    for number, (path, body, headers) in enumerate([
            ("/v1/upscale?upscale=2", png_bytes(8, 8), {}),
            ("/v1/upscale?upscale=2", b"not an image", {}),
            ("/v1/upscale", *multipart({"upscale": "2"}, None)),
            ("/v1/upscale", b"--xx\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=yy"})]):
        status, out_headers, _ = request(port, "POST", path, body, {**auth, **headers, "X-Request-ID": f"log-{number}"})
        sent[out_headers["x-request-id"]] = status
    # a client that hangs up in the middle of its upload
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: t\r\nX-API-Key: " + KEY.encode() +
                 b"\r\nX-Request-ID: log-gone\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    time.sleep(0.5)
    sock.close()
    sent["log-gone"] = 499
    assert sent == {"log-0": 200, "log-1": 400, "log-2": 400, "log-3": 400, "log-gone": 499}
    time.sleep(3)  # lines reach the driver within a second or so
    console = log.read_text()
    ours = [json.loads(line) for line in console.splitlines() if line.startswith("{")]
    access = [line for line in ours if line["logger"] == "osediff.access"]
    for request_id, status in sent.items():
        lines = [line for line in access if line["request_id"] == request_id]
        assert [(line["status"], line["path"]) for line in lines] == [(status, "/v1/upscale")], lines
    assert {"client", "method", "bytes_in", "bytes_out", "seconds"} <= set(access[0])
    assert any(line["message"].startswith("serving on") for line in ours)
    # nothing routine anywhere, on the console or in Ray Serve's own log files (the full queue above
    # made Serve's routers retry, which Serve logs as a warning per retry)
    serve_logs = "".join(path.read_text(errors="replace") for path in (ray_session(proc) / "logs" / "serve").glob("*"))
    for text in (console, serve_logs):
        for noise in ("Traceback", "ClientDisconnect", "Replica at capacity", "Expected boundary character"):
            assert noise not in text, noise


def test_sigterm_lets_requests_in_flight_finish_then_stops(served):
    proc, port, log = served
    image, auth = png_bytes(128, 128), {"X-API-Key": KEY}

    def send(number: int, delay: float = 0.0):
        time.sleep(delay)
        try:
            return request(port, "POST", "/v1/upscale?upscale=4", image, auth, source=client(7, number + 1))
        except OSError as err:  # only acceptable for requests sent after the service stopped listening
            return err

    with ThreadPoolExecutor(6) as pool:
        in_flight = [pool.submit(send, number) for number in range(3)]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        during_drain = [pool.submit(send, 10 + number, 0.3) for number in range(2)]
        answers = [future.result() for future in in_flight]
        late = [future.result() for future in during_drain]
    for answer in answers:  # every request in flight was answered in full: its image (or a full queue's 503)
        assert not isinstance(answer, Exception), answer
        status, headers, body = answer
        assert status == 200 or (status == 503 and is_json_error(headers, body)), body
    assert any(answer[0] == 200 for answer in answers)
    for answer in late:
        if isinstance(answer, ConnectionRefusedError):  # the drain was over already
            continue
        status, headers, body = answer
        assert status == 503 and is_json_error(headers, body) and headers["connection"] == "close", answer
        assert json.loads(body)["error"].startswith("the service is shutting down")
    assert proc.wait(90) == 0, log.read_text()[-2000:]
    assert "drained in" in log.read_text()
    with pytest.raises(OSError):
        request(port, "GET", "/healthz")
