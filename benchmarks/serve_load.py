"""Load test of ``osediff serve`` over loopback: throughput, latency percentiles, errors, peak memory.

    python benchmarks/serve_load.py --size tiny --replicas 1 2 --requests 200 --concurrency 16
    python benchmarks/serve_load.py --size full --replicas 1 --requests 6 --concurrency 2 --input 64x64

For each replica count a fresh ``osediff serve`` is started as a subprocess (its own Ray
instance), warmed up with one request per replica, then hit by ``--concurrency`` client threads
until ``--requests`` answers or ``--max-seconds`` have passed, whichever comes first. A share of
the requests (``--bad-every``) are refused by design (not an image, 400), so the table shows that
refusals stay cheap under load. Peak RSS is sampled every 0.2 s over the server's whole process
tree (driver, Ray's GCS and raylet, controller, proxy, replicas) and for the largest single process.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_model import make_random_model

START_TIMEOUT = 900


def png(width: int, height: int, seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def post(port: int, path: str, body: bytes, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0  # no answer (refused, reset or timed out)
    finally:
        conn.close()


class RssSampler(threading.Thread):
    """Peak RSS of a process tree (sum) and of its largest process, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_total = self.peak_single = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            sizes = []
            for proc in procs:
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.Error:
                    continue
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_single = max(self.peak_single, max(sizes, default=0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, base: Path, weights: Path, replicas: int, log: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "osediff", "serve", "--base", str(base), "--weights", str(weights),
           "--device", "cpu", "--port", str(port), "--replicas", str(replicas),
           "--replica-cpus", str(args.replica_cpus), "--max-batch-size", str(args.max_batch_size),
           "--batch-wait-ms", str(args.batch_wait_ms), "--max-queued-requests", str(args.max_queued_requests)]
    out = open(log, "w")  # noqa: SIM115 - the server writes to it for its whole life
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + START_TIMEOUT
    while "serving on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise SystemExit(f"osediff serve did not start:\n{tail}")
        time.sleep(1)
    return proc, port


def load(port: int, args: argparse.Namespace, good: bytes) -> tuple[list[tuple[int, float]], float]:
    """(status, seconds) per request and the wall time, from ``--concurrency`` threads."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.max_seconds
    path = f"/v1/upscale?upscale={args.upscale:g}&prompt=a%20photo"

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                number = next(counter, None)
            if number is None:
                return
            bad = args.bad_every and number % args.bad_every == args.bad_every - 1
            started = time.perf_counter()
            status = post(port, path, b"not an image" if bad else good, args.timeout)
            with lock:
                results.append((status, time.perf_counter() - started))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def measure(args: argparse.Namespace, base: Path, weights: Path, replicas: int, workdir: Path) -> dict:
    log = workdir / f"serve-{replicas}.log"
    proc, port = start_server(args, base, weights, replicas, log)
    sampler = RssSampler(proc.pid)
    sampler.start()
    good = png(args.width, args.height, seed=0)
    try:
        for _ in range(replicas):  # warm-up: the first call of each replica pays one-time costs
            post(port, f"/v1/upscale?upscale={args.upscale:g}", good, args.timeout)
        results, wall = load(port, args, good)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        sampler.done.set()
        sampler.join()
    ok = sorted(seconds for status, seconds in results if status == 200)
    quantile = (lambda q: float(np.quantile(ok, q))) if ok else (lambda q: float("nan"))
    refused = [seconds for status, seconds in results if status == 400]
    return {"replicas": replicas, "sent": len(results), "ok": len(ok), "wall": wall,
            "rps": len(results) / wall if wall else 0.0, "ok_rps": len(ok) / wall if wall else 0.0,
            "p50": quantile(0.5), "p95": quantile(0.95), "p99": quantile(0.99),
            "refused_p50_ms": float(np.median(refused)) * 1000 if refused else float("nan"),
            "statuses": dict(sorted(Counter(status for status, _ in results).items())),
            "rss_total": sampler.peak_total / 2**30, "rss_single": sampler.peak_single / 2**30,
            "exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random model to build/use")
    parser.add_argument("--model-dir", type=Path, default=None, help="where the random model is kept")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--requests", type=int, default=200, help="requests per run (bounded)")
    parser.add_argument("--max-seconds", type=float, default=120, help="stop sending after this long")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input", default="32x32", help="input WxH (default 32x32)")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--bad-every", type=int, default=5, help="every Nth request is not an image (0: none)")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=float, default=20)
    parser.add_argument("--max-queued-requests", type=int, default=64)
    parser.add_argument("--replica-cpus", type=float, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a request counts as lost")
    args = parser.parse_args()
    args.width, args.height = (int(side) for side in args.input.lower().split("x"))
    base, weights = make_random_model(args.model_dir or Path(f"/tmp/osediff-sd21-{args.size}"), args.size)
    out_w, out_h = round(args.width * args.upscale), round(args.height * args.upscale)
    print(f"model: {args.size} random; input {args.width}x{args.height} x{args.upscale:g} -> {out_w}x{out_h}; "
          f"{args.concurrency} clients, {args.requests} requests or {args.max_seconds:g} s, every "
          f"{args.bad_every or 'no'}th not an image; batch <= {args.max_batch_size}, wait {args.batch_wait_ms:g} ms; "
          f"{os.cpu_count()} CPUs")
    columns = ["replicas", "sent", "200", "req/s (all)", "req/s (200)", "p50 s (200)", "p95 s", "p99 s",
               "p50 ms (400)", "statuses", "peak RSS tree GiB", "peak RSS one process GiB", "exit"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory(prefix="osediff-serve-load-") as workdir:
        for replicas in args.replicas:
            r = measure(args, base, weights, replicas, Path(workdir))
            statuses = " ".join(f"{status or 'none'}:{count}" for status, count in r["statuses"].items())
            row = [r["replicas"], r["sent"], r["ok"], f"{r['rps']:.2f}", f"{r['ok_rps']:.2f}", f"{r['p50']:.3f}",
                   f"{r['p95']:.3f}", f"{r['p99']:.3f}", f"{r['refused_p50_ms']:.1f}", statuses,
                   f"{r['rss_total']:.2f}", f"{r['rss_single']:.2f}", r["exit"]]
            print("| " + " | ".join(str(cell) for cell in row) + " |", flush=True)


if __name__ == "__main__":
    main()
