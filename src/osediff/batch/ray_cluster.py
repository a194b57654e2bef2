"""Ray for the batch engine: joining a cluster (or starting a local instance) and sizing the
model replicas from the nodes it has.

A replica must fit on one node (``ray.nodes()``), with a CPU left somewhere for decoding; a cluster
where none fits fails at once in one line, and a job that has no result after a while says what its
replicas ask for and what the nodes have, instead of waiting silently.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence

from ..errors import OSEDiffError
from ..fileio import first_line

CONNECT_TIMEOUT_S = 5.0
WAIT_NOTICE_S = 120.0


class RayEngineError(OSEDiffError):
    """Ray is missing, the cluster cannot be reached, or the cluster failed the job."""


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


def notice_if_waiting(waiting: threading.Event, after_s: float, resources: dict, ray) -> None:
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


def replica_resources(ray, cpus_per_replica: int, replicas: int | None, images: int, chunk: int) -> dict:
    """The replica pool for the live nodes (:func:`plan_replicas`), no larger than the work needs
    (``replicas``: at most so many)."""
    from ray.data import ActorPoolStrategy

    count, per_replica = plan_replicas(_node_resources(ray), cpus_per_replica)
    count = max(1, min(replicas or count, count, -(-images // chunk)))
    return {"compute": ActorPoolStrategy(size=count), **per_replica}


