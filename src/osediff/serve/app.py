"""Build and run the Ray Serve application: a light ingress in front of the model deployment.

    client ──> Ray's HTTP proxy (uvicorn + edge.EdgeMiddleware: request id, per-client cap, the
               probes, JSON for Ray's own errors, access log; keep-alive and end-to-end timeouts)
           ──> OSEDiffIngress x ingress_replicas (a fraction of a CPU each, many slots): reads the body
               under its deadlines, checks it, answers /healthz and /readyz, maps errors to JSON
           ──> OSEDiffModel x replicas (handle call; serve.batch): the model, nothing but checked work

:func:`start` runs it (``serve.start`` with the HTTP options, the drain control, ``serve.run``);
:meth:`Service.drain` is the SIGTERM path (:mod:`.control`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import OptionError
from .edge import EdgeSettings, Topology
from .engine import ServeConfig

RETRY_AFTER_S = 1.0
APP_NAME = "osediff"
MODEL = "OSEDiffModel"
INGRESS = "OSEDiffIngress"


@dataclass(frozen=True)
class Scaling:
    """How many replicas of each deployment, and how much work each may hold.

    Model: ``max_ongoing_requests`` per replica (the running batch plus the next one forming);
    ``max_queued_requests`` per caller, i.e. per ingress replica: past it the ingress answers a JSON
    503 with ``Retry-After``. Ingress: ``ingress_replicas`` of ``ingress_cpus`` each, each holding up to
    ``ingress_max_ongoing`` requests (mostly uploads and waits), ``ingress_max_queued`` more at the proxy.
    """

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max)
    max_ongoing_requests: int | None = None  # default: 2 * max_batch_size
    max_queued_requests: int = 16
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    graceful_shutdown_s: float = 5.0
    model_niceness: int = 10  # the model thread's CPU priority below the proxy's and the ingress's
    ingress_replicas: int = 2
    ingress_cpus: float = 0.1
    ingress_max_ongoing: int = 128
    ingress_max_queued: int = 64

    @property
    def ingress_cpu_total(self) -> float:
        return self.ingress_replicas * self.ingress_cpus


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


def topology(scaling: Scaling) -> Topology:
    """The names the proxy's middleware and the replicas look for, for this scaling."""
    return Topology(app=APP_NAME, model=MODEL, ingress=INGRESS,
                    scales_to_zero=scaling.autoscale is not None and scaling.autoscale[0] == 0)


def local_node_cpus(cores: int, scaling: Scaling) -> int:
    """The CPUs a local Ray node declares: the machine's cores plus the ingress's share rounded up, so
    that ``--replicas N`` of one CPU each still fits N cores (the ingress mostly waits on sockets)."""
    return cores + math.ceil(scaling.ingress_cpu_total)


def build_app(config: ServeConfig, scaling: Scaling | None = None, edge: EdgeSettings | None = None,
              control=None):
    """The bound application for :func:`ray.serve.run`: the ingress, bound to the model's handle."""
    from .ingress import OSEDiffIngress
    from .model import OSEDiffModel

    scaling = scaling or Scaling()
    edge = edge or EdgeSettings()
    ongoing = scaling.max_ongoing_requests or 2 * config.max_batch_size
    options: dict = {
        "name": MODEL,
        "max_ongoing_requests": max(ongoing, config.max_batch_size),
        "max_queued_requests": scaling.max_queued_requests,
        "ray_actor_options": {"num_cpus": scaling.replica_cpus, "num_gpus": scaling.replica_gpus},
        "graceful_shutdown_timeout_s": scaling.graceful_shutdown_s,
        "graceful_shutdown_wait_loop_s": min(2.0, scaling.graceful_shutdown_s),
        # a replica that died is noticed (and /readyz says so) within seconds, not Serve's default 10
        "health_check_period_s": 2.0,
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
    model = OSEDiffModel.options(**options).bind(config, edge.log_format, scaling.model_niceness)
    ingress_options: dict = {
        "name": INGRESS, "num_replicas": scaling.ingress_replicas,
        "max_ongoing_requests": scaling.ingress_max_ongoing, "max_queued_requests": scaling.ingress_max_queued,
        "ray_actor_options": {"num_cpus": scaling.ingress_cpus},
        "graceful_shutdown_timeout_s": scaling.graceful_shutdown_s,
        "graceful_shutdown_wait_loop_s": min(2.0, scaling.graceful_shutdown_s),
    }
    if backpressure is not None:
        ingress_options["backpressure_config"] = backpressure
    return OSEDiffIngress.options(**ingress_options).bind(config, model, edge, control, MODEL,
                                                          topology(scaling).scales_to_zero)


def _backpressure_config():
    """503 with ``Retry-After`` when a queue is full (Ray Serve versions with BackpressureConfig)."""
    try:
        from ray.serve.config import BackpressureConfig
    except ImportError:
        return None
    return BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S)


def http_options(host: str, port: int, edge: EdgeSettings) -> dict:
    """The proxy's HTTP options: idle keep-alive connections close after ``keep_alive_s``; a request
    still open a little after ``request_timeout_s`` (the ingress answers 504 first) is cut by the
    proxy (408, JSON through the edge middleware). Ray exposes no header timeout: a connection that
    never finishes its headers holds a socket of the proxy, never a replica."""
    return {"host": host, "port": port, "keep_alive_timeout_s": int(edge.keep_alive_s),
            "request_timeout_s": edge.request_timeout_s + 5}


def serve_logging(log_level: str, edge: EdgeSettings) -> dict:
    return {"log_level": log_level, "encoding": "JSON" if edge.log_format == "json" else "TEXT"}


@dataclass
class Service:
    """A running application and its drain control."""

    control: object
    edge: EdgeSettings
    scaling: Scaling = field(default_factory=Scaling)

    def drain(self, interrupted=lambda: False):
        from .control import drain

        return drain(self.control, self.edge.grace_s, interrupted=interrupted)


def start(config: ServeConfig, scaling: Scaling, edge: EdgeSettings, *, host: str, port: int,
          log_level: str = "WARNING") -> Service:
    """Start Serve's proxy with the HTTP options and deploy the application (Ray is initialised, with
    :func:`~osediff.serve.edge.proxy_environment` of ``edge`` and :func:`topology` in its environment)."""
    from ray import serve

    from .control import start_control

    logging_config = serve_logging(log_level, edge)
    control = start_control(topology(scaling))
    serve.start(http_options=http_options(host, port, edge), logging_config=logging_config)
    serve.run(build_app(config, scaling, edge, control), name=APP_NAME, route_prefix="/",
              logging_config=logging_config)
    return Service(control, edge, scaling)
