"""``osediff demo``: the web page. Loads the model once, then serves a queued Gradio app.

Example images come from ``--examples`` or, when present, ``../shared/benchmarks/realsr/lr``.
Only uploads and names from that server-side list are accepted from the browser.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .options import add_model_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="serve the web demo (needs the 'demo' extra: gradio)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--examples", type=Path, default=None,
                   help="folder of example images (default: RealSR LR if present)")
    p.add_argument("--no-examples", action="store_true", help="offer no examples")
    p.add_argument("--concurrency", type=int, default=1, help="requests run at once (default 1; the rest queue)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait before new ones are refused")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest upload in pixels (default 1024*1024)")
    p.add_argument("--max-output-pixels", type=int, default=4096 * 4096,
                   help="largest result in pixels (default 4096*4096)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--prompt-extractor", default="text", help="extractor selected on the page at first")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # no usage pings from a tool that may run on private machines; set before gradio is imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the demo needs gradio: pip install 'osediff[demo]'", file=sys.stderr)
        return 2
    from ..app.demo import build_demo, launch_demo
    from ..app.examples import default_examples_dir
    from ..app.limits import UploadLimits
    from ..checkpoint import DEFAULT_WEIGHTS
    from ..device import pick_device, pick_dtype
    from ..pipeline import OSEDiffPipeline
    from ..prompts import available_prompt_extractors

    examples = None if args.no_examples else (args.examples or default_examples_dir())
    if examples is not None and not Path(examples).is_dir():
        print(f"error: examples folder {examples} does not exist", file=sys.stderr)
        return 2
    if args.prompt_extractor not in available_prompt_extractors():
        print(f"error: unknown prompt extractor {args.prompt_extractor!r}; choose one of "
              f"{', '.join(available_prompt_extractors())}", file=sys.stderr)
        return 2
    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                          max_output_pixels=args.max_output_pixels)
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        print("loading the model ...", flush=True)
        pipe = OSEDiffPipeline.from_pretrained(args.base, args.weights or DEFAULT_WEIGHTS, device=device,
                                               dtype=dtype, local_files_only=args.offline)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    extractor_kwargs = {"device": device, "dtype": dtype, "local_files_only": args.offline}
    demo = build_demo(pipe, examples, limits=limits, extractor_kwargs=extractor_kwargs,
                      default_extractor=args.prompt_extractor)
    print(f"model on {device} ({dtype}); examples: {examples or 'none'}", flush=True)
    launch_demo(demo, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
                queue_size=args.queue_size, max_file_size=limits.max_bytes)
    return 0
