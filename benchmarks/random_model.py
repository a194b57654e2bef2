"""Write a random-weight SD-2.1-base-shaped model folder and a random osediff.pkl for it.

    python benchmarks/random_model.py --size full --out /tmp/osediff-sd21-full

The full-size architecture has exactly the published model's compute cost, so the CLI and the
benchmarks can be timed here without downloading anything. Re-running with an existing folder
only reports it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from osediff.testing import build_base, random_weights, save_base


def make_random_model(out: Path, size: str = "full", seed: int = 0) -> tuple[Path, Path]:
    weights = out / "osediff.pkl"
    if (out / "unet").is_dir() and weights.is_file():
        return out, weights
    components = build_base(size, seed=seed)
    save_base(components, out)
    random_weights(components, seed=seed + 1).save(weights)
    return out, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--out", type=Path, default=Path("/tmp/osediff-sd21-full"))
    args = parser.parse_args()
    started = time.perf_counter()
    base, weights = make_random_model(args.out, args.size)
    print(f"base: {base}\nweights: {weights}\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
