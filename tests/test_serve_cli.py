"""``osediff serve`` as a subprocess: option errors, API key, a full queue's 503s, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from osediff.cli import main
from test_serve import free_port, request
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
    ]
    for extra, message in cases:
        assert main(["serve", *model, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.fixture(scope="module")
def served(tiny_base_dir, tiny_pkl, tmp_path_factory):
    """``osediff serve`` with an API key and a queue of one, in its own process and Ray instance."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OSEDIFF_TEST_KEY": KEY, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osediff", "serve", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
             "--device", "cpu", "--port", str(port), "--api-key-env", "OSEDIFF_TEST_KEY", "--max-batch-size", "1",
             "--max-ongoing-requests", "1", "--max-queued-requests", "1", "--batch-wait-ms", "0"],
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


def test_a_full_queue_answers_503_with_retry_after(served):
    _, port, _ = served
    image, headers = png_bytes(96, 96), {"X-API-Key": KEY}

    def send(_):
        status, out_headers, body = request(port, "POST", "/v1/upscale?upscale=4", image, headers)
        return status, out_headers.get("retry-after"), len(body)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 1, statuses
    assert {retry for status, retry, _ in answers if status == 503} == {"1"}
    assert request(port, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8), headers)[0] == 200  # serving again


def test_sigterm_stops_the_service_cleanly(served):
    proc, port, log = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, log.read_text()[-2000:]
    assert "stopping" in log.read_text()
    with pytest.raises(OSError):
        request(port, "GET", "/healthz")
