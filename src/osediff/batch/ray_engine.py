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
from ..images import ImageLoadError, LoadedImage, is_video, load_image
from ..outputs import output_name, plan_outputs
from .config import BatchConfig, BatchConfigError, is_uri, validate
from .manifest import MANIFEST_INTERVAL_S, MANIFEST_NAME, Manifest, new_run_id
from .ray_cluster import WAIT_NOTICE_S, RayEngineError, connect, import_ray, notice_if_waiting, replica_resources
from .runner import (
    FAILED,
    SKIPPED,
    WRITTEN,
    BatchSummary,
    ImageRecord,
    RecordHook,
    chunk_size,
    find_batch_files,
    note_removed,
    plan_videos,
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
    videos = _plan_videos(config, [src for src in plan.todo if is_video(src)], out, summary.add)
    todo = [(src, sources[src], -1) for src in plan.todo if not is_video(src)]
    todo += [(src, sources[src], k) for src, job in videos.items() for k in job.missing()]
    for src in [src for src, job in videos.items() if not job.missing()]:  # every segment done before
        summary.add(_finish_video(src, videos.pop(src), 0.0))
    started_here = connect(options.address) if todo else False
    try:
        if todo:
            _, params = find_batch_files(config)  # fail here, in one line, not in every replica
            _stream(config, options, todo, chunk_size(config, params), _VideoRecords(videos, summary.add))
    finally:
        summary.seconds = time.perf_counter() - started
        manifest.write(summary.records)
        if started_here:
            import_ray().shutdown()
    return summary


def _plan_videos(config: BatchConfig, videos: list[str], out: Folder, record: RecordHook) -> dict:
    """The videos' plans, made here once; their segments are rows of the stream like images. Their
    work folders must be on a file system every node sees."""
    if videos and (is_uri(config.output) and not str(config.output).startswith("file://")):
        raise BatchConfigError(f"videos are written to a local or shared folder, not {strip_query(str(config.output))}",
                               argument="output")
    for src in videos:
        if is_uri(src) and not src.startswith("file://"):
            raise BatchConfigError(f"{src}: videos are read from a local or shared folder, not a URI",
                                   argument="inputs")
    from ..video.runner import prepare_work

    jobs = plan_videos(config, videos, out, record)
    for job in jobs.values():
        prepare_work(job)
    return jobs


class _VideoRecords:
    """Rows of the stream -> records: an image's row is its record; a video's record comes when its
    last segment is done (then muxed here), or at its first failed segment."""

    def __init__(self, videos: dict, record: RecordHook) -> None:
        self.videos, self.record = videos, record
        self.left = {src: len(job.missing()) for src, job in videos.items()}
        self.seconds = dict.fromkeys(videos, 0.0)

    def __call__(self, rec: ImageRecord, segment: int) -> None:
        if segment < 0:
            self.record(rec)
            return
        if rec.input not in self.left:  # the video already failed
            return
        if rec.status == FAILED:
            del self.left[rec.input]
            self.record(rec)
            return
        self.seconds[rec.input] += rec.seconds
        self.left[rec.input] -= 1
        if not self.left[rec.input]:
            del self.left[rec.input]
            self.record(_finish_video(rec.input, self.videos[rec.input], self.seconds[rec.input]))


def _finish_video(src: str, job, seconds: float) -> ImageRecord:
    from ..video.runner import finish_video

    saved = job.work / "prompt.txt"
    prompt = saved.read_text(encoding="utf-8") if saved.is_file() else job.params.prompt
    try:
        finish_video(job)
    except OSEDiffError as err:
        return ImageRecord(src, str(job.output), FAILED, str(err))
    return ImageRecord(src, str(job.output), WRITTEN, "", prompt, seconds,
                       frames=len(job.info.frames), segments=len(job.segments))


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


def _stream(config: BatchConfig, options: RayOptions, todo: list[tuple[str, str, int]], chunk: int,
            record: _VideoRecords) -> None:
    """``todo``: (input, source, segment): the source is the input with its URI's storage query; a
    video's segment number (-1: an image)."""
    from tqdm import tqdm

    ray = import_ray()
    waiting = threading.Event()  # set at the first result
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images, not blocks
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # block-level chatter under our bar
        resources = replica_resources(ray, options.cpus_per_replica, options.replicas, len(todo), chunk)
        items = [{"input": src, "source": source, "segment": segment} for src, source, segment in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(todo) // chunk))
        ds = ds.map_batches(_decode, batch_format="pandas", batch_size=chunk, num_cpus=min(1, resources["num_cpus"]),
                            fn_kwargs={"max_pixels": config.max_pixels, "storage_options": config.storage_options})
        with warnings.catch_warnings():
            # bounded restarts have no named parameter yet (Ray Data's default is to retry forever)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = ds.map_batches(_Replica, batch_format="pandas", batch_size=chunk,
                                fn_constructor_kwargs={"config": config, "videos": record.videos},
                                max_restarts=options.max_restarts,
                                max_task_retries=options.max_restarts, **resources)
        with tqdm(total=len(todo), unit="img", disable=not options.progress, dynamic_ncols=True) as bar:
            notice_if_waiting(waiting, options.wait_notice_s, resources, ray)
            for row in ds.iter_rows():
                waiting.set()
                rec = ImageRecord(**{key: row[key] for key in ("input", "output", "status", "error", "prompt")},
                                  seconds=float(row["seconds"]))
                record(rec, int(row["segment"]))
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
    segments = batch["segment"] if "segment" in batch else [-1] * len(batch["input"])
    for src, source, segment in zip(batch["input"], sources, segments, strict=True):
        row = {"input": src, "error": "", "width": 0, "height": 0, "rgb": b"", "alpha": b"", "segment": segment}
        if segment >= 0:  # a video's segment: its replica decodes it
            rows.append(row)
            continue
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

    def __init__(self, config: BatchConfig, videos: dict | None = None) -> None:
        from .runner import load_batch_upscaler

        self.config, self.videos = config, videos or {}
        files, self.params = find_batch_files(config)  # this node's own caches
        self.upscaler = load_batch_upscaler(config, files, self.params)
        self.out = Folder(config.output, config.storage_options)

    def __call__(self, batch):
        import pandas as pd
        from PIL import Image

        config = self.config
        records, loaded, segments = [], [], []
        for row in batch.itertuples(index=False):
            if row.segment >= 0:
                segments.append(self._segment(row.input, int(row.segment)))
                continue
            if row.error:
                records.append(ImageRecord(row.input, self.out.path(output_name(row.input, config.params.format)),
                                           FAILED, row.error))
                continue
            size = (int(row.width), int(row.height))
            alpha = Image.frombytes("L", size, row.alpha) if len(row.alpha) else None
            loaded.append((row.input, LoadedImage(Image.frombytes("RGB", size, row.rgb), alpha)))
        rows = [{**rec.as_dict(), "segment": -1} for rec in upscale_chunk(self.upscaler, config, self.params, loaded,
                                                                          self.out)]
        rows += [{**rec.as_dict(), "segment": -1} for rec in records] + segments
        return pd.DataFrame(rows, columns=["input", "output", "status", "error", "prompt", "seconds", "segment"])

    def _segment(self, src: str, index: int) -> dict:
        """One segment of a video into its part file (skipped when a retried batch finds it there)."""
        import torch

        from ..video.runner import clip_prompt, upscale_segment

        job, started = self.videos[src], time.perf_counter()
        row = {"input": src, "output": str(job.part(index)), "status": WRITTEN, "error": "", "prompt": "",
               "segment": index}
        try:
            if not job.part(index).is_file():
                upscale_segment(self.upscaler, job, index, clip_prompt(self.upscaler, job), self.config.batch_size)
        except (OSEDiffError, OSError, torch.cuda.OutOfMemoryError) as err:
            said = first_line(err)
            row.update(status=FAILED, error=said if said.startswith(src) else f"{src}: {said}")
        return {**row, "seconds": time.perf_counter() - started}


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
