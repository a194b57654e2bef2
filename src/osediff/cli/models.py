"""``osediff models``: the model files a run needs, where they are, and one folder to keep them in.

  osediff models download [--preset osediff|face] [--extractor dape ram caption ...] [--to DIR]
  osediff models list [--models-dir DIR] [--verify]

download fills a models folder with exactly what a run loads (SD-2.1-base's fp32 diffusers files, the
preset's weights, the prompt extractors' files), checks each against its published sha256 where there
is one and records the sha256 of every file, and resumes an interrupted download where it stopped.
Every command that loads a model reads that folder first (--models-dir DIR, else $OSEDIFF_MODELS, else
~/.cache/osediff/models), so it can be copied to a machine without a network or mounted on every node.
list shows where each known file is (models folder, hub cache, osediff cache, or missing) and which
presets and prompt extractors can run offline now.
"""

from __future__ import annotations

import argparse
import sys

from ..presets import DEFAULT_PRESET, PRESETS
from ..prompts import available_prompt_extractors


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="download model files into one folder, and list where they are",
                                   description=__doc__, allow_abbrev=False)
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    download = actions.add_parser("download", help="fetch what a run needs into the models folder",
                                  description="Fetch what a run of --preset with the --extractor prompt extractors "
                                              "loads into the models\nfolder, check and record each file's sha256, "
                                              "and resume an interrupted download.",
                                  allow_abbrev=False)
    download.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                          help="the preset whose weights to fetch")
    download.add_argument("--extractor", nargs="+", action="extend", default=None, metavar="NAME",
                          choices=available_prompt_extractors(),
                          help="prompt extractors whose files to fetch: %(choices)s (default: dape, the default "
                               "of osediff upscale; text and none need no file)")
    download.add_argument("--captioner", default=None,
                          help="hub id of the image-to-text model of --extractor caption (default: "
                               "Salesforce/blip-image-captioning-base)")
    download.add_argument("--to", "--models-dir", dest="to", default=None, metavar="DIR",
                          help="the models folder to fill (default: $OSEDIFF_MODELS, else ~/.cache/osediff/models)")
    download.set_defaults(run=run_download)
    listing = actions.add_parser("list", help="every known model file: where it is, its size, its hash check",
                                 description="Every known model file: where it is (models folder, hub cache, "
                                             "osediff cache, or missing),\nits size and hash check; and which "
                                             "presets and prompt extractors can run offline now.",
                                 allow_abbrev=False)
    listing.add_argument("--models-dir", default=None, metavar="DIR",
                         help="the models folder (default: $OSEDIFF_MODELS, else ~/.cache/osediff/models)")
    listing.add_argument("--verify", action="store_true",
                         help="hash every file now (otherwise a models-folder file is taken as checked when it "
                              "is as it was downloaded)")
    listing.add_argument("--captioner", default=None, help="hub id of the caption extractor's model to look for")
    listing.set_defaults(run=run_list)


class _Bars:
    """One byte progress bar per file being downloaded (on a terminal only), closed when it is done."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.bar = None

    def progress(self, name: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if name != self.name:
            self.close()
            self.name = name
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=name, leave=False,
                            disable=None, file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.name = self.bar = None


def run_download(args: argparse.Namespace) -> int:
    from ..checkpoint import store, store_fill
    from ..checkpoint.fetch import format_size

    extractors = args.extractor if args.extractor is not None else ["dape"]
    folder = store.models_folder(args.to)
    print(f"models folder: {folder}", flush=True)
    bars = _Bars()
    placed: list[store_fill.Placed] = []

    def report(item: store_fill.Placed) -> None:
        bars.close()
        placed.append(item)
        resumed = f"  (from {format_size(item.resumed_from)} on)" if item.action == "resumed" else ""
        print(f"  {item.action:8} {item.name:46} {format_size(item.size):>8}  sha256 {_CHECKS[item.check]}{resumed}",
              flush=True)

    try:
        store_fill.download(args.preset, extractors, to=folder, captioner=args.captioner, on_file=report,
                            on_progress=bars.progress)
    finally:
        bars.close()
    counts = {action: [p for p in placed if p.action == action] for action in ("fetched", "resumed", "copied",
                                                                                "present")}
    parts = [f"{action} {len(items)} ({format_size(sum(p.size for p in items))})"
             for action, items in counts.items() if items]
    total = sum(p.size for p in placed)
    print(f"{len(placed)} files, {format_size(total)}: {', '.join(parts)}; recorded in {folder / store.MANIFEST}")
    return 0


_CHECKS = {"pinned": "verified (pinned)", "hub": "verified (hub)", "recorded": "recorded (none published)"}


def _users(used_by: tuple[str, ...]) -> str:
    presets = [u.split(" ", 1)[1] for u in used_by if u.startswith("preset ")]
    extractors = [u for u in used_by if not u.startswith("preset ")]
    parts = []
    if presets:
        parts.append(f"preset{'s' if len(presets) > 1 else ''} {', '.join(presets)}")
    if extractors:
        parts.append(f"prompts {', '.join(extractors)}")
    return "; ".join(parts)


def run_list(args: argparse.Namespace) -> int:
    from ..checkpoint.fetch import format_size
    from ..checkpoint.store_inventory import inventory

    found = inventory(args.models_dir, verify=args.verify, captioner=args.captioner)
    print(f"models folder: {found.folder}{'' if found.folder.is_dir() else ' (does not exist)'}")
    rows = [("FILE", "WHERE", "SIZE", "SHA256", "USED BY")]
    rows += [(f.name, f.where, format_size(f.size), f.check, _users(f.used_by)) for f in found.files]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    ready = found.ready()
    presets = [name.split(" ", 1)[1] for name in ready if name.startswith("preset ")]
    extractors = [name for name in ready if not name.startswith("preset ")]
    print(f"offline now: presets {', '.join(presets) or 'none'}; prompt extractors {', '.join(extractors)}")
    for name, why in found.offline.items():
        if why is not None:
            print(f"  not offline: {name}: {why}")
    return 0
