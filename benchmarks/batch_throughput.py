"""Batch throughput: the single-process batch runner vs ``--engine ray`` on a local Ray instance.

    python benchmarks/batch_throughput.py                           # 32 RealSR inputs, tiny model
    python benchmarks/batch_throughput.py --size full --images 4    # full-size random model

Each row runs in its own process on random weights (benchmarks/random_model.py; the full-size
architecture costs what the published model costs), prompt extractor ``text``. Columns:

  total s      wall time of the whole run: model loading, Ray start-up and the images
  first s      time until the first output was written (loading, start-up)
  img/s        images per second over the whole run, and after the first output (steady)
  overhead     (Ray total - single total) / images: what Ray adds per image at this scale
  peak RSS     the largest sum of resident memory over the process and all its descendants
               (Ray's raylet, GCS and workers included), sampled every 0.2 s

Ray runs with ``ray.init(num_cpus=CPUS)``: one CPU is kept for decoding, so on 2 CPUs the single
replica computes on one thread. On a shared machine run the whole script under OMP_NUM_THREADS=1 so
both engines compute on one thread: two OpenMP threads on two busy cores spin on each other (measured
here: 32 tiny-model images took 820 s in the single-process runner with two threads, 227 s with one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALSR_LR = REPO.parent / "shared" / "benchmarks" / "realsr" / "lr"


def tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that exited between listing and reading
            total += p.memory_info().rss
    return total


def measure(engine: str, base: Path, weights: Path, inputs: list[str], out: Path, cpus: int) -> dict:
    """One run in this process; times and the peak RSS of this process tree."""
    import psutil

    from osediff.batch import BatchConfig, ModelOptions, run
    from osediff.batch.ray_engine import RayOptions, run_ray

    me = psutil.Process()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(me))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    config = BatchConfig(inputs=inputs, output=out,
                         model=ModelOptions(base=str(base), weights=str(weights), device="cpu"))  # prompt: text
    times: list[float] = []
    started = time.perf_counter()

    def on_record(record) -> None:
        times.append(time.perf_counter() - started)

    if engine == "ray":
        import ray

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        summary = run_ray(config, RayOptions(progress=False), on_record=on_record)
        ray.shutdown()
    else:
        summary = run(config, on_record=on_record)
    total = time.perf_counter() - started
    stop.set()
    return {"total": total, "first": times[0], "last": times[-1], "written": summary.written,
            "failed": summary.failed, "peak_gib": peak[0] / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--images", type=int, default=32, help="first N RealSR LR inputs")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--model-dir", type=Path, default=None, help="random model folder (default: /tmp/...)")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from random_model import make_random_model

    base, weights = make_random_model(args.model_dir or Path(f"/tmp/osediff-sd21-{args.size}"), args.size)
    if not REALSR_LR.is_dir():
        sys.exit(f"RealSR inputs not found at {REALSR_LR}")
    inputs = [str(p) for p in sorted(REALSR_LR.iterdir())[: args.images]]
    if args.worker:
        engine, out = args.worker
        print(json.dumps(measure(engine, base, weights, inputs, Path(out), args.cpus)))
        return
    rows = {}
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, __file__, "--size", args.size, "--images", str(args.images), "--cpus",
                   str(args.cpus), "--model-dir", str(base), "--worker", engine, out]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
            rows[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
    n = args.images
    print(f"\n{n} RealSR inputs (128->512), {args.size} random model, CPU, Ray on {args.cpus} CPUs\n")
    print("| engine | written | total s | first s | img/s | steady img/s | overhead s/img | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for engine, r in rows.items():
        steady = (r["written"] - 1) / (r["last"] - r["first"]) if r["written"] > 1 and r["last"] > r["first"] else 0
        overhead = (r["total"] - rows["local"]["total"]) / n if "local" in rows and engine != "local" else 0.0
        print(f"| {engine} | {r['written']} | {r['total']:.1f} | {r['first']:.1f} | {n / r['total']:.3f} | "
              f"{steady:.3f} | {overhead:+.2f} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
