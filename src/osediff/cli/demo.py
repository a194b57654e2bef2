"""``osediff demo``: the web page. Loads the model once, then serves a queued Gradio app.

Example images come from ``--examples``, else the checkout's ``examples/`` (or, when present,
``../shared/benchmarks/realsr/lr``).
Only uploads and names from that server-side list are accepted from the browser.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..limits import DEMO_LIMITS
from .options import add_limit_options, add_model_options, limits_from_args, model_options_from_args


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from ..prompts import available_prompt_extractors  # light: registers names without importing torch

    p = subparsers.add_parser("demo", help="serve the web demo (needs the 'demo' extra: gradio)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--examples", type=Path, default=None,
                   help="folder of example images (default: the checkout's examples/)")
    p.add_argument("--no-examples", action="store_true", help="offer no examples")
    p.add_argument("--concurrency", type=int, default=1, help="requests run at once (default 1; the rest queue)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait before new ones are refused")
    p.add_argument("--prompt-extractor", default="text", choices=available_prompt_extractors(),
                   help="extractor selected on the page at first; its model may be downloaded at start-up, the "
                        "others are offered only if their files are in the local cache. text (the prompt box "
                        "alone) needs no model, so the demo starts without extra downloads; --prompt-extractor "
                        "dape starts on the paper's prompts (downloads RAM + DAPE once; needs the 'dape' extra)")
    add_limit_options(p, DEMO_LIMITS)
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # no usage pings from a tool that may run on private machines; set before gradio is imported
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _check_options(args)  # gradio itself: the CLI's check_extras (the demo extra), before this runs
    from ..demo.examples import default_examples_dir
    from ..demo.page import build_demo, launch_demo
    from ..demo.service import DemoSettings, UpscaleService
    from ..errors import OSEDiffError
    from ..loading import describe_precision, load_upscaler
    from ..model_files import find_model_files
    from ..presets import get_preset
    from ..prompts import available_prompt_extractors

    examples = None if args.no_examples else (args.examples or default_examples_dir())
    if examples is not None and not Path(examples).is_dir():
        raise OSEDiffError(f"examples folder {examples} does not exist; pass {{argument}} FOLDER or --no-examples",
                           argument="examples")
    limits = limits_from_args(args)
    model = model_options_from_args(args)
    # every file is looked for before anything loads: the chosen extractor's may be downloaded, the
    # others are offered only if their files are in the local caches
    others = [name for name in available_prompt_extractors() if name != args.prompt_extractor]
    files = find_model_files(model, [args.prompt_extractor], optional=others, cached_only=others)
    for name, reason in files.unavailable.items():
        print(f"note: prompt extractor {name!r} is not offered ({reason})", flush=True)
    print("loading the model ...", flush=True)
    upscaler = load_upscaler(model, files)
    service = UpscaleService(upscaler, limits)
    # a plain `kill` (SIGTERM) ends the process like Ctrl-C, so the output folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        preset = get_preset(model.preset)
        defaults = DemoSettings(upscale=preset.upscale, align=preset.align, extractor=args.prompt_extractor)
        demo = build_demo(None, examples, service=service, defaults=defaults)
        print(f"model on {upscaler.device} ({describe_precision(upscaler.pipe)}); examples: {examples or 'none'}",
              flush=True)
        launch_demo(demo, host=args.host, port=args.port, share=args.share, concurrency=args.concurrency,
                    queue_size=args.queue_size, max_file_size=limits.max_bytes,
                    announce=lambda url, public: _announce(url, public, asked=args.share))
    finally:
        service.close()
    return 0


def _check_options(args: argparse.Namespace) -> None:
    from ..errors import OptionError

    if not 1 <= args.port <= 65535:
        raise OptionError(f"must be 1-65535, got {args.port}", argument="port")
    for argument, value in (("concurrency", args.concurrency), ("queue_size", args.queue_size)):
        if value < 1:
            raise OptionError(f"must be at least 1, got {value}", argument=argument)


def _announce(url: str, public: str | None, *, asked: bool) -> None:
    """Where the page is, and how to share it: gradio's own line would say to set share=True in launch()."""
    if public:
        print(f"demo on {url} and {public} (public link); Ctrl-C stops it", flush=True)
    elif asked:
        print(f"demo on {url}; no public link could be made (see above); Ctrl-C stops it", flush=True)
    else:
        print(f"demo on {url}; Ctrl-C stops it (--share also makes a public gradio.live link)", flush=True)
