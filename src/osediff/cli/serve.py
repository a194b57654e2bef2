"""``osediff serve``: the HTTP service (Ray Serve + FastAPI) for applications.

POST an image to /v1/upscale and get it back upscaled; /docs has the API. A light ingress reads
and checks each request under deadlines, then hands it to the model replicas, which batch; a full
queue answers 503 with Retry-After, every error is JSON with a request id. SIGTERM or Ctrl-C
drains: new requests get 503, those in flight finish (--grace-period-s), then it stops.
Needs the 'serve' extra: pip install 'osediff[serve]'.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import threading

from ..limits import SERVE_LIMITS, RequestLimits
from ..serve.app import Scaling
from ..serve.edge import EdgeSettings
from ..serve.logs import LOG_FORMATS
from .options import add_limit_options, add_model_options, limits_from_args, model_options_from_args


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from ..prompts import available_prompt_extractors

    p = subparsers.add_parser("serve", help="serve the HTTP API on Ray Serve (needs the 'serve' extra)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--api-key-env", metavar="VAR", default=None,
                   help="require the API key held in environment variable VAR (Authorization: Bearer KEY)")
    p.add_argument("--prompt-extractor", action="append", choices=available_prompt_extractors(), default=None,
                   help="extractor to load at start-up (repeatable; the first is the default for requests; "
                        "text and none are always available; default: text, so that the service starts without "
                        "extra downloads; add --prompt-extractor dape to offer the paper's prompts, which "
                        "downloads RAM + DAPE once and needs the 'dape' extra)")
    p.add_argument("--dape", default=None, help="DAPE.pth path or hf:// / URL spec (for dape)")
    p.add_argument("--ram", default=None, help="ram_swin_large_14m.pth path or hf:// / URL spec (dape, ram)")
    p.add_argument("--ram-tags", default=None, help="RAM tag list (folder or ram_tag_list.txt)")
    p.add_argument("--captioner", default=None, help="hub id or folder of an image-to-text model (caption)")
    model = add_model_options(p)
    model.add_argument("--decoder-dtype", default="auto",
                       help="VAE decoder dtype (auto: bf16 on CPUs with native bf16, else --dtype)")
    scale = p.add_argument_group("scaling and batching")
    count = scale.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    count.add_argument("--autoscale", metavar="MIN:MAX", default=None, help="autoscale between MIN and MAX replicas")
    scale.add_argument("--max-batch-size", type=int, default=4, help="requests per model call (default 4)")
    scale.add_argument("--batch-wait-ms", type=float, default=20.0,
                       help="how long a batch waits to fill up (default 20 ms)")
    scale.add_argument("--max-ongoing-requests", type=int, default=None,
                       help="requests a model replica holds at once (default 2 x --max-batch-size)")
    scale.add_argument("--max-queued-requests", type=int, default=16,
                       help="requests waiting for the model, per ingress replica, before 503 (default 16)")
    scale.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    scale.add_argument("--threads", type=int, default=None, help="torch threads per replica (default: its CPUs)")
    scale.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (e.g. auto or ray://head:10001) instead of starting one")
    scale.add_argument("--metrics-port", type=int, default=None,
                       help="Prometheus metrics port of the local Ray node (default: Ray picks one)")
    scale.add_argument("--ingress-replicas", type=int, default=Scaling.ingress_replicas,
                       help=f"replicas of the HTTP ingress (default {Scaling.ingress_replicas})")
    scale.add_argument("--ingress-cpus", type=float, default=Scaling.ingress_cpus,
                       help=f"CPUs reserved per ingress replica (default {Scaling.ingress_cpus:g}; a local Ray "
                            "node adds their sum, rounded up, to its cores)")
    scale.add_argument("--ingress-max-ongoing", type=int, default=Scaling.ingress_max_ongoing,
                       help=f"requests an ingress replica holds at once, uploads included (default "
                            f"{Scaling.ingress_max_ongoing})")
    add_limit_options(p, SERVE_LIMITS)
    edge = p.add_argument_group("clients: timeouts and caps")
    edge.add_argument("--max-requests-per-client", type=int, default=EdgeSettings.max_per_client,
                      help=f"requests one client address may have open at once; more get 429 (default "
                           f"{EdgeSettings.max_per_client}; 0: no cap, e.g. behind a load balancer)")
    edge.add_argument("--read-timeout-s", type=float, default=EdgeSettings.read_timeout_s,
                      help=f"longest pause inside a request body before 408 (default {EdgeSettings.read_timeout_s:g})")
    edge.add_argument("--body-timeout-s", type=float, default=EdgeSettings.body_timeout_s,
                      help=f"time for a whole request body before 408 (default {EdgeSettings.body_timeout_s:g})")
    edge.add_argument("--request-timeout-s", type=float, default=EdgeSettings.request_timeout_s,
                      help=f"time for a whole request, model included, before 504 (default "
                           f"{EdgeSettings.request_timeout_s:g})")
    edge.add_argument("--keep-alive-s", type=int, default=EdgeSettings.keep_alive_s,
                      help=f"an idle keep-alive connection is closed after this (default {EdgeSettings.keep_alive_s})")
    edge.add_argument("--grace-period-s", type=float, default=EdgeSettings.grace_s,
                      help=f"on SIGTERM, time for the requests in flight to finish (default {EdgeSettings.grace_s:g})")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="Ray Serve's own log level (osediff writes one access line per request at any level)")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text, or json: one JSON object per line for log shippers (default text)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false", help="no access line per request")
    p.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check_options(args: argparse.Namespace) -> str | None:
    """The first problem with the options, before anything is loaded."""
    if not 1 <= args.port <= 65535:
        return f"--port must be 1-65535, got {args.port}"
    if args.replicas < 1:
        return f"--replicas must be at least 1, got {args.replicas}"
    for flag, value in (("--max-batch-size", args.max_batch_size), ("--max-queued-requests", args.max_queued_requests),
                        ("--ingress-replicas", args.ingress_replicas),
                        ("--ingress-max-ongoing", args.ingress_max_ongoing)):
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.max_ongoing_requests is not None and args.max_ongoing_requests < args.max_batch_size:
        return f"--max-ongoing-requests ({args.max_ongoing_requests}) must be at least --max-batch-size"
    if args.batch_wait_ms < 0 or args.replica_cpus < 0 or args.ingress_cpus < 0:
        return "--batch-wait-ms >= 0, --replica-cpus >= 0 and --ingress-cpus >= 0 are required"
    if args.api_key_env is not None and not os.environ.get(args.api_key_env):
        return f"--api-key-env {args.api_key_env}: that environment variable is not set or empty"
    return None


def build_config(args: argparse.Namespace, limits: RequestLimits):
    """Find the model files once, here (one line naming every miss), so replicas only read local paths."""
    from ..model_files import weights_spec
    from ..params import UpscaleParams
    from ..presets import get_preset
    from ..serve.engine import ServeConfig

    model = model_options_from_args(args)
    preset = get_preset(model.preset)
    chosen = args.prompt_extractor or ["text"]
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    return ServeConfig.find(
        model, chosen, defaults=UpscaleParams(upscale=preset.upscale, align=preset.align, prompt_extractor=chosen[0]),
        limits=limits, max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait_ms / 1000,
        api_key_sha256=hashlib.sha256(api_key.encode()).hexdigest() if api_key else None,
        threads=args.threads or max(1, int(args.replica_cpus)),
        base_label=args.base or "SD-2.1-base (default mirrors)", weights_label=weights_spec(model),
    )


# Serve gives its HTTP proxy 5 s to answer a readiness check and stops after three misses; while
# the replicas load the model they can hold every core that long (seen on a busy 2-core machine).
# A local node inherits these from this process; a cluster's own settings are left alone.
LOCAL_PROXY_TIMEOUTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


DRIVER_LOG = "osediff.serve.driver"  # the driver's own lines, on stdout in --log-format


def _start_ray(ray, args: argparse.Namespace, scaling: Scaling) -> None:
    """``ray.init``, tried twice when starting a local node: Ray gives its node 30 s to register,
    which a machine busy with other work can miss once."""
    from ..serve.app import local_node_cpus

    local = args.ray_address is None
    for attempt in (1, 2):
        try:
            # "local": a node of our own even where another Ray runs on this machine (never join it unasked)
            ray.init(address="local" if local else args.ray_address, include_dashboard=False,
                     _metrics_export_port=args.metrics_port, logging_level=args.log_level,
                     num_cpus=local_node_cpus(os.cpu_count() or 1, scaling) if local else None)
            return
        except Exception:
            ray.shutdown()
            if attempt == 2 or not local:
                raise
            logging.getLogger(DRIVER_LOG).warning("the local Ray node was slow to start; trying once more")


def set_ray_environment(edge: EdgeSettings, scaling: Scaling, local: bool) -> None:
    """Set before Ray starts (a local node's processes inherit it): the proxy's middleware and its
    settings; log lines forwarded whole (an operator's own choice of the others is kept); for a
    local node, the proxy's patience while the replicas load the model."""
    from ..serve.app import topology
    from ..serve.edge import proxy_environment

    os.environ.update(proxy_environment(edge, topology(scaling)))
    defaults = {"RAY_DEDUP_LOGS": "0"}  # Ray's deduplication would merge access lines
    if edge.log_format == "json":  # nothing but JSON lines on the console: Serve's own logs go to its files
        defaults.update({"RAY_DISABLE_WORKER_LOG_PREFIX": "1", "RAY_SERVE_LOG_TO_STDERR": "0"})
    if local:
        defaults.update(LOCAL_PROXY_TIMEOUTS)
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def run(args: argparse.Namespace) -> int:
    problem = _check_options(args)
    if problem:
        return _fail(problem)
    limits = limits_from_args(args)
    from ..device import pick_device
    from ..serve.app import parse_autoscale
    from ..serve.logs import osediff_logger

    # user errors (OSEDiffError) go up to the CLI's one handler; anything else is a bug with a traceback
    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    edge = EdgeSettings(read_timeout_s=args.read_timeout_s, body_timeout_s=args.body_timeout_s,
                        request_timeout_s=args.request_timeout_s, keep_alive_s=args.keep_alive_s,
                        max_per_client=args.max_requests_per_client, grace_s=args.grace_period_s,
                        log_format=args.log_format, access_log=args.access_log)
    config = build_config(args, limits)
    gpus = 1.0 if pick_device(args.device).type == "cuda" else 0.0
    scaling = Scaling(replicas=args.replicas, autoscale=autoscale, max_ongoing_requests=args.max_ongoing_requests,
                      max_queued_requests=args.max_queued_requests, replica_cpus=args.replica_cpus,
                      replica_gpus=gpus, ingress_replicas=args.ingress_replicas, ingress_cpus=args.ingress_cpus,
                      ingress_max_ongoing=args.ingress_max_ongoing)
    log = osediff_logger(DRIVER_LOG, edge.log_format, stream=sys.stdout)  # the driver's own lines
    set_ray_environment(edge, scaling, local=args.ray_address is None)
    import ray  # the serve extra: the CLI's check_extras has said how to install it if missing
    from ray import serve

    from ..serve.app import start

    log.info("starting Ray Serve and loading the model ...")
    try:
        _start_ray(ray, args, scaling)
    except Exception as err:  # Ray raises bare Exceptions for a node that does not come up
        return _fail(f"Ray did not start: {str(err).strip().splitlines()[-1]}")
    # after ray.init, which installs its own fatal-signal handler: SIGTERM must drain, not dump;
    # a second signal while draining stops at once
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(*_) -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        service = start(config, scaling, edge, host=args.host, port=args.port, log_level=args.log_level)
        url = f"http://{args.host}:{args.port}"
        if args.ray_address is not None:  # the cluster's proxies run the edge middleware only if told to
            from ..serve.app import topology
            from ..serve.edge import proxy_environment

            settings = " ".join(f"{name}='{value}'" for name, value in
                                proxy_environment(edge, topology(scaling)).items())
            log.info(f"on a cluster, the HTTP proxies need in their nodes' environment: {settings}")
        log.info(f"serving on {url} (API docs {url}/docs); SIGTERM or Ctrl-C stops it")
        while not stop.wait(0.5):
            pass
        log.info(f"stopping: new requests get 503; requests in flight have {edge.grace_s:g} s to finish")
        report = service.drain(interrupted=hurry.is_set)
        if report.drained:
            log.info(f"drained in {report.seconds:.1f} s ({report.at_start} request(s) were in flight); stopping")
        elif report.ray_gone:
            log.warning("Ray's own processes stopped under the drain (were they sent the signal too? send it to "
                        "this process alone); stopping")
        else:
            log.warning(f"{report.in_flight} request(s) still in flight after {report.seconds:.1f} s; stopping anyway")
        return 0
    except Exception as err:  # Ray wraps a replica's failure to load in its own exception types
        return _fail(f"the service did not start: {str(err).strip().splitlines()[-1]}")
    finally:
        serve.shutdown()
        ray.shutdown()
