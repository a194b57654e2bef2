"""``osediff serve``: the HTTP service (Ray Serve + FastAPI) for applications.

POST an image to /v1/upscale and get it back upscaled; /docs has the API. Requests are batched
per replica; a full queue answers 503 with Retry-After. Stops cleanly on SIGTERM or Ctrl-C.
Needs the 'serve' extra: pip install 'osediff[serve]'.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading

from ..limits import SERVE_LIMITS, RequestLimits
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
                       help="requests a replica holds at once (default 2 x --max-batch-size)")
    scale.add_argument("--max-queued-requests", type=int, default=16,
                       help="requests waiting per proxy before 503 (default 16)")
    scale.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    scale.add_argument("--threads", type=int, default=None, help="torch threads per replica (default: its CPUs)")
    scale.add_argument("--ray-address", default=None,
                       help="join this Ray cluster (e.g. auto or ray://head:10001) instead of starting one")
    scale.add_argument("--metrics-port", type=int, default=None,
                       help="Prometheus metrics port of the local Ray node (default: Ray picks one)")
    add_limit_options(p, SERVE_LIMITS)
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="Ray Serve log level (INFO logs every request)")
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
    for flag, value in (("--max-batch-size", args.max_batch_size), ("--max-queued-requests", args.max_queued_requests)):
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.max_ongoing_requests is not None and args.max_ongoing_requests < args.max_batch_size:
        return f"--max-ongoing-requests ({args.max_ongoing_requests}) must be at least --max-batch-size"
    if args.batch_wait_ms < 0 or args.replica_cpus < 0:
        return "--batch-wait-ms >= 0 and --replica-cpus >= 0 are required"
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


def _start_ray(ray, args: argparse.Namespace) -> None:
    """``ray.init``, tried twice when starting a local node: Ray gives its node 30 s to register,
    which a machine busy with other work can miss once."""
    if args.ray_address is None:
        for name, seconds in LOCAL_PROXY_TIMEOUTS.items():
            os.environ.setdefault(name, seconds)
    for attempt in (1, 2):
        try:
            ray.init(address=args.ray_address, include_dashboard=False, _metrics_export_port=args.metrics_port,
                     logging_level=args.log_level)
            return
        except Exception:
            ray.shutdown()
            if attempt == 2 or args.ray_address is not None:
                raise
            print("warning: the local Ray node was slow to start; trying once more", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    problem = _check_options(args)
    if problem:
        return _fail(problem)
    limits = limits_from_args(args)
    import ray  # the serve extra: the CLI's check_extras has said how to install it if missing
    from ray import serve

    from ..device import pick_device
    from ..serve.app import Scaling, build_app, parse_autoscale

    # user errors (OSEDiffError) go up to the CLI's one handler; anything else is a bug with a traceback
    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    config = build_config(args, limits)
    gpus = 1.0 if pick_device(args.device).type == "cuda" else 0.0
    scaling = Scaling(replicas=args.replicas, autoscale=autoscale, max_ongoing_requests=args.max_ongoing_requests,
                      max_queued_requests=args.max_queued_requests, replica_cpus=args.replica_cpus,
                      replica_gpus=gpus)

    print("starting Ray Serve and loading the model ...", flush=True)
    try:
        _start_ray(ray, args)
    except Exception as err:  # Ray raises bare Exceptions for a node that does not come up
        return _fail(f"Ray did not start: {str(err).strip().splitlines()[-1]}")
    # after ray.init, which installs its own fatal-signal handler: SIGTERM must shut down, not dump
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        logging_config = {"log_level": args.log_level}
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=logging_config)
        serve.run(build_app(config, scaling), name="osediff", route_prefix="/", logging_config=logging_config)
        url = f"http://{args.host}:{args.port}"
        print(f"serving on {url} (API docs {url}/docs); SIGTERM or Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping ...", flush=True)
        return 0
    except Exception as err:  # Ray wraps a replica's failure to load in its own exception types
        return _fail(f"the service did not start: {str(err).strip().splitlines()[-1]}")
    finally:
        serve.shutdown()
        ray.shutdown()
