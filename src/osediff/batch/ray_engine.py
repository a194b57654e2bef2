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

import json
import logging
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
from .storage import Folder, collect_any, read_bytes, strip_query

MANIFEST_NAME = "manifest.jsonl"
CONNECT_TIMEOUT_S = 5.0
MANIFEST_INTERVAL_S = 30.0
WAIT_NOTICE_S = 120.0


class RayEngineError(OSEDiffError):
    """Ray is missing, the cluster cannot be reached, or the cluster failed the job."""


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


def new_run_id() -> str:
    """A run's id in its manifest rows: its UTC start time and 4 random hex digits."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}-{secrets.token_hex(2)}"


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
    except _JoinError as err:
        raise RayEngineError(f"{{argument}} {address}: cannot join the Ray cluster there ({err.reason}); "
                             f"{_hint(err.reason)}", argument="address") from None
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
        where = address or "a local instance"
        reason = first_line(err)
        raise RayEngineError(f"{{argument}} {where}: cannot start or join Ray ({reason}); {_hint(reason)}",
                             argument="address") from None
    return True


def _hint(reason: str) -> str:
    if not _is_auth(reason):
        return "start a cluster with `ray start --head` or leave {argument} out"
    token = ("the cluster's token (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token; "
             "`ray get-auth-token` on the head prints it)")
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":  # without it, Ray sends no token at all
        return f"the cluster uses token authentication: run with RAY_AUTH_MODE=token and {token}"
    return f"the cluster refused this driver's token: give it {token}"


# a line of Ray's C++ log: "[2026-01-01 12:00:00,000 W 123 123] gcs_client.cc:210: what went wrong"
_RAY_LOG_LINE = re.compile(r"\[[^\]]*\]\s*[\w./-]+:\d+:\s*(?P<message>.+)")


class _JoinError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_auth(reason: str) -> bool:
    return any(word in reason for word in ("InvalidAuthToken", "Unauthenticated", "AuthenticationError",
                                           "authentication token", "Authentication token"))


def _join_reason(failed: BaseException, log: str) -> str:
    """Why Ray's client gave up: its exception only says that it could not connect (naming the
    address it resolved), the log it wrote while it retried says why: a refused token first."""
    messages = [match["message"].strip() for line in log.splitlines()
                if (match := _RAY_LOG_LINE.match(line.strip()))]
    auth = [message for message in messages if _is_auth(message)]
    if auth:
        return auth[-1]
    said = first_line(failed)
    return f"{said}: {messages[-1]}" if messages and messages[-1] not in said else said


def _join(ray, address: str) -> None:
    """``ray.init(address)`` with stderr held back: a port that accepts TCP but is no Ray head makes
    Ray's C++ client log a warning a second until it gives up (~20 s). Shown if the join succeeds;
    if it fails, the reason Ray logged (a refused token...) is the error's (:class:`_JoinError`)."""
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        failed: BaseException | None = None
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
            failed = err
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        log = held.read()
        if failed is None:
            os.write(2, log)
            return
        raise _JoinError(_join_reason(failed, log.decode("utf-8", "replace"))) from None


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
    names = [output_name(src, config.params.format) for src in inputs]
    if config.save_prompts:
        names += [str(Path(name).with_suffix(".txt")) for name in names]
    removed = [out.path(name) for name in out.remove_stale_temporaries(names, before)]
    removed += [manifest.folder.path(name) for name in manifest.folder.remove_stale_temporaries([manifest.name],
                                                                                                before)]
    if removed:
        print(f"note: removed {len(removed)} partial file(s) an interrupted run left: {', '.join(removed)}",
              file=sys.stderr)


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
        resources = _replica_resources(ray, options, len(todo), chunk)
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
            _notice_if_waiting(waiting, options.wait_notice_s, resources, ray)
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


def _notice_if_waiting(waiting: threading.Event, after_s: float, resources: dict, ray) -> None:
    """One line on stderr if no result has come ``after_s`` seconds from now: a job whose replicas
    load slowly or cannot be placed says so instead of waiting silently."""
    def notice() -> None:
        if waiting.wait(after_s):
            return
        from tqdm import tqdm

        asks = ", ".join(f"'{name}': {resources[key]:g}" for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"))
                         if key in resources)
        tqdm.write(f"note: no result after {after_s:.0f} s; {resources['compute'].max_size} model replica(s) ask for "
                   f"{{{asks}}} each, on nodes with {_describe_nodes(_node_resources(ray))}: they are loading "
                   "their models, or waiting for those resources (`ray status` lists pending demands)",
                   file=sys.stderr)

    threading.Thread(target=notice, name="osediff-wait-notice", daemon=True).start()


def _node_resources(ray) -> list[dict[str, float]]:
    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive", node.get("alive"))]


def _describe_nodes(nodes: Sequence[Mapping[str, float]]) -> str:
    if not nodes:
        return "no live node"
    parts = []
    for node in nodes:
        gpus = node.get("GPU", 0)
        parts.append(f"{node.get('CPU', 0):g} CPU" + (f" + {gpus:g} GPU" if gpus else ""))
    return f"{len(nodes)} node(s): " + ", ".join(parts)


def plan_replicas(nodes: Sequence[Mapping[str, float]], cpus_per_replica: int) -> tuple[int, dict[str, float]]:
    """How many model replicas the ``nodes`` (each one's total resources, as ``ray.nodes()`` gives
    them) can run at once, and what each asks for; decoding keeps one CPU (half of one where a
    single CPU must do both).

    With GPUs: one replica per GPU with a CPU beside it. Without: ``cpus_per_replica`` CPUs each, at
    most the CPUs of the largest node (a replica runs on one node), one fewer if no other node has a
    CPU left for decoding. Raises :class:`RayEngineError` where no node can host a replica: a job
    that can never start fails in one line rather than waiting for ever.
    """
    cpus = [float(node.get("CPU", 0)) for node in nodes]
    gpus = [float(node.get("GPU", 0)) for node in nodes]
    if any(gpu >= 1 for gpu in gpus):
        if count := _fit(cpus, gpus, 1.0, 1.0):
            return count, {"num_gpus": 1, "num_cpus": 1}
        if any(gpu >= 1 and cpu >= 1 for cpu, gpu in zip(cpus, gpus, strict=True)):
            return 1, {"num_gpus": 1, "num_cpus": 0.5}  # one CPU beside the GPU: shared with decoding
        raise RayEngineError(f"no node of the Ray cluster has a GPU and a CPU for a model replica "
                             f"({_describe_nodes(nodes)}); give the GPU nodes CPUs (`ray start --num-cpus N`)")
    largest = max(cpus, default=0.0)
    if largest < 1:
        raise RayEngineError(f"no node of the Ray cluster has a CPU for a model replica ({_describe_nodes(nodes)}); "
                             "add a node with CPUs (`ray start --address HEAD:PORT --num-cpus N`)")
    for each in dict.fromkeys((min(cpus_per_replica, int(largest)), min(cpus_per_replica, int(largest) - 1))):
        if each >= 1 and (count := _fit(cpus, gpus, float(each), 0.0)):
            return count, {"num_cpus": each}
    return 1, {"num_cpus": 0.5}  # a single CPU: replica and decoding share it


def _fit(cpus: list[float], gpus: list[float], cpu_each: float, gpu_each: float) -> int:
    """Replicas of ``cpu_each`` CPUs (and ``gpu_each`` GPUs) that fit on the nodes, one node each,
    with a whole CPU left on some node for the decoding tasks."""
    counts = [int(cpu // cpu_each) if not gpu_each else int(min(cpu // cpu_each, gpu // gpu_each))
              for cpu, gpu in zip(cpus, gpus, strict=True)]
    left = [cpu - count * cpu_each for cpu, count in zip(cpus, counts, strict=True)]
    while sum(counts) and max(left) < 1:  # give one replica's place to decoding
        index = max((i for i, count in enumerate(counts) if count), key=lambda i: left[i])
        counts[index] -= 1
        left[index] += cpu_each
    return sum(counts)


def _replica_resources(ray, options: RayOptions, images: int, chunk: int) -> dict:
    """The replica pool for the live nodes (:func:`plan_replicas`), no larger than the work needs."""
    from ray.data import ActorPoolStrategy

    count, per_replica = plan_replicas(_node_resources(ray), options.cpus_per_replica)
    count = max(1, min(options.replicas or count, count, -(-images // chunk)))
    return {"compute": ActorPoolStrategy(size=count), **per_replica}


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


class Manifest:
    """The run's JSONL manifest: one row per input, each with the run's id (``run``), below the rows
    of earlier runs, which stay as they were.

    Each write replaces the file at once (a rename locally, one object upload remotely): the first
    as soon as the first record arrives, then at most every ``interval`` seconds, and at the end; so a
    driver killed mid-run leaves the rows up to its last write, and a reader never sees half a file.
    """

    def __init__(self, location: str, interval: float = MANIFEST_INTERVAL_S,
                 options: Mapping[str, Any] | None = None, run: str | None = None) -> None:
        if is_uri(location):
            bare = strip_query(location)
            parent, _, self.name = bare.rstrip("/").rpartition("/")
            parent += location[len(bare):]  # the location's storage query, for its folder
        else:
            parent, self.name = str(Path(location).parent), Path(location).name
        self.folder = Folder(parent, options)
        self.interval = interval
        self.run = run or new_run_id()
        try:
            earlier = self.folder.read_text(self.name) or ""
        except (OSError, UnicodeDecodeError) as err:
            raise BatchConfigError(f"{self.folder.path(self.name)}: cannot read the manifest of earlier runs "
                                   f"({first_line(err)})", argument="manifest") from None
        self._earlier = earlier if not earlier or earlier.endswith("\n") else earlier + "\n"
        self._written_at: float | None = None  # nothing written yet: the first record is written at once

    def update(self, records: list[ImageRecord]) -> None:
        if self._written_at is None or time.monotonic() - self._written_at >= self.interval:
            self.write(records)

    def write(self, records: list[ImageRecord]) -> None:
        self.folder.write_text(self.name, self._earlier + "".join(
            json.dumps({"run": self.run, **rec.as_dict()}, ensure_ascii=False) + "\n" for rec in records))
        self._written_at = time.monotonic()


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
