"""``osediff compare``: a figure of bicubic | each method | HQ with zoomed crops, paired by file name."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OptionError
from .options import names_from_args

MIN_PANEL_WIDTH = 16  # narrower panels have no room for a crop


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="side-by-side comparison figure with zoom boxes",
                              description=__doc__, allow_abbrev=False)
    p.add_argument("lq_dir", metavar="LQ_DIR", help="low-quality inputs (shown bicubic-upscaled)")
    p.add_argument("sr_dirs", nargs="+", metavar="SR_DIR", help="one folder of results per method")
    p.add_argument("--gt", default=None, metavar="DIR", help="high-quality references (last column)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output image, e.g. grid.png")
    p.add_argument("--crop", default="auto", help="'auto' (most detailed region per image) or x,y,w,h in HQ pixels")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME",
                   help="column titles for the SR folders, one per folder (default: folder names; one "
                        "comma-separated value is read as a list too)")
    p.add_argument("--zoom", type=float, default=2.0, help="crop magnification in output pixels per image pixel")
    p.add_argument("--limit", type=int, default=None, help="at most N rows")
    p.add_argument("--select", nargs="+", default=None, metavar="NAME", help="these images (file names), in order")
    p.add_argument("--panel-width", type=int, default=256, help="width of each panel in pixels")
    p.add_argument("--no-row-labels", action="store_true", help="leave out the image names on the left")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare_folders
    from ..images import save_image_atomic

    _check_options(args)
    # a CompareError is an OSEDiffError: the CLI prints it in one line and exits with 2
    grid = compare_folders(args.lq_dir, args.sr_dirs, args.gt, names=names_from_args(args.names), crop=args.crop,
                           zoom=args.zoom, limit=args.limit, select=args.select,
                           panel_width=args.panel_width, row_labels=not args.no_row_labels)
    save_image_atomic(grid, args.output, optimize=True)
    print(f"wrote {args.output} ({grid.width}x{grid.height})")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """What the figure's flags can be, before any image is read (the library checks the rest)."""
    from PIL import Image

    if args.panel_width < MIN_PANEL_WIDTH:
        raise OptionError(f"must be at least {MIN_PANEL_WIDTH} (pixels), got {args.panel_width}",
                          argument="panel_width")
    if args.limit is not None and args.limit < 1:
        raise OptionError(f"must be at least 1, got {args.limit}", argument="limit")
    if args.output.suffix.lower() not in Image.registered_extensions():
        raise OptionError(f"{args.output}: not an image file name; end it in .png, .jpg or .webp", argument="output")
