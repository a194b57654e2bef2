"""``osediff compare``: a figure of bicubic | each method | HQ with zoomed crops, paired by file name."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="side-by-side comparison figure with zoom boxes",
                              description=__doc__)
    p.add_argument("lq_dir", metavar="LQ_DIR", help="low-quality inputs (shown bicubic-upscaled)")
    p.add_argument("sr_dirs", nargs="+", metavar="SR_DIR", help="one folder of results per method")
    p.add_argument("--gt", default=None, metavar="DIR", help="high-quality references (last column)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output image, e.g. grid.png")
    p.add_argument("--crop", default="auto", help="'auto' (most detailed region per image) or x,y,w,h in HQ pixels")
    p.add_argument("--names", nargs="+", default=None, help="column titles for the SR folders")
    p.add_argument("--zoom", type=float, default=2.0, help="crop magnification in output pixels per image pixel")
    p.add_argument("--limit", type=int, default=None, help="at most N rows")
    p.add_argument("--select", nargs="+", default=None, metavar="NAME", help="these images (file names), in order")
    p.add_argument("--panel-width", type=int, default=256, help="width of each panel in pixels")
    p.add_argument("--no-row-labels", action="store_true", help="leave out the image names on the left")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare_folders
    from ..images import save_image_atomic

    # a CompareError is an OSEDiffError: the CLI prints it in one line and exits with 2
    grid = compare_folders(args.lq_dir, args.sr_dirs, args.gt, names=args.names, crop=args.crop,
                           zoom=args.zoom, limit=args.limit, select=args.select,
                           panel_width=args.panel_width, row_labels=not args.no_row_labels)
    save_image_atomic(grid, args.output, optimize=True)
    print(f"wrote {args.output} ({grid.width}x{grid.height})")
    return 0
