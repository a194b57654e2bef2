"""Regenerate the README figures in docs/images.

    .venv/bin/python scripts/make_figures.py            # both figures
    .venv/bin/python scripts/make_figures.py --only compare

* ``compare_realsr.png``: ``osediff compare`` on RealSR: bicubic | the authors' published OSEDiff
  outputs | HR, for three images (needs ../shared/benchmarks/realsr).
* ``strength.png``: ``osediff upscale --strength 0 / 0.5 / 1`` of one example, shown with
  ``osediff compare``; like the demo, a tiny *random* model without --base/--weights.
* ``demo.png``: the web demo in headless Chromium (Debian's /usr/bin/chromium) after one upscale.
  Without --base/--weights it serves a tiny *random* model built on the spot, so the OSEDiff half
  of the slider shows noise: the picture shows the page, not the model's quality.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALSR = ROOT.parent / "shared" / "benchmarks" / "realsr"
# a text close-up, a painted pattern and a face: three kinds of detail SR is judged on
COMPARE_IMAGES = ("Canon_003_LR4", "Canon_026_LR4", "Nikon_047_LR4")
DEMO_EXAMPLE = "Canon_001_LR4.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
MAX_BYTES = 2 * 1024 * 1024


def make_compare(out: Path) -> Path:
    from osediff.evaluation.compare import compare_folders
    from osediff.images import save_image_atomic

    grid = compare_folders(REALSR / "lr", [REALSR / "osediff_published"], REALSR / "hr",
                           names=["OSEDiff (published)"], select=COMPARE_IMAGES, zoom=3, panel_width=300)
    return _save_small(save_image_atomic, grid, out)


def _save_small(save, image, out: Path) -> Path:
    save(image, out, optimize=True)
    if out.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{out} is {out.stat().st_size / 1e6:.1f} MB; keep figures under 2 MB")
    return out


STRENGTH_EXAMPLE = ROOT / "examples" / "Canon_004_LR4.png"
STRENGTHS = ("0", "0.5", "1")


def make_strength_strip(out: Path, base: Path | None, weights: Path | None, device: str) -> Path:
    """One example at three strengths, through the CLI, then side by side with ``osediff compare``."""
    from osediff.evaluation.compare import compare_folders
    from osediff.images import save_image_atomic

    with tempfile.TemporaryDirectory(prefix="osediff-figures-") as tmp:
        work = Path(tmp)
        if base is None or weights is None:
            base, weights = tiny_model(work / "tiny-model")
        folders = []
        for strength in STRENGTHS:
            folder = work / f"strength-{strength}"
            subprocess.run([sys.executable, "-m", "osediff", "upscale", str(STRENGTH_EXAMPLE), "-o", str(folder),
                            "--strength", strength, "--base", str(base), "--weights", str(weights), "--offline",
                            "--prompt-extractor", "text", "--device", device], check=True)
            folders.append(folder)
        grid = compare_folders(STRENGTH_EXAMPLE.parent, folders, None, names=[f"strength {s}" for s in STRENGTHS],
                               select=[STRENGTH_EXAMPLE.stem], zoom=2, panel_width=256)
        return _save_small(save_image_atomic, grid, out)


def tiny_model(folder: Path) -> tuple[Path, Path]:
    from osediff.testing import build_base, random_weights, save_base

    components = build_base("tiny", seed=0)
    save_base(components, folder)
    return folder, random_weights(components, seed=1).save(folder / "osediff.pkl")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_demo(base: Path, weights: Path, work: Path, device: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work / "gradio")}
    proc = subprocess.Popen([sys.executable, "-m", "osediff", "demo", "--port", str(port), "--base", str(base),
                             "--weights", str(weights), "--device", device, "--examples", str(REALSR / "lr")],
                            stdout=(work / "server.log").open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"osediff demo exited:\n{(work / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("osediff demo did not start within 300 s")


def screenshot_demo(url: str, out: Path, work: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(work / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        # choose a RealSR example from the server's list, as a visitor would
        page.click("#example input")
        page.locator("ul[role=listbox] li", has_text=DEMO_EXAMPLE).first.click()
        page.wait_for_selector("#input-image img")
        page.locator("#prompt textarea").fill("a photo of a sign on a brick wall")
        page.click("#run")
        page.wait_for_function("() => document.querySelector('#time-taken textarea')?.value.length > 0",
                               timeout=300_000)
        page.wait_for_timeout(500)  # let the slider finish loading both images
        page.screenshot(path=str(out), full_page=True)
        context.close()


def make_demo(out: Path, base: Path | None, weights: Path | None, device: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="osediff-figures-") as tmp:
        work = Path(tmp)
        if base is None or weights is None:
            base, weights = tiny_model(work / "tiny-model")
        proc, url = serve_demo(base, weights, work, device)
        try:
            screenshot_demo(url, out, work)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    from PIL import Image

    from osediff.images import save_image_atomic

    with Image.open(out) as shot:
        return _save_small(save_image_atomic, shot.convert("RGB"), out)  # re-save optimised


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--only", choices=("compare", "strength", "demo"), default=None)
    parser.add_argument("--base", type=Path, default=None, help="real SD-2.1-base folder (default: tiny random)")
    parser.add_argument("--weights", type=Path, default=None, help="real osediff.pkl (default: tiny random)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "compare"):
        if not REALSR.is_dir():
            raise SystemExit(f"RealSR data not found at {REALSR} (the compare figure needs it)")
        print("wrote", make_compare(args.out / "compare_realsr.png"))
    if args.only in (None, "strength"):
        print("wrote", make_strength_strip(args.out / "strength.png", args.base, args.weights, args.device))
    if args.only in (None, "demo"):
        print("wrote", make_demo(args.out / "demo.png", args.base, args.weights, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
