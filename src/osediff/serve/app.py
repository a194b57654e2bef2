"""Build the Ray Serve application: replicas or autoscaling, bounded queues, resources per replica."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError
from .engine import ServeConfig

RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Scaling:
    """How many replicas, and how much work each may hold before the proxy answers 503.

    ``max_ongoing_requests`` is per replica (the one running batch plus the next one forming);
    ``max_queued_requests`` is what each proxy holds when every replica is full. Both bounded.
    """

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max)
    max_ongoing_requests: int | None = None  # default: 2 * max_batch_size
    max_queued_requests: int = 16
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    graceful_shutdown_s: float = 5.0


class ScalingError(OptionError):
    """A replica or autoscaling option that cannot work."""


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` with 0 <= MIN <= MAX and MAX >= 1."""
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise ScalingError(f"takes MIN:MAX (e.g. 1:4), got {text!r}", argument="autoscale") from None
    if not 0 <= low <= high or high < 1:
        raise ScalingError(f"MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {text!r}", argument="autoscale")
    return low, high


def build_app(config: ServeConfig, scaling: Scaling | None = None):
    """The bound application for :func:`ray.serve.run`."""
    from .deployment import OSEDiffServer

    scaling = scaling or Scaling()
    ongoing = scaling.max_ongoing_requests or 2 * config.max_batch_size
    options: dict = {
        "max_ongoing_requests": max(ongoing, config.max_batch_size),
        "max_queued_requests": scaling.max_queued_requests,
        "ray_actor_options": {"num_cpus": scaling.replica_cpus, "num_gpus": scaling.replica_gpus},
        "graceful_shutdown_timeout_s": scaling.graceful_shutdown_s,
        "graceful_shutdown_wait_loop_s": min(2.0, scaling.graceful_shutdown_s),
    }
    backpressure = _backpressure_config()
    if backpressure is not None:
        options["backpressure_config"] = backpressure
    if scaling.autoscale is not None:
        low, high = scaling.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": high, "initial_replicas": max(1, low),
            # a replica is busy enough when a full batch waits behind the running one
            "target_ongoing_requests": max(1, config.max_batch_size),
        }
    else:
        options["num_replicas"] = scaling.replicas
    return OSEDiffServer.options(**options).bind(config)


def _backpressure_config():
    """503 with ``Retry-After`` when the queue is full (Ray Serve versions with BackpressureConfig)."""
    try:
        from ray.serve.config import BackpressureConfig
    except ImportError:
        return None
    return BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S)
