"""The HTTP service on a real Ray Serve (one module-scoped server, tiny model, loopback only).

Round trip against ``osediff upscale``, every bad-input class, and 16 concurrent clients.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from osediff.cli import main
from test_serve_limits import declared_size_png, png_bytes

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

MAX_BYTES = 64 * 1024
TIMEOUT = 120  # seconds for any one request: nothing may hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body=None, headers: dict | None = None):
    """(status, headers, body) over loopback; ``body`` is bytes, or a list of chunks sent without a length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
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


@pytest.fixture(scope="module")
def server(tiny_base_dir, tiny_pkl):
    from osediff.cli.serve import LOCAL_PROXY_TIMEOUTS
    from osediff.limits import RequestLimits
    from osediff.model_files import ModelOptions
    from osediff.serve.app import Scaling, build_app
    from osediff.serve.engine import ServeConfig

    port = free_port()
    for name, seconds in LOCAL_PROXY_TIMEOUTS.items():  # as `osediff serve` starts its local node
        os.environ.setdefault(name, seconds)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
        model = ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl), device="cpu", offline=True)
        config = ServeConfig.find(model, threads=1,
                                  limits=RequestLimits(max_bytes=MAX_BYTES, max_pixels=256 * 256,
                                                       max_output_pixels=512 * 512, max_upscale=8),
                                  max_batch_size=4, batch_wait_s=0.05, base_label="tiny", weights_label="osediff.pkl")
        serve.run(build_app(config, Scaling(replica_cpus=1, max_queued_requests=64)), name="osediff",
                  route_prefix="/")
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def decode(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        return img


def test_probes_info_and_docs(server, tiny_pkl):
    assert request(server, "GET", "/healthz")[:1] == (200,)
    status, _, body = request(server, "GET", "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, _, body = request(server, "GET", "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["model"]["weights_sha256"] == hashlib.sha256(tiny_pkl.read_bytes()).hexdigest()
    assert info["limits"]["max_bytes"] == MAX_BYTES and info["prompt_extractors"] == ["text", "none"]
    status, _, body = request(server, "GET", "/openapi.json")
    assert status == 200 and "/v1/upscale" in json.loads(body)["paths"]
    assert request(server, "GET", "/docs")[0] == 200


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_served_png_equals_the_cli_output(server, tiny_base_dir, tiny_pkl, tmp_path, mode, single_thread):
    # the replica runs torch on one thread (threads=1); so must the CLI here, or float sums split over
    # two threads may round a pixel the other way
    data = png_bytes(24, 18, mode, seed=3)
    (tmp_path / "in.png").write_bytes(data)
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-s", "2.5", "--prompt",
                 "a photo", "--align", "wavelet", "--prompt-extractor", "text", "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--device", "cpu"]) == 0
    expected = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    status, headers, body = request(server, "POST", "/v1/upscale?upscale=2.5&align=wavelet&prompt=a%20photo", data,
                                    {"Content-Type": "image/png"})
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
        assert (got, out_headers.get("content-type")) == (status, "application/json"), (path, out)
        assert json.loads(out)["error"].startswith(message), (path, out)
    status, _, out = request(server, "POST", "/v1/upscale?upscale=2", png_bytes(8, 8))
    assert status == 200 and decode(out).size == (16, 16)


def test_sixteen_clients_four_requests_each_good_and_bad_mixed(server):
    def client(number: int) -> list[tuple[int, int, object]]:
        answers = []
        for i in range(4):
            if (number + i) % 3 == 0:  # bad: each class in turn
                path, body, headers, status, message = BAD[(number * 4 + i) % len(BAD)]
                got, _, out = request(server, "POST", path, body, headers)
                answers.append((got, status, json.loads(out)["error"].startswith(message)))
            else:  # good: two sizes, two factors, so batches mix groups
                width, scale = (16, 2) if i % 2 else (12, 3)
                got, _, out = request(server, "POST", f"/v1/upscale?upscale={scale}&prompt=c{number}",
                                      png_bytes(width, 8, seed=number))
                answers.append((got, 200, got == 200 and decode(out).size == (width * scale, 8 * scale)))
        return answers

    with ThreadPoolExecutor(16) as pool:
        answers = [answer for result in pool.map(client, range(16)) for answer in result]
    assert len(answers) == 64
    assert [(got, ok) for got, _, ok in answers] == [(expected, True) for _, expected, _ in answers]
