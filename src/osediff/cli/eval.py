"""``osediff eval``: the paper's metrics on folders of results, as one comparison table.

Result images are paired with ground truth by file name. Metrics whose weights are neither cached
nor downloadable are skipped with a one-line reason each; the others run. With --lr the model is
run first (the batch runner of ``osediff upscale``) and its outputs are scored alongside any --sr folders.

examples:
  osediff eval --sr results/osediff --gt RealSR/hr --out report/
  osediff eval --sr a/ b/ c/ --gt hr/ --metrics psnr,ssim,niqe
  osediff eval --sr results/ --metrics niqe,musiq           (no-reference only: no --gt needed)
  osediff eval --lr RealSR/lr --gt RealSR/hr --weights osediff.pkl --out report/
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from .extras import check_extras
from .flags import flag_for
from .options import add_model_options, names_from_args
from .parsing import Parser


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="compute the paper's metrics on result folders", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--sr", nargs="+", type=Path, default=[], metavar="DIR", help="result folder(s), one per method")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME",
                   help="method names for --sr, one per folder (default: folder names; one comma-separated "
                        "value is read as a list too)")
    p.add_argument("--gt", type=Path, default=None, metavar="DIR",
                   help="ground-truth folder (needed by PSNR, SSIM, LPIPS, DISTS, FID)")
    p.add_argument("--metrics", default="paper",
                   help="comma-separated: psnr,ssim,lpips,dists,fid,niqe,musiq,maniqa,clipiqa or any pyiqa name "
                        "(default: paper = all of these)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write summary.json, per_image.csv and table.md here")
    p.add_argument("--niqe-params", default=None, metavar="FILE",
                   help="NIQE pristine model: .mat, .npz or a basicsr sdist .tar.gz (or $OSEDIFF_NIQE_PARAMS)")
    p.add_argument("--ignore-unmatched", action="store_true",
                   help="score the file names present in both folders instead of failing on the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)  # the model of --lr; --device and --offline also apply to the metrics
    model = p.add_argument_group("running the model first (--lr)")
    model.add_argument("--lr", type=Path, default=None, metavar="DIR", help="low-resolution inputs to upscale")
    model.add_argument("--sr-out", type=Path, default=None, metavar="DIR",
                       help="where the upscaled images go (default: OUT/sr)")
    model.add_argument("--method-name", default="osediff", help="row name for the model's results")
    model.add_argument("--reuse-sr", action="store_true", help="keep upscaled images already in --sr-out")
    model.add_argument("--upscale-args", default="", metavar="'ARGS'",
                       help="further `osediff upscale` options, quoted, e.g. \"--prompt-extractor dape --dape D.pth\"")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..device import pick_device
    from ..evaluation import EvalOptions, evaluate, resolve_metrics
    from ..evaluation.reports import terminal_table, write_reports

    methods = _methods(args)
    specs = resolve_metrics(args.metrics)
    device = pick_device(args.device)
    if args.gt is None:
        explicit = args.metrics.strip().lower() not in ("paper", "all", "")
        needing = [s.label for s in specs if s.needs_reference]
        if explicit and needing:
            return _fail(f"{', '.join(needing)} compare against ground truth: pass --gt DIR")
        specs = [s for s in specs if not s.needs_reference]
        if needing:
            print(f"note: no --gt, so only no-reference metrics ({', '.join(s.label for s in specs)})",
                  file=sys.stderr)
    if args.lr is not None:
        produced = _upscale(args)
        if isinstance(produced, int):
            return produced
        methods = {args.method_name: produced, **methods}
    if not methods:
        return _fail("nothing to evaluate: pass --sr DIR (results) or --lr DIR (run the model first)")

    options = EvalOptions(device=device, offline=args.offline, niqe_params=args.niqe_params,
                          ignore_unmatched=args.ignore_unmatched, progress=not args.no_progress, name_of=flag_for)
    result = evaluate(methods, args.gt, specs, options)
    if not result.metrics:
        return _fail("no metric could be computed (reasons above)", code=1)
    print(terminal_table(result))
    if args.out is not None:
        written = write_reports(result, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _fail(message: object, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _methods(args: argparse.Namespace) -> dict[str, Path]:
    """Method name -> folder; names default to folder names, made unique with the parent's name."""
    from ..evaluation import EvalInputError

    names = names_from_args(args.names) or []
    if names and len(names) != len(args.sr):
        raise EvalInputError(f"gives {len(names)} names for {len(args.sr)} --sr folders", argument="names")
    if not names:
        plain = [p.resolve().name for p in args.sr]
        names = [f"{p.resolve().parent.name}/{n}" if plain.count(n) > 1 else n
                 for p, n in zip(args.sr, plain, strict=True)]
    if len(set(names)) != len(names) or (args.lr is not None and args.method_name in names):
        raise EvalInputError(f"method names must be unique, got {', '.join(names)}; set them with --names")
    return dict(zip(names, args.sr, strict=True))


def _upscale(args: argparse.Namespace) -> Path | int:
    """Upscale --lr with the batch runner in-process; the folder of results, or an exit status."""
    from . import upscale

    sr_out = args.sr_out or (args.out / "sr" if args.out else None)
    if sr_out is None:
        return _fail("--lr needs --sr-out DIR or --out DIR for the upscaled images")
    # the upscale command's own parser for --upscale-args, so its defaults and checks apply unchanged
    parser = Parser(prog="osediff eval --upscale-args", allow_abbrev=False)
    upscale.add_command(parser.add_subparsers(dest="command"))
    try:
        upscale_args = parser.parse_args(["upscale", str(args.lr), "-o", str(sr_out), "--preset", args.preset,
                                          *shlex.split(args.upscale_args)])
    except SystemExit as exit_:
        return int(exit_.code or 2)
    check_extras(upscale_args)  # e.g. --prompt-extractor dape without the dape extra
    config = upscale.config_from_args(upscale_args)
    model = config.model  # frozen: eval's own model flags make a changed copy
    config.model = dataclasses.replace(model, base=args.base or model.base, weights=args.weights or model.weights,
                                       models_dir=args.models_dir or model.models_dir,
                                       device=args.device, dtype=args.dtype if args.dtype != "auto" else model.dtype,
                                       offline=model.offline or args.offline)
    config.skip_existing = config.skip_existing or args.reuse_sr
    print(f"upscaling {args.lr} into {sr_out}", file=sys.stderr)
    status = upscale.run_local(config)
    if status != 0:
        return _fail(f"upscaling {args.lr} failed (exit status {status}); see the messages above", code=status)
    return sr_out
