"""Inference speed and memory: osediff vs the authors' approach vs a 50-step diffusion SR baseline.

    python benchmarks/inference.py                       # CPU here: 128->512 and 256->1024
    python benchmarks/inference.py --large --folder 16   # + 512->2048 (tiled) and a 16-image folder

Every configuration runs in its own process (so peak RSS is its own) on a full-size SD-2.1-base
architecture: real weights with --base/--weights, else random ones written once by
benchmarks/random_model.py (identical cost). Rows:

  (a) ours     merged LoRA, channels_last VAE, default dtype for the device (fp32 on CPU, with the
               decoder in bf16 where the CPU has native bf16), and as `osediff upscale --prompt`
               does, the fixed prompt encoded at load time and the text encoder freed
  (b) authors  unmerged peft adapters, sampled latent, text encoder run per image, fp32 on CPU
               (their code's only CPU option) and the same half precision as (a) on GPU
  (c) 50-step  the cost class of StableSR/SeeSR/DiffBIR samplers on the same backbone: VAE encode +
               50 x (one classifier-free-guided UNet step, batch 2) + VAE decode, each measured
  (c+) 50-step as (c), plus the ControlNet branch SeeSR and DiffBIR run beside the UNet at every
               step (a ControlNet copy of the UNet's encoder, batch 2); their full per-step cost

Seconds are medians over --repeats runs after one warm-up; memory is peak RSS on CPU and peak
allocated memory on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import PROMPT, cfg_unet_step, lr_images, peak_memory_gib

STAGES = ("prompt", "vae_encode", "unet", "vae_decode", "colour")


def measure(cfg: dict) -> dict:
    """One configuration in this process; returns median seconds per stage and peak memory."""
    import torch

    from osediff.device import pick_decoder_dtype
    from osediff.pipeline import OSEDiffPipeline, TileConfig

    authors = cfg["method"] == "authors"
    pipe = OSEDiffPipeline.from_pretrained(cfg["base"], cfg["weights"], device=cfg["device"], dtype=cfg["dtype"],
                                           merge_lora=not authors,
                                           prompts=None if authors else [PROMPT, ""])  # "": (c)'s unconditional
    device = pipe.device
    decoder_dtype = pick_decoder_dtype("auto", device, pipe.dtype)
    if not authors:
        pipe.optimize(channels_last=True, compile_unet=cfg.get("compile", False), decoder_dtype=decoder_dtype)
    if cfg["method"] == "preview":
        pipe.use_preview_decoder(preview_decoder(cfg.get("preview_decoder")))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tiles = TileConfig(latent_tile=cfg.get("latent_tile"))  # None: sized from the memory budget
    images = lr_images(cfg["size"], cfg["repeats"] + 1)
    runs = []
    for image in images:  # a plain call keeps no prompt cache: the authors' form encodes the prompt every time
        result = pipe.run(image, 4, PROMPT, tiles=tiles, latent="sample" if authors else "mode", seed=0)
        runs.append(result.timings)
    timed = runs[1:] or runs  # --large runs once, without a warm-up
    out = {stage: statistics.median(r[stage] for r in timed) for stage in STAGES}
    if cfg["method"].startswith("multistep"):
        control = cfg["method"] == "multistep+control"
        out["unet"] = cfg["steps"] * cfg_unet_step(pipe, cfg["size"] * 4 // 8, cfg["repeats"], control)
    out["total"] = sum(out[stage] for stage in STAGES)
    out["peak_gib"] = peak_memory_gib(device)
    out["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out["dtype"] = str(pipe.dtype).removeprefix("torch.")
    if cfg["method"] == "preview":
        out["dtype"] += " (TAESD decoder)"
    elif not authors and decoder_dtype != pipe.dtype:
        out["dtype"] += f" ({str(decoder_dtype).removeprefix('torch.')} decoder)"
    return out


def preview_decoder(path: str | None):
    """TAESD from ``path``, else diffusers' AutoencoderTiny with its default (TAESD) shape and random
    weights: the same cost, but its output says nothing about quality."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(path) if path else AutoencoderTiny().eval()


def folder_throughput(cfg: dict) -> dict:
    """Images per second over a folder through the CLI's path (loading excluded)."""
    from osediff.device import pick_decoder_dtype
    from osediff.pipeline import OSEDiffPipeline

    pipe = OSEDiffPipeline.from_pretrained(cfg["base"], cfg["weights"], device=cfg["device"], dtype=cfg["dtype"],
                                           prompts=[PROMPT])
    pipe.optimize(decoder_dtype=pick_decoder_dtype("auto", pipe.device, pipe.dtype))
    images = lr_images(cfg["size"], cfg["count"])
    pipe.run(images[0], 4, PROMPT)
    start = time.perf_counter()
    for image in images:
        pipe.run(image, 4, PROMPT)
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds,
            "peak_gib": peak_memory_gib(pipe.device)}


def in_subprocess(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(name: str, r: dict, ours: dict | None) -> str:
    if "error" in r:
        return f"| {name} | error: {r['error']} |"
    ratio = f"{r['total'] / ours['total']:.1f}x" if ours and "total" in ours else "1.0x"
    stages = " | ".join(f"{r[s]:.3f}" for s in STAGES)
    return f"| {name} | {r['dtype']} | {stages} | {r['total']:.3f} | {r['peak_gib']:.2f} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base", default=None, help="SD-2.1-base folder (default: random full-size model)")
    parser.add_argument("--weights", default=None, help="osediff.pkl (default: random)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="dtype for (a) and, on GPU, (b)")
    parser.add_argument("--sizes", default="128,256", help="LR sizes, x4 each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="steps of the multi-step baseline")
    parser.add_argument("--large", action="store_true", help="also 512->2048 (tiled); 1024->4096 on CUDA")
    parser.add_argument("--folder", type=int, default=0, help="throughput over this many 128 px images")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet in (a)")
    parser.add_argument("--preview-decoder", default=None,
                        help="TAESD folder (AutoencoderTiny) for the preview row; default: random weights")
    parser.add_argument("--random-model", type=Path, default=Path("/tmp/osediff-sd21-full"))
    args = parser.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        print(json.dumps(folder_throughput(cfg) if cfg["method"] == "folder" else measure(cfg)))
        return

    if args.base is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from random_model import make_random_model

        base, weights = make_random_model(args.random_model)
        args.base, args.weights = str(base), str(weights)
    import torch

    from osediff.device import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = str(pick_dtype(args.dtype, device)).removeprefix("torch.")
    authors_dtype = "float32" if device.type == "cpu" else dtype
    common = {"base": args.base, "weights": args.weights, "device": str(device), "repeats": args.repeats}
    print(f"# osediff inference benchmark on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"
          f" ({os.cpu_count()} cores), torch {torch.__version__}\n")
    print("| config | dtype | prompt s | VAE enc s | UNet s | VAE dec s | colour s | total s | peak GiB | vs (a) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        label = f"{size}->{size * 4}"
        ours = in_subprocess({**common, "method": "ours", "size": size, "dtype": dtype, "compile": args.compile})
        print(row(f"(a) ours {label}", ours, None), flush=True)
        authors = in_subprocess({**common, "method": "authors", "size": size, "dtype": authors_dtype})
        print(row(f"(b) authors {label}", authors, ours), flush=True)
        multistep = in_subprocess({**common, "method": "multistep", "size": size, "dtype": dtype,
                                   "steps": args.steps})
        print(row(f"(c) {args.steps}-step {label}", multistep, ours), flush=True)
        control = in_subprocess({**common, "method": "multistep+control", "size": size, "dtype": dtype,
                                 "steps": args.steps})
        print(row(f"(c+) {args.steps}-step + ControlNet {label}", control, ours), flush=True)
        preview = in_subprocess({**common, "method": "preview", "size": size, "dtype": dtype,
                                 "preview_decoder": args.preview_decoder})
        print(row(f"(a) ours, --preview-decoder {label}", preview, ours), flush=True)
    if args.large:
        for size in (512, 1024) if device.type == "cuda" else (512,):
            big = in_subprocess({**common, "method": "ours", "size": size, "dtype": dtype, "repeats": 0})
            print(row(f"(a) ours {size}->{size * 4} tiled", big, None), flush=True)
    if args.folder:
        result = in_subprocess({**common, "method": "folder", "size": 128, "count": args.folder, "dtype": dtype})
        print(f"\nfolder of {args.folder} x 128->512: {result.get('images_per_s', float('nan')):.3f} images/s "
              f"({result.get('seconds', float('nan')) / args.folder:.2f} s/image), "
              f"peak {result.get('peak_gib', float('nan')):.2f} GiB {result.get('error', '')}")


if __name__ == "__main__":
    main()
