"""``--engine ray``: the batch runner's steps as a Ray Data stream over a cluster.

Decoding runs in CPU tasks; a pool of actors, one model replica each (one per GPU, or one per
``cpus_per_replica`` CPUs on clusters without GPUs), runs prompts, the model and the atomic writes
with the same output names as the single-process runner, through the same per-image step. A replica
that dies is restarted and its batch retried by Ray (bounded by ``max_restarts``). Every input gets
one manifest row (input, output, status, error, prompt, seconds), rewritten as the job runs; with
``skip_existing`` (``--skip-existing``) a re-run skips inputs whose output exists, so the same
command resumes an interrupted job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import OSEDiffError
from ..fileio import first_line
from ..images import ImageLoadError, LoadedImage, load_image
from ..outputs import output_name, plan_outputs
from .config import BatchConfig, BatchConfigError, is_uri, validate
from .runner import (
    FAILED,
    SKIPPED,
    BatchSummary,
    ImageRecord,
    RecordHook,
    chunk_size,
    find_batch_files,
    upscale_chunk,
)
from .storage import Folder, collect_any, read_bytes

MANIFEST_NAME = "manifest.jsonl"
CONNECT_TIMEOUT_S = 5.0
MANIFEST_INTERVAL_S = 30.0


class RayEngineError(OSEDiffError):
    """Ray is missing, the cluster cannot be reached, or the cluster failed the job."""


@dataclass
class RayOptions:
    address: str | None = None  # None: a local Ray instance; "auto": the one `ray start` runs here
    manifest: str | None = None  # default: OUTPUT/manifest.jsonl
    manifest_every_s: float = MANIFEST_INTERVAL_S  # how often it is rewritten while the job runs
    cpus_per_replica: int = 8  # clusters without GPUs
    replicas: int | None = None  # default: one per GPU, else as many as the CPUs allow
    max_restarts: int = 3  # per replica; a dead replica's batch is retried as often
    progress: bool = True


def import_ray():
    try:
        import ray
        import ray.data  # the data extra, not only the core
    except ImportError:
        raise RayEngineError("{argument} ray needs Ray Data, which is not installed: pip install 'osediff[ray]' "
                             "(or: pip install 'ray[data]>=2.9')", argument="engine") from None
    return ray


def connect(address: str | None) -> bool:
    """Join ``address`` or start a local Ray instance; True when this call started Ray (so it stops it)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        _probe(address)
    try:
        if address is None:  # starts Ray's own processes, which must not inherit a borrowed stderr
            ray.init(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False,
                     configure_logging=False)
        else:
            _join(ray, address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local instance"
        raise RayEngineError(f"{{argument}} {where}: cannot start or join Ray ({first_line(err)}); start a "
                             "cluster with `ray start --head` or leave {argument} out", argument="address") from None
    return True


def _join(ray, address: str) -> None:
    """``ray.init(address)`` with stderr held back: a port that accepts TCP but is no Ray head makes
    Ray's C++ client log a warning a second until it gives up (~20 s). Shown if the join succeeds."""
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        os.write(2, held.read())


def _probe(address: str) -> None:
    """A plain TCP connect first: ``ray.init`` keeps retrying an unreachable head for a minute or more."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except ValueError:
        reason = "expected HOST:PORT, ray://HOST:PORT or auto"
    except OSError as err:
        reason = err.strerror or type(err).__name__
    raise RayEngineError(f"{{argument}} {address}: cannot reach a Ray cluster there ({reason}); start one "
                         "with `ray start --head` or leave {argument} out for a local instance", argument="address")


def run_ray(config: BatchConfig, options: RayOptions, on_record: RecordHook | None = None) -> BatchSummary:
    """The whole job on Ray; every input gets one record, also written to the manifest."""
    started = time.perf_counter()
    import_ray()  # the one-line install hint comes before anything else
    if config.world > 1:
        raise BatchConfigError("shares the inputs itself: run it once, not under accelerate/torchrun",
                               argument="engine")
    validate(config, remote_ok=True)
    inputs = collect_any([str(spec) for spec in config.inputs])
    if not inputs:
        raise BatchConfigError("no input images found")
    out = Folder(config.output)
    manifest = Manifest(options.manifest or out.path(MANIFEST_NAME), options.manifest_every_s)

    def on_each(record: ImageRecord) -> None:
        if on_record is not None:
            on_record(record)
        manifest.update(summary.records)

    summary = BatchSummary(str(config.output), on_record=on_each)
    fmt = config.params.format
    plan = plan_outputs(inputs, fmt, exists=out.exists, skip_existing=config.skip_existing)
    for src in inputs:  # outputs are written whole or not at all: an existing one is done
        if src in plan.clashes:
            summary.add(ImageRecord(src, out.path(output_name(src, fmt)), FAILED, f"{src}: its output "
                                    f"{out.path(output_name(src, fmt))} is already that of {plan.clashes[src]}; "
                                    "rename one of them or run it separately"))
        elif src in plan.skipped:
            summary.add(ImageRecord(src, out.path(output_name(src, fmt)), SKIPPED))
    started_here = connect(options.address) if plan.todo else False
    try:
        if plan.todo:
            _, params = find_batch_files(config)  # fail here, in one line, not in every replica
            _stream(config, options, plan.todo, chunk_size(config, params), summary.add)
    finally:
        summary.seconds = time.perf_counter() - started
        manifest.write(summary.records)
        if started_here:
            import_ray().shutdown()
    return summary


def _stream(config: BatchConfig, options: RayOptions, todo: list[str], chunk: int, record) -> None:
    from tqdm import tqdm

    ray = import_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images, not blocks
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # block-level chatter under our bar
        resources = _replica_resources(ray, options, len(todo), chunk)
        items = [{"input": src} for src in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(todo) // chunk))
        ds = ds.map_batches(_decode, batch_format="pandas", batch_size=chunk, num_cpus=min(1, resources["num_cpus"]),
                            fn_kwargs={"max_pixels": config.max_pixels})
        with warnings.catch_warnings():
            # bounded restarts have no named parameter yet (Ray Data's default is to retry forever)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = ds.map_batches(_Replica, batch_format="pandas", batch_size=chunk,
                                fn_constructor_kwargs={"config": config}, max_restarts=options.max_restarts,
                                max_task_retries=options.max_restarts, **resources)
        with tqdm(total=len(todo), unit="img", disable=not options.progress, dynamic_ncols=True) as bar:
            for row in ds.iter_rows():
                rec = ImageRecord(**{key: row[key] for key in ("input", "output", "status", "error", "prompt")},
                                  seconds=float(row["seconds"]))
                record(rec)
                bar.update()
    except ray.exceptions.RayError as err:
        raise RayEngineError(f"the Ray job failed: {str(err).strip().splitlines()[-1]}") from None


def _replica_resources(ray, options: RayOptions, images: int, chunk: int) -> dict:
    """One replica per GPU; without GPUs, ``cpus_per_replica`` each, one CPU left for decoding."""
    from ray.data import ActorPoolStrategy

    available = ray.cluster_resources()
    gpus, cpus = int(available.get("GPU", 0)), int(available.get("CPU", 1))
    if gpus:
        count, per_replica = options.replicas or gpus, {"num_gpus": 1, "num_cpus": 1}
    elif cpus < 2:  # a single CPU: replica and decoding share it (whole CPUs each would never both run)
        count, per_replica = 1, {"num_cpus": 0.5}
    else:
        per = max(1, min(options.cpus_per_replica, cpus - 1))
        count, per_replica = options.replicas or max(1, (cpus - 1) // per), {"num_cpus": per}
    count = max(1, min(count, -(-images // chunk)))
    return {"compute": ActorPoolStrategy(size=count), **per_replica}


def _decode(batch, max_pixels: int | None):
    """CPU task: read and decode each input to raw RGB (+ alpha) bytes, or its one-line error."""
    import pandas as pd

    rows = []
    for src in batch["input"]:
        row = {"input": src, "error": "", "width": 0, "height": 0, "rgb": b"", "alpha": b""}
        try:
            source = read_bytes(src) if is_uri(src) else src
            loaded = load_image(source, max_pixels=max_pixels, name=src)
            row.update(width=loaded.rgb.width, height=loaded.rgb.height, rgb=loaded.rgb.tobytes(),
                       alpha=loaded.alpha.tobytes() if loaded.alpha is not None else b"")
        except ImageLoadError as err:
            row["error"] = str(err)
        except OSError as err:  # a remote read that failed
            row["error"] = f"{src}: cannot read ({first_line(err)})"
        rows.append(row)
    return pd.DataFrame(rows)


class _Replica:
    """One model replica: loaded once, then the per-image step and the writes for each batch it is given."""

    def __init__(self, config: BatchConfig) -> None:
        from .runner import load_batch_upscaler

        self.config = config
        files, self.params = find_batch_files(config)  # this node's own caches
        self.upscaler = load_batch_upscaler(config, files, self.params)
        self.out = Folder(config.output)

    def __call__(self, batch):
        import pandas as pd
        from PIL import Image

        config = self.config
        records, loaded = [], []
        for row in batch.itertuples(index=False):
            if row.error:
                records.append(ImageRecord(row.input, self.out.path(output_name(row.input, config.params.format)),
                                           FAILED, row.error))
                continue
            size = (int(row.width), int(row.height))
            alpha = Image.frombytes("L", size, row.alpha) if len(row.alpha) else None
            loaded.append((row.input, LoadedImage(Image.frombytes("RGB", size, row.rgb), alpha)))
        records.extend(upscale_chunk(self.upscaler, config, self.params, loaded, self.out))
        return pd.DataFrame([rec.as_dict() for rec in records],
                            columns=["input", "output", "status", "error", "prompt", "seconds"])


class Manifest:
    """The run's JSONL manifest, one row per input, rewritten whole as records arrive.

    Each write replaces the file at once (a rename locally, one object upload remotely), at most
    every ``interval`` seconds and at the end, so a driver killed mid-run leaves the rows up to its
    last write instead of nothing, and a reader never sees half a file.
    """

    def __init__(self, location: str, interval: float = MANIFEST_INTERVAL_S) -> None:
        if is_uri(location):
            parent, _, self.name = location.rstrip("/").rpartition("/")
        else:
            parent, self.name = str(Path(location).parent), Path(location).name
        self.folder = Folder(parent)
        self.interval = interval
        self._written_at = time.monotonic()

    def update(self, records: list[ImageRecord]) -> None:
        if time.monotonic() - self._written_at >= self.interval:
            self.write(records)

    def write(self, records: list[ImageRecord]) -> None:
        self.folder.write_text(self.name, "".join(json.dumps(rec.as_dict(), ensure_ascii=False) + "\n"
                                                  for rec in records))
        self._written_at = time.monotonic()


def run_on_ray(config: BatchConfig, options: RayOptions) -> int:
    """The CLI's ``--engine ray``: messages, a summary line and the exit status."""
    from tqdm import tqdm

    def report(record: ImageRecord) -> None:
        if record.status == FAILED:
            tqdm.write(f"error: {record.error}", file=sys.stderr)

    summary = run_ray(config, options, on_record=report)
    seconds = summary.seconds
    rate = summary.written / seconds if seconds else 0.0
    print(f"done [ray]: {summary.written} written to {config.output}, {summary.failed} failed, "
          f"{summary.skipped} skipped; {seconds:.1f} s, {rate:.2f} images/s; manifest "
          f"{options.manifest or Folder(config.output).path(MANIFEST_NAME)}")
    return 1 if summary.failed else 0
