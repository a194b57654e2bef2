"""``--engine ray``: the batch runner's steps as a Ray Data stream over a cluster.

Decoding runs in CPU tasks; a pool of actors, one model replica each (one per GPU, or one per
``cpus_per_replica`` CPUs on clusters without GPUs), runs prompts, the model and the atomic writes
with the same output names as the single-process runner, through the same per-image step. A replica
that dies is restarted and its batch retried by Ray (bounded by ``max_restarts``). Every input gets
one manifest row (run, input, output, status, error, prompt, seconds), written at the first result
and then as the job runs, below the rows of earlier runs; with ``skip_existing`` (``--skip-existing``)
a re-run skips inputs whose output exists, so the same command resumes an interrupted job, and it
first deletes the hidden temporaries an interrupted run's atomic writes left beside its outputs.

Replicas are sized from the nodes (``ray.nodes()``): a replica must fit on one node with a CPU left
somewhere for decoding, and a cluster where none fits fails at once in one line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import OSEDiffError
from ..fileio import first_line
from ..images import ImageLoadError, LoadedImage, load_image
from ..outputs import output_name, plan_outputs
from .config import BatchConfig, BatchConfigError, is_uri, validate
from .manifest import MANIFEST_INTERVAL_S, MANIFEST_NAME, Manifest, new_run_id
from .ray_cluster import WAIT_NOTICE_S, RayEngineError, connect, import_ray, notice_if_waiting, replica_resources
from .runner import (
    FAILED,
    SKIPPED,
    BatchSummary,
    ImageRecord,
    RecordHook,
    chunk_size,
    find_batch_files,
    note_removed,
    remove_stale_temporaries,
    upscale_chunk,
)
from .storage import Folder, collect_any, read_bytes, strip_query

__all__ = ["MANIFEST_NAME", "Manifest", "RayEngineError", "RayOptions", "connect", "import_ray", "run_on_ray",
           "run_ray"]

@dataclass
class RayOptions:
    address: str | None = None  # None: a local Ray instance; "auto": the one `ray start` runs here
    manifest: str | None = None  # default: OUTPUT/manifest.jsonl
    manifest_every_s: float = MANIFEST_INTERVAL_S  # how often it is rewritten while the job runs
    cpus_per_replica: int = 8  # clusters without GPUs
    replicas: int | None = None  # at most; default: as many as the nodes can host (plan_replicas)
    max_restarts: int = 3  # per replica; a dead replica's batch is retried as often
    progress: bool = True
    run_id: str | None = None  # the manifest rows' "run"; default: new_run_id()
    wait_notice_s: float = WAIT_NOTICE_S  # no result after this long: say what the job waits for


def run_ray(config: BatchConfig, options: RayOptions, on_record: RecordHook | None = None) -> BatchSummary:
    """The whole job on Ray; every input gets one record, also written to the manifest."""
    started, started_at = time.perf_counter(), time.time()
    import_ray()  # the one-line install hint comes before anything else
    if config.world > 1:
        raise BatchConfigError("shares the inputs itself: run it once, not under accelerate/torchrun",
                               argument="engine")
    validate(config, remote_ok=True)
    if options.cpus_per_replica < 1:
        raise BatchConfigError(f"must be >= 1, got {options.cpus_per_replica}", argument="cpus_per_replica")
    config = _as_every_node_sees_it(config)
    sources: dict[str, str] = {}  # input as named in records -> as read: absolute, or with its URI's storage query
    for source in collect_any([str(spec) for spec in config.inputs], config.storage_options):
        sources.setdefault(strip_query(source), source if is_uri(source) else os.path.abspath(source))
    if not sources:
        raise BatchConfigError("no input images found")
    inputs = list(sources)
    out = Folder(config.output, config.storage_options)
    if options.manifest:
        manifest = Manifest(options.manifest, options.manifest_every_s, config.storage_options, options.run_id)
    else:
        manifest = Manifest(out.path(MANIFEST_NAME), options.manifest_every_s, out.options, options.run_id)

    def on_each(record: ImageRecord) -> None:
        if on_record is not None:
            on_record(record)
        manifest.update(summary.records)

    summary = BatchSummary(strip_query(str(config.output)), on_record=on_each)
    fmt = config.params.format
    plan = plan_outputs(inputs, fmt, exists=out.exists, skip_existing=config.skip_existing)
    _remove_stale_temporaries(config, out, manifest, [src for src in inputs if src not in plan.clashes],
                              started_at)
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
            _stream(config, options, [(src, sources[src]) for src in plan.todo], chunk_size(config, params),
                    summary.add)
    finally:
        summary.seconds = time.perf_counter() - started
        manifest.write(summary.records)
        if started_here:
            import_ray().shutdown()
    return summary


def _as_every_node_sees_it(config: BatchConfig) -> BatchConfig:
    """Local folders as absolute paths: a replica's working folder is not the driver's (on a cluster
    started with `ray start`, a relative output would be written beside each worker instead)."""
    def absolute(path):
        return Path(os.path.abspath(Path(path).expanduser()))

    return replace(config, output=config.output if is_uri(config.output) else absolute(config.output),
                   prompts_from=None if config.prompts_from is None else absolute(config.prompts_from))


def _remove_stale_temporaries(config: BatchConfig, out: Folder, manifest: Manifest, inputs: list[str],
                              before: float) -> None:
    """What a killed run's atomic writes left beside this job's outputs and manifest (local folders)."""
    removed = remove_stale_temporaries(config, out, inputs, before)
    removed += [manifest.folder.path(name) for name in manifest.folder.remove_stale_temporaries([manifest.name],
                                                                                                before)]
    note_removed(removed)


def _stream(config: BatchConfig, options: RayOptions, todo: list[tuple[str, str]], chunk: int, record) -> None:
    """``todo``: (input, source) pairs, the source being the input with its URI's storage query."""
    from tqdm import tqdm

    ray = import_ray()
    waiting = threading.Event()  # set at the first result
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images, not blocks
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # block-level chatter under our bar
        resources = replica_resources(ray, options.cpus_per_replica, options.replicas, len(todo), chunk)
        items = [{"input": src, "source": source} for src, source in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(todo) // chunk))
        ds = ds.map_batches(_decode, batch_format="pandas", batch_size=chunk, num_cpus=min(1, resources["num_cpus"]),
                            fn_kwargs={"max_pixels": config.max_pixels, "storage_options": config.storage_options})
        with warnings.catch_warnings():
            # bounded restarts have no named parameter yet (Ray Data's default is to retry forever)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = ds.map_batches(_Replica, batch_format="pandas", batch_size=chunk,
                                fn_constructor_kwargs={"config": config}, max_restarts=options.max_restarts,
                                max_task_retries=options.max_restarts, **resources)
        with tqdm(total=len(todo), unit="img", disable=not options.progress, dynamic_ncols=True) as bar:
            notice_if_waiting(waiting, options.wait_notice_s, resources, ray)
            for row in ds.iter_rows():
                waiting.set()
                rec = ImageRecord(**{key: row[key] for key in ("input", "output", "status", "error", "prompt")},
                                  seconds=float(row["seconds"]))
                record(rec)
                bar.update()
    except ray.exceptions.RayError as err:
        raise RayEngineError(f"the Ray job failed: {str(err).strip().splitlines()[-1]}") from None
    finally:
        waiting.set()


def _decode(batch, max_pixels: int | None, storage_options: Mapping[str, Any] | None = None):
    """CPU task: read and decode each input to raw RGB (+ alpha) bytes, or its one-line error.

    An input that cannot be read (an unreachable store, a missing or unreadable object) or decoded
    fails its own row only; the job goes on."""
    import pandas as pd
    from pyarrow import ArrowException

    rows = []
    sources = batch["source"] if "source" in batch else batch["input"]
    for src, source in zip(batch["input"], sources, strict=True):
        row = {"input": src, "error": "", "width": 0, "height": 0, "rgb": b"", "alpha": b""}
        try:
            data = read_bytes(source, storage_options) if is_uri(source) else source
            loaded = load_image(data, max_pixels=max_pixels, name=src)
            row.update(width=loaded.rgb.width, height=loaded.rgb.height, rgb=loaded.rgb.tobytes(),
                       alpha=loaded.alpha.tobytes() if loaded.alpha is not None else b"")
        except ImageLoadError as err:
            row["error"] = str(err)
        except (OSEDiffError, OSError, ArrowException) as err:  # the storage failed to give its bytes
            said = first_line(err)
            row["error"] = said if said.startswith(f"{src}: ") else f"{src}: cannot read ({said})"
        rows.append(row)
    return pd.DataFrame(rows)


class _Replica:
    """One model replica: loaded once, then the per-image step and the writes for each batch it is given."""

    def __init__(self, config: BatchConfig) -> None:
        from .runner import load_batch_upscaler

        self.config = config
        files, self.params = find_batch_files(config)  # this node's own caches
        self.upscaler = load_batch_upscaler(config, files, self.params)
        self.out = Folder(config.output, config.storage_options)

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


def run_on_ray(config: BatchConfig, options: RayOptions) -> int:
    """The CLI's ``--engine ray``: messages, a summary line and the exit status."""
    from tqdm import tqdm

    def report(record: ImageRecord) -> None:
        if record.status == FAILED:
            tqdm.write(f"error: {record.error}", file=sys.stderr)

    options = replace(options, run_id=options.run_id or new_run_id())
    summary = run_ray(config, options, on_record=report)
    seconds = summary.seconds
    rate = summary.written / seconds if seconds else 0.0
    where = options.manifest or Folder(config.output, config.storage_options).path(MANIFEST_NAME)
    print(f"done [ray]: {summary.written} written to {strip_query(str(config.output))}, {summary.failed} failed, "
          f"{summary.skipped} skipped; {seconds:.1f} s, {rate:.2f} images/s; manifest {where} (run {options.run_id})")
    return 1 if summary.failed else 0
