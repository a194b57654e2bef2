"""How much half precision and tiling change the output, against fp32 untiled on the same image.

    python benchmarks/drift.py --device cuda            # fp16, bf16 and tiled vs fp32, 256->1024
    python benchmarks/drift.py --device cpu --size 128  # bf16 on CPUs with native support
    python benchmarks/drift.py --int8 --size 128        # OpenVINO int8 vs fp32 export (benchmarks/int8_drift.py)

Differences are in 8-bit levels of the final image (0..255); the model is the full-size random
SD-2.1-base of benchmarks/random_model.py unless --base/--weights name real ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import drift, lr_images
from osediff.pipeline import OSEDiffPipeline, TileConfig
from random_model import make_random_model

UNTILED = TileConfig(enabled=False)
SMALL_TILES = TileConfig(latent_tile=64, latent_overlap=16, vae_encoder_tile=512, vae_decoder_tile=48)


def run(pipe: OSEDiffPipeline, image, tiles: TileConfig) -> torch.Tensor:
    return pipe.run(image, 4, "a photo", tiles=tiles, output_type="pt").image * 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=256, help="LR size (x4)")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--int8", action="store_true", help="int8 OpenVINO exports against the fp32 export")
    parser.add_argument("--keep", action="append", default=[],
                        help="with --int8, one more variant: GRAPH=REGEX,REGEX[;GRAPH=...] kept fp32")
    parser.add_argument("--work", type=Path, default=Path("/tmp/osediff-int8-drift"), help="with --int8: exports")
    args = parser.parse_args()
    if args.base is None:
        base, weights = make_random_model(Path("/tmp/osediff-sd21-full"))
        args.base, args.weights = str(base), str(weights)
    if args.int8:
        from _cpu import cpu_line
        from int8_drift import parse_keep, run_int8

        print(f"CPU: {cpu_line()}")
        run_int8(args.base, args.weights, args.size, parse_keep(args.keep), args.work)
        return
    image = lr_images(args.size, 1)[0]
    pipe = OSEDiffPipeline.from_pretrained(args.base, args.weights, device=args.device, dtype="fp32").optimize()
    reference = run(pipe, image, UNTILED)
    rows = [("fp32 tiled (latent 64/16, enc 512 px, dec 48 lat)", run(pipe, image, SMALL_TILES))]
    pipe.optimize(channels_last=False, decoder_dtype=torch.bfloat16)
    rows.append(("fp32, bf16 decoder only", run(pipe, image, UNTILED)))
    for name in args.dtypes.split(","):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
        pipe.to(dtype=dtype)
        rows.append((f"{name} untiled", run(pipe, image, UNTILED)))
    print(f"# drift vs fp32 untiled, {args.size}->{args.size * 4}, device {pipe.device}\n")
    print("| variant | max abs (levels) | mean abs (levels) | PSNR vs fp32 dB |")
    print("|---|---|---|---|")
    for name, out in rows:
        d = drift(out, reference)
        print(f"| {name} | {d['max_levels']:.2f} | {d['mean_levels']:.3f} | {d['psnr_db']:.1f} |")

if __name__ == "__main__":
    main()
