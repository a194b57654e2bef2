"""Load test of ``osediff serve`` over loopback, with and without hostile clients, then SIGTERM.

    python benchmarks/serve_load.py --size tiny --replicas 1 2
    python benchmarks/serve_load.py --size full --replicas 1 --replica-cpus 2 --input 64x64 --seconds 300

For each replica count a fresh ``osediff serve`` is started as a subprocess (its own Ray instance,
default timeouts and caps) and warmed up; then three phases:

1. **baseline**: ``--good`` clients (16) POST one image each, in a loop, each from its own loopback
   address (127.0.1.N), for ``--seconds``;
2. **attack**: the same good clients, plus ``--slow`` clients (25: 15 that drip one body byte every
   2 s, 10 that stop mid-body; each reconnects when cut off), 5 connections that drip their
   headers, and one client cycling through malformed requests (not an image, a truncated PNG, a
   bad multipart body, a 1 GB Content-Length, a bad parameter, a chunked body over the cap, a
   hang-up mid-upload);
3. **SIGTERM** under the good clients' load: every request in flight must be answered in full (its
   image, or a JSON 503), later ones get a JSON 503 until the server stops listening.

Throughout, a prober asks ``/healthz`` and ``/readyz`` every 0.1 s. Every answer that is not an
image must be the service's JSON error with its request id; the table counts those that are not.
The goals (a non-zero exit when one is missed): good ok/s under attack within 20 % of the baseline,
every probe under 100 ms, no non-JSON answer, no request cut by SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cpu import cpu_description
from random_model import make_random_model

START_TIMEOUT = 900
HEALTH_GOAL_MS = 100.0
RATE_GOAL = 0.8  # good ok/s under attack, as a share of the baseline's


def png(width: int, height: int, seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Answer:
    status: int  # 0: no answer (refused, reset, timed out, cut)
    seconds: float
    json_ok: bool = True  # an image, or the JSON error with its request id
    error: str = ""
    started: float = 0.0
    ended: float = 0.0


def post(port: int, path: str, body: bytes, *, source: str, timeout: float, headers: dict | None = None) -> Answer:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "image/png", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, time.monotonic() - started, json_shaped(response, data), started=started,
                      ended=time.monotonic())
    except (OSError, http.client.HTTPException) as err:
        return Answer(0, time.monotonic() - started, True, type(err).__name__, started, time.monotonic())
    finally:
        conn.close()


def json_shaped(response, data: bytes) -> bool:
    """An image (200), or the service's error: JSON with ``error`` and the ``X-Request-ID`` as ``request_id``."""
    if response.status == 200 and response.getheader("content-type", "").startswith("image/"):
        return True
    try:
        body = json.loads(data)
    except ValueError:
        return False
    if response.status < 400:
        return isinstance(body, dict)
    return isinstance(body.get("error"), str) and body.get("request_id") == response.getheader("x-request-id")


class RssSampler(threading.Thread):
    """Peak RSS of a process tree (sum), sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, base: Path, weights: Path, replicas: int, log: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "osediff", "serve", "--base", str(base), "--weights", str(weights), "--offline",
           "--device", "cpu", "--port", str(port), "--replicas", str(replicas),
           "--replica-cpus", str(args.replica_cpus), "--max-batch-size", str(args.max_batch_size),
           "--batch-wait-ms", str(args.batch_wait_ms), "--max-queued-requests", str(args.max_queued_requests),
           "--grace-period-s", str(args.grace)]
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


@dataclass
class Phase:
    """What the clients saw in one phase."""

    good: list[Answer] = field(default_factory=list)
    probes: list[Answer] = field(default_factory=list)
    slow: list[Answer] = field(default_factory=list)
    malformed: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, answer: Answer) -> None:
        with self.lock:
            getattr(self, kind).append(answer)

    def non_json(self) -> int:
        return sum(not a.json_ok for a in self.good + self.probes + self.slow + self.malformed if a.status)


def good_client(port: int, number: int, path: str, image: bytes, phase: Phase, stop: threading.Event,
                timeout: float) -> None:
    while not stop.is_set():
        answer = post(port, path, image, source=f"127.0.1.{number + 1}", timeout=timeout)
        phase.add("good", answer)
        if answer.status in (0, 429, 503):
            stop.wait(1.0)  # as Retry-After says (and no spinning without a server)


def probe_loop(port: int, seconds: float, results) -> None:
    """In a process of its own (the load generator's threads would delay it): GET /healthz and /readyz
    every 0.1 s for ``seconds``; (status, seconds, JSON-shaped, error) of each into ``results``."""
    paths, answers = ("/healthz", "/readyz"), []
    deadline = time.monotonic() + seconds
    for i in range(10**9):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.4.1", 0))
        try:
            conn.request("GET", paths[i % 2])
            response = conn.getresponse()
            data = response.read()
            answers.append((response.status, time.monotonic() - started, json_shaped(response, data), ""))
        except (OSError, http.client.HTTPException) as err:
            answers.append((0, time.monotonic() - started, True, type(err).__name__))
        finally:
            conn.close()
    results.put(answers)


class Prober:
    """:func:`probe_loop` in a separate process, its answers added to ``phase`` when stopped."""

    def __init__(self, port: int, seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.process = context.Process(target=probe_loop, args=(port, seconds, self.results), daemon=True)
        self.process.start()

    def collect(self, phase: Phase) -> None:
        for status, seconds, ok, error in self.results.get(timeout=600):
            phase.add("probes", Answer(status, seconds, ok, error))
        self.process.join()


def read_raw_answer(sock: socket.socket) -> tuple[int, bool]:
    """(status, JSON-shaped) of an answer on a raw socket; (0, True) when the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, True
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    try:
        answer = json.loads(body)
        ok = isinstance(answer.get("error"), str) and answer.get("request_id") == headers.get("x-request-id")
    except ValueError:
        ok = False
    return int(lines[0].split()[1]), ok


def slow_client(port: int, number: int, phase: Phase, stop: threading.Event, drip: bool) -> None:
    """An upload that drips one byte every 2 s (``drip``) or stops mid-body; again when cut off."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120,
                                          source_address=(f"127.0.2.{number + 1}", 0)) as sock:
                sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: load\r\nContent-Type: image/png\r\n"
                             b"Content-Length: 2000\r\n\r\n" + b"\x89PNG\r\n\x1a\n" + b"x" * 92)
                if drip:
                    sock.settimeout(2.0)
                    while not stop.is_set():
                        try:
                            status, ok = read_raw_answer(sock)
                            break
                        except TimeoutError:
                            sock.sendall(b"x")
                    else:
                        return
                else:
                    sock.settimeout(120)
                    status, ok = read_raw_answer(sock)
            phase.add("slow", Answer(status, time.monotonic() - started, ok))
        except OSError as err:
            if not stop.is_set():
                phase.add("slow", Answer(0, time.monotonic() - started, True, type(err).__name__))
                time.sleep(0.5)


def slow_headers(port: int, number: int, stop: threading.Event) -> None:
    """A connection that sends its headers one byte every 2 s and never finishes them."""
    with socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.3.{number + 1}", 0)) as sock:
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: load\r\n")
        while not stop.wait(2.0):
            try:
                sock.sendall(b"X")
            except OSError:
                return


def malformed_client(port: int, image: bytes, phase: Phase, stop: threading.Event) -> None:
    truncated = image[: len(image) // 2]
    boundary = "b0undary"
    bad_multipart = f"--{boundary}\r\ngarbage".encode()
    cases = [("/v1/upscale?upscale=4", b"not an image at all", {}),
             ("/v1/upscale?upscale=4", truncated, {}),
             ("/v1/upscale", bad_multipart, {"Content-Type": f"multipart/form-data; boundary={boundary}x"}),
             ("/v1/upscale?align=colour", image, {}),
             ("/v1/upscale?upscale=4", [b"x" * 65536] * 400, {})]  # chunked, past the 20 MB cap
    source = "127.0.5.1"
    for i in range(10**9):
        if stop.wait(0.2):
            return
        kind = i % (len(cases) + 2)
        if kind < len(cases):
            path, body, headers = cases[kind]
            if isinstance(body, list):
                phase.add("malformed", post_chunked(port, path, body, source=source))
            else:
                phase.add("malformed", post(port, path, body, source=source, timeout=30, headers=headers))
            continue
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0)) as sock:
                declared = 10**9 if kind == len(cases) else 5000  # a 1 GB length, or a hang-up mid-upload
                sock.sendall(f"POST /v1/upscale HTTP/1.1\r\nHost: load\r\nContent-Length: {declared}\r\n\r\n".encode()
                             + b"x" * 1000)
                if kind == len(cases):
                    status, ok = read_raw_answer(sock)
                    phase.add("malformed", Answer(status, time.monotonic() - started, ok))
        except OSError as err:
            phase.add("malformed", Answer(0, time.monotonic() - started, True, type(err).__name__))


def post_chunked(port: int, path: str, chunks: list[bytes], *, source: str) -> Answer:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True)
        response = conn.getresponse()
        return Answer(response.status, time.monotonic() - started, json_shaped(response, response.read()))
    except (OSError, http.client.HTTPException) as err:  # the server may close while we still send
        return Answer(0, time.monotonic() - started, True, type(err).__name__)
    finally:
        conn.close()


def run_phase(port: int, args: argparse.Namespace, image: bytes, *, attack: bool) -> tuple[Phase, float]:
    phase, stop, attack_stop = Phase(), threading.Event(), threading.Event()
    path = f"/v1/upscale?upscale={args.upscale:g}&prompt=a%20photo"
    prober = Prober(port, args.seconds + (5 if attack else 0))
    threads = []
    if attack:
        threads += [threading.Thread(target=slow_client, args=(port, n, phase, attack_stop, n < 15))
                    for n in range(args.slow)]
        threads += [threading.Thread(target=slow_headers, args=(port, n, attack_stop)) for n in range(5)]
        threads.append(threading.Thread(target=malformed_client, args=(port, image, phase, attack_stop)))
    for thread in threads:
        thread.start()
    if attack:
        time.sleep(5)  # the slow clients are in place before the good ones are measured
    good = [threading.Thread(target=good_client, args=(port, n, path, image, phase, stop, args.timeout))
            for n in range(args.good)]
    started = time.monotonic()
    for thread in good:
        thread.start()
    time.sleep(args.seconds)
    stop.set()
    for thread in good:
        thread.join()
    wall = time.monotonic() - started
    attack_stop.set()
    for thread in threads:
        thread.join(timeout=130)
    prober.collect(phase)
    return phase, wall


def sigterm_phase(proc: subprocess.Popen, port: int, args: argparse.Namespace, image: bytes) -> dict:
    """Good clients for a few seconds, SIGTERM, until the server has exited: who was answered how."""
    phase, stop = Phase(), threading.Event()
    path = f"/v1/upscale?upscale={args.upscale:g}"
    threads = [threading.Thread(target=good_client, args=(port, n, path, image, phase, stop, args.timeout))
               for n in range(args.good)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(args.grace + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    stopped = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join()
    in_flight = [a for a in phase.good if a.started < term < a.ended]
    after = [a for a in phase.good if a.started >= term]
    return {"in_flight": Counter(a.status or a.error for a in in_flight),
            "cut": sum(a.status == 0 for a in in_flight), "after": Counter(a.status or a.error for a in after),
            "non_json": phase.non_json(), "stop_s": stopped - term, "exit": code}


def describe(phase: Phase, wall: float) -> dict:
    ok = sorted(a.seconds for a in phase.good if a.status == 200)
    probes_ms = sorted(a.seconds * 1000 for a in phase.probes)
    return {"good_ok": len(ok), "ok_rps": len(ok) / wall, "p50": float(np.median(ok)) if ok else float("nan"),
            "p95": float(np.quantile(ok, 0.95)) if ok else float("nan"),
            "good_other": Counter(a.status or a.error for a in phase.good if a.status != 200),
            "probes": len(probes_ms), "probe_p99": float(np.quantile(probes_ms, 0.99)) if probes_ms else float("nan"),
            "probe_max": max(probes_ms, default=float("nan")),
            "probe_bad": sum(a.status != 200 for a in phase.probes),
            "slow": Counter(a.status or a.error for a in phase.slow),
            "malformed": Counter(a.status or a.error for a in phase.malformed), "non_json": phase.non_json()}


def log_summary(log: Path) -> str:
    """The server's console after it started: access lines, and every other warning or error line."""
    lines = log.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if "serving on" in line), 0)
    access = sum("osediff.access" in line for line in lines[start:])
    noisy = [line for line in lines[start:] if "osediff.access" not in line
             and any(word in line for word in ("WARNING", "ERROR", "Traceback", "Exception"))]
    return f"{access} access lines, {len(noisy)} warning/error lines" + (f" (first: {noisy[0][:160]})" if noisy else "")


def counts(counter: Counter) -> str:
    return " ".join(f"{key}:{value}" for key, value in sorted(counter.items(), key=str)) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="random model to build/use")
    parser.add_argument("--model-dir", type=Path, default=None, help="where the random model is kept")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=40, help="length of the baseline and attack phases")
    parser.add_argument("--good", type=int, default=16, help="good clients")
    parser.add_argument("--slow", type=int, default=25, help="slow clients (uploads) in the attack")
    parser.add_argument("--input", default="32x32", help="input WxH (default 32x32)")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=float, default=20)
    parser.add_argument("--max-queued-requests", type=int, default=64)
    parser.add_argument("--replica-cpus", type=float, default=1)
    parser.add_argument("--grace", type=float, default=30, help="the server's --grace-period-s")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a good request counts as lost")
    parser.add_argument("--logs", type=Path, default=None, help="keep the servers' logs in this folder")
    args = parser.parse_args()
    args.width, args.height = (int(side) for side in args.input.lower().split("x"))
    base, weights = make_random_model(args.model_dir or Path(f"/tmp/osediff-sd21-{args.size}"), args.size)
    out_w, out_h = round(args.width * args.upscale), round(args.height * args.upscale)
    print(f"CPU: {cpu_description()}")
    print(f"model: {args.size} random; input {args.width}x{args.height} x{args.upscale:g} -> {out_w}x{out_h}; "
          f"{args.good} good clients, {args.seconds:g} s per phase; attack: {args.slow} slow uploads, 5 slow "
          f"headers, 1 malformed mix; batch <= {args.max_batch_size}, wait {args.batch_wait_ms:g} ms; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    columns = ["replicas", "phase", "good 200", "good ok/s", "p50 s", "p95 s", "good other", "probes",
               "probe p99 ms", "probe max ms", "probes not 200", "slow clients' answers", "malformed answers",
               "non-JSON"]
    rows, failures = [], []
    image = png(args.width, args.height, seed=0)
    with tempfile.TemporaryDirectory(prefix="osediff-serve-load-") as workdir:
        logs = args.logs or Path(workdir)
        logs.mkdir(parents=True, exist_ok=True)
        for replicas in args.replicas:
            proc, port = start_server(args, base, weights, replicas, logs / f"serve-{replicas}.log")
            sampler = RssSampler(proc.pid)
            sampler.start()
            try:
                for _ in range(4 * replicas):  # warm-up: each replica's first calls pay one-time costs
                    post(port, f"/v1/upscale?upscale={args.upscale:g}", image, source="127.0.9.1", timeout=300)
                results = {}
                for name, attack in (("baseline", False), ("attack", True)):
                    phase, wall = run_phase(port, args, image, attack=attack)
                    r = results[name] = describe(phase, wall)
                    rows.append([replicas, name, r["good_ok"], f"{r['ok_rps']:.2f}", f"{r['p50']:.2f}",
                                 f"{r['p95']:.2f}", counts(r["good_other"]), r["probes"], f"{r['probe_p99']:.1f}",
                                 f"{r['probe_max']:.1f}", r["probe_bad"], counts(r["slow"]), counts(r["malformed"]),
                                 r["non_json"]])
                    print("| " + " | ".join(str(c) for c in rows[-1]) + " |", flush=True)
                term = sigterm_phase(proc, port, args, image)
            finally:
                if proc.poll() is None:
                    proc.kill()
                sampler.done.set()
                sampler.join()
            ratio = results["attack"]["ok_rps"] / max(results["baseline"]["ok_rps"], 1e-9)
            print(f"replicas {replicas}: good ok/s under attack {ratio:.0%} of baseline; SIGTERM: in flight "
                  f"{counts(term['in_flight'])} (cut: {term['cut']}); sent after it {counts(term['after'])}; "
                  f"stopped in {term['stop_s']:.1f} s, exit {term['exit']}; non-JSON {term['non_json']}; "
                  f"peak RSS {sampler.peak / 2**30:.2f} GiB; log: {log_summary(logs / f'serve-{replicas}.log')}",
                  flush=True)
            for name in ("baseline", "attack"):
                r = results[name]
                if r["probe_max"] >= HEALTH_GOAL_MS or r["probe_bad"]:
                    failures.append(f"{replicas} replica(s), {name}: a probe took {r['probe_max']:.0f} ms "
                                    f"({r['probe_bad']} not 200)")
                if r["non_json"]:
                    failures.append(f"{replicas} replica(s), {name}: {r['non_json']} non-JSON answers")
            if ratio < RATE_GOAL:
                failures.append(f"{replicas} replica(s): good traffic at {ratio:.0%} of its rate under attack")
            if term["cut"] or term["non_json"] or term["exit"] != 0:
                failures.append(f"{replicas} replica(s): SIGTERM cut {term['cut']} request(s), "
                                f"{term['non_json']} non-JSON, exit {term['exit']}")
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    for failure in failures:
        print(f"MISSED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
