"""``osediff demo`` end to end: the real CLI serves the tiny random model; headless Chromium drives the page.

Chromium comes from Debian (``apt-get install chromium``); Playwright's python client only drives
it. Without either the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import EXAMPLES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
STARTUP_S = 120  # importing torch + gradio on a busy 2-core machine dominates

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"osediff demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"osediff demo did not serve {url} within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lr_image() -> Path:
    """A RealSR LR image (128x128) the repository ships in examples/."""
    return EXAMPLES / "Canon_004_LR4.png"


@pytest.fixture(scope="module")
def demo_url(tiny_base_dir, tiny_pkl, tmp_path_factory):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'osediff[demo]')")
    work = tmp_path_factory.mktemp("demo")
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work / "gradio"),
           "OMP_NUM_THREADS": "1"}  # one thread, as the suite runs torch (see conftest.py)
    log = work / "server.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osediff", "demo", "--host", "127.0.0.1", "--port", str(port), "--base",
             str(tiny_base_dir), "--weights", str(tiny_pkl), "--device", "cpu", "--dtype", "fp32",
             "--examples", str(EXAMPLES)],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser_page(demo_url, tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, accept_downloads=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _open(context, url: str):
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_selector("#run")
    return page


def _textbox(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


def test_upload_upscale_and_download_full_resolution(browser_page, demo_url, lr_image, tmp_path):
    page = _open(browser_page, demo_url)
    page.set_input_files("#input-image input[type=file]", str(lr_image))
    page.wait_for_selector("#input-image img")
    page.locator("#prompt textarea").fill("a sharp photo")
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#time-taken textarea')?.value.length > 0", timeout=60_000)

    assert _textbox(page, "prompt-used") == "a sharp photo"
    took = _textbox(page, "time-taken")
    assert " s total" in took and "512x512" in took
    assert page.locator("#slider img").count() == 2  # bicubic and OSEDiff both shown

    with page.expect_download() as pending:
        page.click("#download")
    download = pending.value
    assert download.suggested_filename == f"{lr_image.stem}.png"  # named as osediff upscale names it
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as result:
        assert result.format == "PNG"
        assert result.size == (512, 512)
    page.close()


def test_too_many_pixels_is_refused_with_a_clear_message(browser_page, demo_url, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1100, 1000), (90, 120, 30)).save(big)  # default limit: 1024*1024 pixels
    page = _open(browser_page, demo_url)
    page.set_input_files("#input-image input[type=file]", str(big))
    page.wait_for_selector("#input-image img")
    page.click("#run")
    toast = page.locator(".toast-body").first
    toast.wait_for()
    assert "1100x1000" in toast.inner_text() and "1,048,576 pixels" in toast.inner_text()
    assert _textbox(page, "time-taken") == ""
    # the message also stays on the page after any toast is gone
    page.wait_for_function("() => document.querySelector('#status textarea')?.value.includes('1100x1000')")
    assert _textbox(page, "status").startswith("error: ")
    page.close()


@pytest.mark.parametrize("path", ["/etc/passwd", str(EXAMPLES / "Canon_004_LR4.png"), "/tmp/../etc/hostname"])
def test_server_refuses_file_paths_sent_by_a_client(demo_url, path):
    """A hand-made API request naming a server file (not an upload) must not be read."""
    body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 4, "", "text", "adain", 768, 1.0, 1.0, ""]}
    request = urllib.request.Request(f"{demo_url}gradio_api/call/upscale", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{demo_url}gradio_api/call/upscale/{event_id}", timeout=60) as response:
        stream = response.read().decode()
    assert "event: error" in stream and "event: complete" not in stream
    assert "root:" not in stream  # nothing of the file comes back

