"""Video super-resolution: temporal stability (flicker), frames/s and peak memory of `osediff upscale`.

    python benchmarks/video.py                          # tiny random model, 24 frames per shot, CPU
    python benchmarks/video.py --size full --frames 8   # the published model's shapes (slow on a CPU)
    python benchmarks/video.py --long-seconds 120       # + the peak RSS of a 2-minute clip
    python benchmarks/video.py --methods bicubic        # the baseline only; no model needed

Two clips are made from a photo (examples/' first image, or --photo) and stored lossless (x264 qp 0,
4:4:4): "pan+zoom", a window panning 0.25 px/frame right, 0.125 down and zooming in 0.2 %/frame (each
frame one PIL AFFINE/BICUBIC resample magnifying the photo 4/3, so the motion is known exactly), and
"static", one frame repeated. Flicker (levels of 255, lower is steadier): the mean absolute difference
of consecutive frames, on pan+zoom after warping frame t+1 back onto frame t with the exact inverse map
(interior only). "input" is the clip itself (on pan+zoom: the warp's own error, the floor); "bicubic
raw" is PIL BICUBIC x4, "bicubic" that encoded as the CLI encodes (H.264 4:2:0 at --crf); "osediff" runs
`osediff upscale` per clip in its own process (frames/s from its wall time; peak RSS of its process
tree). A random model (benchmarks/random_model.py) draws noise-like textures: its figure is the video
pipeline's stability, not the trained model's quality.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import psutil
from PIL import Image

from _cpu import cpu_line
from random_model import default_out, make_random_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PAN = (0.25, 0.125)  # frame px per frame, right and down
ZOOM = 0.002  # the window shrinks this much per frame
RATIO = 4  # the upscale factor
MAGNIFY = 4 / 3  # frame px per photo px at the first frame
COVER = 0.75  # at most this share of the (resized) photo's width or height is in the first frame
NOTE = ("osediff here has random weights (benchmarks/random_model.py): its outputs are noise-like textures, so its "
        "flicker measures the stability of the video pipeline, not the quality of the trained model.")


@dataclass(frozen=True)
class Window:
    """The part of the photo a frame shows: photo px per frame px and the photo position of its top-left corner."""

    scale: float
    x: float
    y: float

    def affine(self) -> tuple[float, ...]:
        """PIL's AFFINE data (frame -> photo coordinates)."""
        return (self.scale, 0.0, self.x, 0.0, self.scale, self.y)


def load_photo(photo: Path | None, size: tuple[int, int]) -> Image.Image:
    """The photo, resized (antialiased) so that the first frame covers at most COVER of it."""
    path = photo or sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[0]
    image = Image.open(path).convert("RGB")
    factor = max(size[0] / MAGNIFY / COVER / image.width, size[1] / MAGNIFY / COVER / image.height)
    if abs(factor - 1) > 1e-6:
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
    return image


def windows(count: int, size: tuple[int, int], photo: tuple[int, int], moving: bool) -> list[Window]:
    """The shot's frames: static, or panning and zooming back and forth (a triangle wave)."""
    s0 = 1 / MAGNIFY
    room = min((photo[0] - 2 - s0 * size[0]) / (PAN[0] * s0), (photo[1] - 2 - s0 * size[1]) / (PAN[1] * s0))
    period = max(1, int(room))
    out = []
    for t in range(count):
        q = t % (2 * period) if moving else 0
        q = min(q, 2 * period - q)
        scale = s0 * (1 - ZOOM) ** q
        cx, cy = 1 + s0 * (size[0] / 2 + PAN[0] * q), 1 + s0 * (size[1] / 2 + PAN[1] * q)
        out.append(Window(scale, cx - scale * size[0] / 2, cy - scale * size[1] / 2))
    return out


def render(photo: Image.Image, size: tuple[int, int], wins: Iterable[Window]) -> Iterable[Image.Image]:
    """Each window of the photo as one frame (one exact bicubic affine resample)."""
    for win in wins:
        yield photo.transform(size, Image.AFFINE, win.affine(), resample=Image.BICUBIC)


def encode(path: Path, frames: Iterable[Image.Image], size: tuple[int, int], fps: int, crf: int | None) -> None:
    """Frames -> H.264 file: ``crf`` None is lossless (qp 0, 4:4:4), else 4:2:0 at ``crf`` as the CLI writes."""
    with av.open(str(path), "w") as container:
        options = {"qp": "0"} if crf is None else {"crf": str(crf)}
        stream = container.add_stream("libx264", rate=fps, options={**options, "bf": "0"})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv444p" if crf is None else "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame).reformat(format=stream.pix_fmt)))
        container.mux(stream.encode())


def decode(path: Path) -> list[np.ndarray]:
    """Every frame of the file as uint8 RGB."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def stream_facts(path: Path) -> tuple[int, str, str]:
    """Frame count (by decoding), frame rate and time base of the file's video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, str(stream.average_rate), str(stream.time_base)


def warp_back(frame: np.ndarray, now: Window, nxt: Window, ratio: float) -> np.ndarray:
    """Frame t+1 resampled onto frame t's grid with the known motion (output ``ratio`` x the input), float32."""
    a = now.scale / nxt.scale
    data = (a, 0.0, ratio * (now.x - nxt.x) / nxt.scale, 0.0, a, ratio * (now.y - nxt.y) / nxt.scale)
    height, width = frame.shape[:2]
    channels = [Image.fromarray(np.ascontiguousarray(frame[..., c], dtype=np.float32), "F")
                .transform((width, height), Image.AFFINE, data, resample=Image.BICUBIC) for c in range(3)]
    return np.stack([np.asarray(c) for c in channels], axis=-1)


def flicker(frames: list[np.ndarray], wins: list[Window], ratio: float, compensate: bool = True) -> float:
    """Mean absolute difference (levels of 255) between consecutive frames; where the windows move, on the
    interior only and (``compensate``) after warping each frame back with the known motion."""
    moving = len(set(wins)) > 1
    height, width = frames[0].shape[:2]
    m = max(int(2 * ratio), round(0.08 * min(height, width))) if moving else 0
    diffs = []
    for t in range(len(frames) - 1):
        nxt = (warp_back(frames[t + 1], wins[t], wins[t + 1], ratio) if moving and compensate
               else frames[t + 1].astype(np.float32))
        diffs.append(float(np.abs(nxt - frames[t].astype(np.float32))[m:height - m, m:width - m].mean()))
    return float(np.mean(diffs)) if diffs else float("nan")


def figures(frames: list[np.ndarray], wins: list[Window], ratio: float) -> dict:
    """Flicker, and on a moving shot also the difference without motion compensation (for comparison)."""
    out = {"flicker": flicker(frames, wins, ratio) if wins else float("nan"), "frames": len(frames)}
    if len(set(wins)) > 1:
        out["uncompensated"] = flicker(frames, wins, ratio, compensate=False)
    return out


def watch_tree(pid: int, done: threading.Event, peak: list[int]) -> None:
    """Until ``done``: the summed RSS of ``pid`` and its descendants every 50 ms, the largest kept in ``peak[0]``."""
    while not done.wait(0.05):
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))


def run_cli(clip: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """`osediff upscale` on one clip in its own process: wall seconds, peak RSS, model seconds if it prints them."""
    script = Path(sys.executable).with_name("osediff")  # this environment's CLI
    cmd = [*([str(script)] if script.exists() else [sys.executable, "-m", "osediff"]), "upscale", str(clip),
           "-o", str(out_dir), "--base", str(args.base), "--weights", str(args.weights), "--prompt-extractor", "text",
           "--device", args.device, "--upscale", str(RATIO), "--video-crf", str(args.crf), "--offline"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    log = out_dir.with_suffix(".log")
    with log.open("w") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        done, peak = threading.Event(), [0]
        poller = threading.Thread(target=watch_tree, args=(proc.pid, done, peak), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's rusage (ru_maxrss in KiB)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        poller.join()
    text = log.read_text(errors="replace")
    model = re.findall(r"([\d.]+) s total", text)
    result = {"command": " ".join(cmd), "wall_s": wall, "peak_mib": max(usage.ru_maxrss * 1024, peak[0]) / 2**20,
              "model_s": float(model[-1]) if model else None, "output": out_dir / f"{clip.stem}.mp4"}
    if proc.returncode != 0:
        result["error"] = f"exit {proc.returncode}: " + (text.strip().splitlines() or ["no output"])[-1][:200]
    return result


def row(method: str, shot: str, found: dict, run: dict | None = None, note: str = "") -> dict:
    """One table row from :func:`figures`; ``run`` adds the CLI's frames/s and peak RSS."""
    out = {"method": method, "shot": shot, **found, "note": note}
    if run:
        out.update(fps=found["frames"] / run["wall_s"], peak_mib=run["peak_mib"],
                   fps_model=found["frames"] / run["model_s"] if run.get("model_s") else None)
    return out


def cell(r: dict) -> str:
    """The row in markdown."""
    flick = ("-" if np.isnan(r["flicker"]) else f"{r['flicker']:.3f}") + (
        f" ({r['uncompensated']:.3f} uncompensated)" if "uncompensated" in r else "") + (
        f" {r['note']}" if r["note"] else "")
    fps = f"{r['fps']:.2f}" if "fps" in r else "-"
    fps += f" ({r['fps_model']:.2f} w/o loading)" if r.get("fps_model") else ""
    peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
    return f"| {r['method']} | {r['shot']} | {r['frames']} | {flick} | {fps} | {peak} |"


def measure_osediff(clip: Path, wins: list[Window], shot: str, tmp: Path, args: argparse.Namespace) -> dict:
    """The osediff row of one clip (flicker skipped when ``wins`` is empty)."""
    source, run = stream_facts(clip), run_cli(clip, tmp / f"out-{clip.stem}", args)
    print(f"  {run['command']}\n  -> {run['wall_s']:.1f} s, peak {run['peak_mib']:.0f} MiB", flush=True)
    if "error" in run:
        return row("osediff", shot, {"flicker": float("nan"), "frames": source[0]}, note=f"(failed: {run['error']})")
    facts = stream_facts(run["output"])
    note = "" if facts == source else f"(output {facts} vs input {source})"
    found = figures(decode(run["output"]), wins, RATIO) if wins else {"flicker": float("nan"), "frames": facts[0]}
    return row("osediff", shot, found, run, note)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=None, help="source photo (default: examples/' first image)")
    parser.add_argument("--width", type=int, default=128, help="clip width (default: %(default)s)")
    parser.add_argument("--height", type=int, default=72, help="clip height (default: %(default)s)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--frames", type=int, default=24, help="frames per shot (default: %(default)s)")
    parser.add_argument("--methods", default="bicubic,osediff", help="comma-separated (default: %(default)s)")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random model when no --base")
    parser.add_argument("--base", type=Path, default=None, help="SD-2.1-base folder (default: random model)")
    parser.add_argument("--weights", type=Path, default=None, help="osediff.pkl (default: random model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="passed to the CLI")
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality of the outputs (default: %(default)s)")
    parser.add_argument("--long-seconds", type=float, default=0, help="also a static+pan clip this long (RSS)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the clips and outputs in this folder")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    return parser


def measure(args: argparse.Namespace, methods: set[str], tmp: Path) -> list[dict]:
    """Every row: per shot the input, bicubic and osediff; then the long clip if asked for."""
    size, rows = (args.width, args.height), []
    photo = load_photo(args.photo, size)
    for shot, moving in (("pan+zoom", True), ("static", False)):
        wins = windows(args.frames, size, photo.size, moving)
        clip = tmp / f"{'panzoom' if moving else 'static'}.mp4"
        encode(clip, render(photo, size, wins), size, args.fps, None)
        frames = decode(clip)
        rows.append(row("input (reference)", shot, figures(frames, wins, 1.0)))
        if "bicubic" in methods:
            big = [Image.fromarray(f).resize((args.width * RATIO, args.height * RATIO), Image.BICUBIC) for f in frames]
            rows.append(row("bicubic raw", shot, figures([np.asarray(b) for b in big], wins, RATIO)))
            encode(tmp / f"bicubic-{clip.name}", big, big[0].size, args.fps, args.crf)
            rows.append(row("bicubic", shot, figures(decode(tmp / f"bicubic-{clip.name}"), wins, RATIO)))
        if "osediff" in methods:
            rows.append(measure_osediff(clip, wins, shot, tmp, args))
    if args.long_seconds and "osediff" in methods:
        half = round(args.long_seconds * args.fps / 2)
        wins = windows(half, size, photo.size, False) + windows(half, size, photo.size, True)
        encode(tmp / "long.mp4", render(photo, size, wins), size, args.fps, None)
        rows.append(measure_osediff(tmp / "long.mp4", [], f"long static+pan ({args.long_seconds:g} s)", tmp, args))
    return rows


def main() -> None:
    args = build_parser().parse_args()
    methods = set(args.methods.split(","))
    if "osediff" in methods and args.base is None:
        args.base, args.weights = make_random_model(default_out(args.size), args.size)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        rows = measure(args, methods, tmp)
    print(f"\n# video super-resolution: flicker, frames/s, memory ({args.width}x{args.height} -> "
          f"{args.width * RATIO}x{args.height * RATIO}, {args.fps} fps, outputs H.264 4:2:0 crf {args.crf})\n")
    print(f"CPU: {cpu_line()}\n")
    print("| method | shot | frames | flicker (levels of 255) | frames/s | peak RSS MiB |\n|---|---|---|---|---|---|")
    print("\n".join(cell(r) for r in rows))
    if "osediff" in methods:
        print(f"\nosediff model: {args.base} ({args.size if 'osediff-sd21' in str(args.base) else 'given'}); {NOTE}")
        long = [r for r in rows if r["shot"].startswith("long") and "peak_mib" in r]
        short = [r["peak_mib"] for r in rows if r["method"] == "osediff" and r not in long and "peak_mib" in r]
        if long and short:
            print(f"peak RSS: {long[0]['peak_mib']:.0f} MiB for the {long[0]['frames']}-frame clip vs "
                  f"{max(short):.0f} MiB for {args.frames} frames")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
