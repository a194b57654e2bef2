"""The HTTP service on a real Ray Serve (one module-scoped server, tiny model, loopback only).

Round trip against ``osediff upscale``, every bad-input class, 16 concurrent clients; hostile
clients over raw sockets (slow uploads, slow headers, short and huge bodies, one client holding
many requests); refusals counted; a model replica that dies. Clients that must count as
different clients bind their own loopback address (127.0.x.y).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import socket
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from osediff.cli import main
from test_serve_limits import declared_size_png, png_bytes

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

MAX_BYTES = 64 * 1024
TIMEOUT = 120  # seconds for any one request: nothing may hang
QUICK = 5  # seconds for an answer that must not wait behind anything (probes, refusals)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_aliases() -> bool:
    """Whether all of 127/8 reaches loopback (Linux; macOS has 127.0.0.1 alone)."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.1.1", 0))
        return True
    except OSError:
        return False


ALIASES = _loopback_aliases()


def client(group: int, number: int) -> str:
    """The loopback address of client ``number`` of ``group``: each its own where 127/8 allows."""
    return f"127.0.{group}.{number}" if ALIASES else "127.0.0.1"


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, *, source: str | None = None,
            timeout: float = TIMEOUT):
    """(status, headers, body) over loopback from ``source`` (an address of 127/8); ``body`` is bytes,
    or a list of chunks sent without a length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    chunked = isinstance(body, list)
    try:
        conn.request(method, path, body=iter(body) if chunked else body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def multipart(fields: dict[str, str], image: bytes | None) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def is_json_error(headers: dict, body: bytes) -> bool:
    """The service's one error shape, its id also in the X-Request-ID header."""
    if headers.get("content-type") != "application/json":
        return False
    answer, request_id = json.loads(body), headers.get("x-request-id")
    return request_id is not None and isinstance(answer.get("error"), str) and answer.get("request_id") == request_id


# without loopback aliases every test client shares one address: no per-client cap then
EDGE_TIMEOUTS = {"read_timeout_s": 2.0, "body_timeout_s": 4.0, "request_timeout_s": 120.0,
                 "max_per_client": 4 if ALIASES else 0}


@dataclass(frozen=True)
class Served:
    port: int
    metrics_port: int


@pytest.fixture(scope="module")
def service(tiny_base_dir, tiny_pkl):
    from osediff.cli.serve import LOCAL_PROXY_TIMEOUTS
    from osediff.limits import RequestLimits
    from osediff.model_files import ModelOptions
    from osediff.serve.app import Scaling, start, topology
    from osediff.serve.edge import EdgeSettings, proxy_environment
    from osediff.serve.engine import ServeConfig

    port, metrics_port = free_port(), free_port()
    edge, scaling = EdgeSettings(**EDGE_TIMEOUTS), Scaling(replica_cpus=1, max_queued_requests=64)
    # as `osediff serve` starts its local node; metrics exported every second instead of ten
    env = {**LOCAL_PROXY_TIMEOUTS, **proxy_environment(edge, topology(scaling)),
           "RAY_metrics_report_interval_ms": "1000"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _metrics_export_port=metrics_port)
    try:
        model = ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl), device="cpu", offline=True)
        config = ServeConfig.find(model, threads=1,
                                  limits=RequestLimits(max_bytes=MAX_BYTES, max_pixels=256 * 256,
                                                       max_output_pixels=512 * 512, max_upscale=8),
                                  max_batch_size=4, batch_wait_s=0.05, base_label="tiny", weights_label="osediff.pkl")
        start(config, scaling, edge, host="127.0.0.1", port=port, log_level="ERROR")
        deadline = time.monotonic() + 30  # as a load balancer would: until the front has seen the replicas run
        while request(port, "GET", "/readyz", timeout=QUICK)[0] != 200:
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.2)
        yield Served(port, metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def server(service) -> int:
    return service.port


def decode(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        return img


def test_probes_info_and_docs(server, tiny_pkl):
    status, headers, body = request(server, "GET", "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"}) and len(headers["x-request-id"]) == 32
    status, _, body = request(server, "GET", "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, headers, _ = request(server, "GET", "/healthz", headers={"X-Request-ID": "trace-7.a"})
    assert headers["x-request-id"] == "trace-7.a"  # a client's own id is kept when it is plain
    status, headers, _ = request(server, "GET", "/healthz", headers={"X-Request-ID": "x" * 500})
    assert len(headers["x-request-id"]) == 32  # and replaced when it is not
    status, _, body = request(server, "GET", "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["model"]["weights_sha256"] == hashlib.sha256(tiny_pkl.read_bytes()).hexdigest()
    assert info["limits"]["max_bytes"] == MAX_BYTES and info["prompt_extractors"] == ["text", "none"]
    assert {"strength", "guidance", "negative_prompt"} <= set(info["parameters"])
    assert (info["defaults"]["strength"], info["defaults"]["guidance"]) == (1.0, 1.0)
    status, _, body = request(server, "GET", "/openapi.json")
    assert status == 200 and "/v1/upscale" in json.loads(body)["paths"]
    assert request(server, "GET", "/docs")[0] == 200


FIDELITY_FLAGS = ["--strength", "0.5", "--guidance", "2", "--negative-prompt", "blurry"]


@pytest.mark.parametrize(("mode", "flags", "query"), [
    ("RGB", [], ""),
    ("RGBA", [], ""),
    ("RGB", FIDELITY_FLAGS, "&strength=0.5&guidance=2&negative_prompt=blurry"),
])
def test_served_png_equals_the_cli_output(server, tiny_base_dir, tiny_pkl, tmp_path, mode, flags, query,
                                          single_thread):
    # the replica runs torch on one thread (threads=1); so must the CLI here, or float sums split over
    # two threads may round a pixel the other way
    data = png_bytes(24, 18, mode, seed=3)
    (tmp_path / "in.png").write_bytes(data)
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-s", "2.5", "--prompt",
                 "a photo", "--align", "wavelet", "--prompt-extractor", "text", "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--device", "cpu", *flags]) == 0
    expected = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    status, headers, body = request(server, "POST", "/v1/upscale?upscale=2.5&align=wavelet&prompt=a%20photo" + query,
                                    data, {"Content-Type": "image/png"})
    assert status == 200, body
    assert headers["content-type"] == "image/png" and headers["x-osediff-prompt"] == "a photo"
    assert headers["x-osediff-size"] == "60x45" and "unet;dur=" in headers["server-timing"]
    served = np.asarray(decode(body))
    assert served.shape == expected.shape == ((45, 60, 4) if mode == "RGBA" else (45, 60, 3))
    assert np.array_equal(served, expected)


def test_multipart_and_output_formats(server):
    for fmt, media in (("jpeg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")):
        body, headers = multipart({"upscale": "2", "format": fmt, "quality": "80", "prompt": "é"}, png_bytes(16, 8))
        status, out_headers, out = request(server, "POST", "/v1/upscale", body, headers)
        assert status == 200, out
        assert out_headers["content-type"] == media and decode(out).size == (32, 16)
        assert out_headers["x-osediff-prompt"] == "%C3%A9"  # percent-encoded UTF-8: headers are latin-1


BAD = [  # (path, body, headers, status, start of the error message)
    ("/v1/upscale?upscale=2", b"not an image at all", {}, 400, "the upload is not an image"),
    ("/v1/upscale?upscale=2", png_bytes(40, 40)[:200], {}, 400, "upload: cannot decode image"),
    ("/v1/upscale?upscale=2", b"", {}, 400, "no image in the request body"),
    ("/v1/upscale?upscale=2", b"x" * (MAX_BYTES + 1), {}, 413, f"request body is {MAX_BYTES + 1} bytes"),
    ("/v1/upscale?upscale=2", [b"x" * 8192] * 16, {}, 413, f"request body exceeds {MAX_BYTES} bytes"),
    ("/v1/upscale?upscale=1", declared_size_png(13000, 13000), {}, 413, "the image is 13000x13000"),
    ("/v1/upscale?upscale=8", png_bytes(100, 100), {}, 413, "x8 of 100x100 would be 800x800"),
    ("/v1/upscale?upscale=9", png_bytes(8, 8), {}, 422, "upscale must be between 1 and 8"),
    ("/v1/upscale?align=colour", png_bytes(8, 8), {}, 422, "align must be one of adain, wavelet, none, got 'colour'"),
    ("/v1/upscale?prompt_extractor=dape", png_bytes(8, 8), {}, 422, "prompt_extractor 'dape' is not loaded"),
    ("/v1/upscale?format=gif", png_bytes(8, 8), {}, 422, "format must be one of png, jpeg, webp, tiff (or jpg)"),
    ("/v1/upscale", *multipart({"upscale": "2"}, None), 400, "multipart body has no file part"),
    ("/v1/upscale", *multipart({"upscale": "0"}, png_bytes(8, 8)), 422, "upscale must be between 1 and 8"),
]


def test_every_bad_input_gets_its_status_and_the_server_keeps_serving(server):
    for path, body, headers, status, message in BAD:
        got, out_headers, out = request(server, "POST", path, body, headers)
        assert got == status and is_json_error(out_headers, out), (path, out)
        assert json.loads(out)["error"].startswith(message), (path, out)
    status, _, out = request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8))
    assert status == 200 and decode(out).size == (16, 16)


def test_sixteen_clients_four_requests_each_good_and_bad_mixed(server):
    def one_client(number: int) -> list[tuple[int, int, object]]:
        answers, source = [], client(1, number + 1)  # each client its own address
        for i in range(4):
            if (number + i) % 3 == 0:  # bad: each class in turn
                path, body, headers, status, message = BAD[(number * 4 + i) % len(BAD)]
                got, _, out = request(server, "POST", path, body, headers, source=source)
                answers.append((got, status, json.loads(out)["error"].startswith(message)))
            else:  # good: two sizes, two factors, so batches mix groups
                width, scale = (16, 2) if i % 2 else (12, 3)
                got, _, out = request(server, "POST", f"/v1/upscale?upscale={scale}&prompt=c{number}",
                                      png_bytes(width, 8, seed=number), source=source)
                answers.append((got, 200, got == 200 and decode(out).size == (width * scale, 8 * scale)))
        return answers

    with ThreadPoolExecutor(16) as pool:
        answers = [answer for result in pool.map(one_client, range(16)) for answer in result]
    assert len(answers) == 64
    assert [(got, ok) for got, _, ok in answers] == [(expected, True) for _, expected, _ in answers]


# -- hostile clients, over raw sockets ------------------------------------------------------------
def open_upload(port: int, *, declared: int = 100, sent: int = 10, source: str = "127.0.0.1") -> socket.socket:
    """A POST whose headers announce ``declared`` body bytes, of which only ``sent`` are sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=QUICK, source_address=(source, 0))
    sock.sendall(f"POST /v1/upscale?upscale=2 HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + b"x" * sent)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict, bytes, bool]:
    """(status, headers, body, closed): the answer on a raw socket, and whether the server then closed
    the connection (rather than keep reading what the client still sends)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:  # closed with our unread bytes still in its buffer
        closed = True
    except TimeoutError:
        closed = False
    return int(lines[0].split()[1]), headers, body, closed


def test_slow_clients_hold_no_model_slot_and_are_cut_off(server):
    # more stalled uploads than the model replica has slots (8), each from its own address, and
    # connections that never finish their headers; meanwhile probes and good requests are served
    uploads = [open_upload(server, source=client(2, i)) for i in range(1, 13)]
    half_headers = []
    for i in range(5):
        sock = socket.create_connection(("127.0.0.1", server), timeout=QUICK, source_address=(client(3, i + 1), 0))
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: test\r\nContent-Le")
        half_headers.append(sock)
    try:
        for path in ("/healthz", "/readyz"):
            started = time.monotonic()
            assert request(server, "GET", path, timeout=QUICK)[0] == 200
            assert time.monotonic() - started < 1.0, path
        status, _, out = request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8), timeout=30)
        assert status == 200 and decode(out).size == (16, 16)
        # every stalled upload (Content-Length above what came) gets its 408 after the read timeout
        for sock in uploads:
            status, headers, body, closed = read_answer(sock, timeout=EDGE_TIMEOUTS["body_timeout_s"] + QUICK)
            assert status == 408 and is_json_error(headers, body) and closed, body
            assert json.loads(body)["error"].startswith("the request body stalled: nothing for 2 s (10 bytes")
    finally:
        for sock in uploads + half_headers:
            sock.close()


def test_an_oversized_body_is_refused_and_its_connection_closed(server):
    sock = open_upload(server, declared=10**9, sent=64 * 1024)
    try:
        status, headers, body, closed = read_answer(sock, timeout=QUICK)
    finally:
        sock.close()
    assert (status, closed) == (413, True)  # closed: the server does not read the rest of the gigabyte
    assert is_json_error(headers, body)
    assert json.loads(body)["error"] == f"request body is 1000000000 bytes; at most {MAX_BYTES} are accepted"


@pytest.mark.skipif(not ALIASES, reason="needs clients on different loopback addresses (127/8)")
def test_one_client_may_hold_only_its_share(server):
    cap = EDGE_TIMEOUTS["max_per_client"]
    holders = [open_upload(server, source="127.0.4.1") for _ in range(cap)]
    try:
        time.sleep(0.5)  # the proxy has parsed their headers
        status, headers, body = request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8), source="127.0.4.1",
                                        timeout=QUICK)
        assert (status, headers.get("retry-after"), headers.get("connection")) == (429, "1", "close")
        assert is_json_error(headers, body) and f"(at most {cap})" in json.loads(body)["error"]
        assert request(server, "GET", "/healthz", source="127.0.4.1", timeout=QUICK)[0] == 200  # probes are exempt
        assert request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8), source="127.0.4.2")[0] == 200
    finally:
        for sock in holders:
            sock.close()


def refused_count(metrics_port: int, status: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=QUICK) as response:
        text = response.read().decode()
    pattern = re.compile(r'^ray_osediff_refused_requests(?:_total)?\{[^}]*status="' + str(status) + r'"[^}]*\} (\S+)$',
                         re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def test_every_refusal_is_counted_truncated_images_too(service):
    time.sleep(3)  # what earlier tests refused has been exported
    before = refused_count(service.metrics_port, 400)
    truncated = png_bytes(40, 40)[:200]  # the header reads, decoding fails
    for _ in range(3):
        assert request(service.port, "POST", "/v1/upscale?upscale=2", truncated)[0] == 400
    deadline = time.monotonic() + 20
    while refused_count(service.metrics_port, 400) < before + 3:
        assert time.monotonic() < deadline, (before, refused_count(service.metrics_port, 400))
        time.sleep(0.5)


# -- faults (last: the model replica is restarted) --------------------------------------------------
def test_a_dead_model_replica_gets_json_answers_and_readyz_503(server):
    image = png_bytes(120, 120)

    def send(_):
        status, headers, body = request(server, "POST", "/v1/upscale?upscale=4", image, source=client(5, 1))
        return status, headers, body

    replicas = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                if "OSEDiffModel" in actor["name"]]
    assert replicas
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(send, i) for i in range(4)]
        time.sleep(1.0)
        for actor in replicas:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        answers = [future.result() for future in in_flight]
    assert {status for status, _, _ in answers} <= {200, 503} and any(status == 503 for status, _, _ in answers)
    for status, headers, body in answers:
        if status == 503:
            assert is_json_error(headers, body) and headers["retry-after"] == "1", body
            assert json.loads(body)["error"] == "the model replica running this request stopped; retry"
    # no model replica: readiness says so at once, and so does a request
    deadline, statuses = time.monotonic() + 30, []
    while 503 not in statuses and time.monotonic() < deadline:
        status, headers, body = request(server, "GET", "/readyz", timeout=QUICK)
        statuses.append(status)
        if status == 503:
            assert is_json_error(headers, body) and json.loads(body)["ready"] is False
        time.sleep(0.2)
    assert 503 in statuses, statuses
    status, headers, body = request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8), timeout=QUICK)
    assert status == 200 or (status == 503 and is_json_error(headers, body)), body
    # Serve starts a new replica; the service is ready and serves again
    deadline = time.monotonic() + 180
    while request(server, "GET", "/readyz", timeout=QUICK)[0] != 200:
        assert time.monotonic() < deadline, "no model replica came back"
        time.sleep(1)
    assert request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8))[0] == 200
