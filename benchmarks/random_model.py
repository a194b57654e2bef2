"""Write a random-weight SD-2.1-base-shaped model folder and a random osediff.pkl for it.

    python benchmarks/random_model.py --size tiny     # seconds; for trying every command offline
    python benchmarks/random_model.py --size full     # the published model's shapes, for timing

Nothing is downloaded, so the commands can be tried (and, at full size, timed: the architecture has
exactly the published model's compute cost) without network access. The weights are random: the
outputs are noise, not super-resolved images. There are no RAM/DAPE weights either, so give the
commands --prompt-extractor text; the commands to paste are printed at the end. Re-running with an
existing folder only reports it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

from osediff.testing import build_base, random_weights, save_base


def default_out(size: str) -> Path:
    """Where a model of ``size`` goes unless --out says otherwise (the other benchmarks look there too)."""
    return Path(tempfile.gettempdir()) / f"osediff-sd21-{size}"


def make_random_model(out: Path, size: str = "full", seed: int = 0) -> tuple[Path, Path]:
    """The base folder and weights of a random model of ``size`` in ``out``, made unless already there."""
    weights = out / "osediff.pkl"
    if (out / "unet").is_dir() and weights.is_file():
        found = existing_size(out)
        if found != size:  # e.g. a tiny model written where the full one is looked for
            raise SystemExit(f"{out} holds a {found} random model, not a {size} one: remove it or choose "
                             "another folder")
        return out, weights
    components = build_base(size, seed=seed)
    save_base(components, out)
    random_weights(components, seed=seed + 1).save(weights)
    return out, weights


def existing_size(out: Path) -> str:
    """The size of the random model in ``out``, from its UNet's config."""
    config = json.loads((out / "unet" / "config.json").read_text())
    return "full" if config.get("cross_attention_dim") == 1024 else "tiny"


def try_commands(base: Path, weights: Path, size: str) -> list[str]:
    """The commands that use the model: upscale the checkout's examples, the demo and the service."""
    model = f"--base {shlex.quote(str(base))} --weights {shlex.quote(str(weights))} --prompt-extractor text --offline"
    return [f"osediff upscale examples -o outputs/{size} {model}",
            f"osediff demo {model}",
            f"osediff serve {model}"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--size", choices=("tiny", "full"), default="full",
                        help="tiny: a few MB, runs in seconds on a CPU; full: the published SD-2.1-base shapes "
                             "(about 5 GB on disk), for timing (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder to write (default: {default_out('SIZE')}, by --size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    out = args.out or default_out(args.size)
    started = time.perf_counter()
    base, weights = make_random_model(out, args.size, seed=args.seed)
    print(f"base: {base}\nweights: {weights}\n({time.perf_counter() - started:.0f} s)")
    print("\ntry it from the checkout's root (no network needed; random weights: the outputs are noise):")
    for command in try_commands(base, weights, args.size):
        print(f"  {command}")


if __name__ == "__main__":
    main()
