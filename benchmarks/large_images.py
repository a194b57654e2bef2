"""Large images: seconds and seconds per output megapixel per stage, before and after, at 512-4096.

    git archive <before-commit> src | tar -x -C /tmp/osediff-before        # today's code, for "before"
    python benchmarks/large_images.py --before-src /tmp/osediff-before/src --memory-budget 4.5G
    python benchmarks/large_images.py --unet-sweep 64,96,128,144 --rounds 3  # UNet seconds per tile side

One x4 upscale per output side (LR 128, 256, 512, 1024 -> 512 ... 4096) on the full-size SD-2.1-base
architecture with random weights (benchmarks/random_model.py; identical cost), as `osediff upscale
--prompt-extractor text` runs it (merged LoRA, channels_last VAE, bf16 decoder on CPUs with native
bf16, the prompt encoded at load time and the text encoder freed). Every configuration runs in its
own process, so its peak RSS is its own; "before" runs the source tree given by --before-src with its
default tiles, "after" this checkout with --memory-budget. The configurations alternate (before,
after, before, after ... per side) and each cell is the minimum over --rounds, because the machine
may be shared. Sides of 512 and 1024 run one warm-up image in the same process first; larger sides
warm up on a 512 image only (their own run takes minutes).

--unet-sweep times one fp32 UNet forward per latent tile side (alternating sides, minimum over
rounds): the per-pixel cost growth that osediff.tiling.budget.UNET_ATTENTION_SHARE models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import PROMPT, lr_images
from _cpu import cpu_line

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("vae_encode", "unet", "vae_decode")


def measure(cfg: dict) -> dict:
    """One configuration in this process: seconds per stage of one upscale, and peak RSS."""
    import torch

    from osediff.pipeline import OSEDiffPipeline, TileConfig

    torch.set_num_threads(cfg["threads"])
    pipe = OSEDiffPipeline.from_pretrained(cfg["base"], cfg["weights"], device="cpu", prompts=[PROMPT])
    budget = cfg.get("memory_budget")
    tiles = TileConfig() if budget is None else TileConfig(memory_budget=budget)
    side = cfg["size"]
    warm = side if side <= 256 else 128
    pipe.run(lr_images(warm, 1)[0], 4, PROMPT, tiles=tiles)  # kernels and allocator warmed
    start = time.perf_counter()
    result = pipe.run(lr_images(side, 1)[0], 4, PROMPT, tiles=tiles)
    seconds = time.perf_counter() - start
    out = {stage: result.timings[stage] for stage in STAGES}
    out["total"] = seconds
    out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def unet_sweep(cfg: dict) -> dict:
    """Seconds of one UNet forward per latent side, the sides alternating, minimum over rounds."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(cfg["threads"])
    unet = UNet2DConditionModel.from_pretrained(cfg["base"], subfolder="unet").eval().requires_grad_(False)
    context, timestep = torch.randn(1, 77, unet.config.cross_attention_dim), torch.tensor([999])
    best: dict[int, float] = {}
    with torch.no_grad():
        unet(torch.randn(1, 4, 32, 32), timestep, encoder_hidden_states=context)
        for _ in range(cfg["rounds"]):
            for side in cfg["sides"]:
                z = torch.randn(1, 4, side, side)
                start = time.perf_counter()
                unet(z, timestep, encoder_hidden_states=context)
                best[side] = min(best.get(side, float("inf")), time.perf_counter() - start)
                print(f"side {side}: {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)
    return {str(side): seconds for side, seconds in best.items()}


def in_subprocess(cfg: dict, src: str | None = None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(name: str, side: int, r: dict, base_per_mp: float | None) -> str:
    if "error" in r:
        return f"| {name} | {side} | error: {r['error']} |"
    mp = side * side / 1e6
    cells = " | ".join(f"{r[s]:.1f} ({r[s] / mp:.1f})" for s in (*STAGES, "total"))
    ratio = f"{r['total'] / mp / base_per_mp:.2f}x" if base_per_mp else "1.00x"
    return f"| {name} | {side} | {cells} | {ratio} | {r['peak_gib']:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sides", default="512,1024,2048", help="output sides (x4 from LR side/4)")
    parser.add_argument("--before-src", default=None, help="source folder of the code before (its src/); "
                        "without it only 'after' runs")
    parser.add_argument("--memory-budget", default="auto", help="'after': --memory-budget (e.g. 4.5G)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--unet-sweep", default=None, help="latent sides to time one UNet forward at")
    parser.add_argument("--random-model", type=Path, default=Path("/tmp/osediff-sd21-full"))
    args = parser.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        print(json.dumps(unet_sweep(cfg) if "sides" in cfg else measure(cfg)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from osediff.params import parse_memory_size
    from random_model import make_random_model

    base, weights = make_random_model(args.random_model)
    common = {"base": str(base), "weights": str(weights), "threads": args.threads}
    print(f"# {cpu_line()}; {args.threads} threads; full-size random SD-2.1-base\n")
    if args.unet_sweep:
        sides = [int(s) for s in args.unet_sweep.split(",")]
        best = in_subprocess({**common, "sides": sides, "rounds": args.rounds})
        small = best[str(sides[0])] / sides[0] ** 2
        print("| latent side | s per forward | s per 1000 latent px | per px vs the first |\n|---|---|---|---|")
        for side in sides:
            s = best[str(side)]
            print(f"| {side} | {s:.2f} | {s / side**2 * 1e3:.3f} | {s / side**2 / small:.2f} |")
        return
    budget = parse_memory_size(args.memory_budget)
    configs = [("before", None, args.before_src)] if args.before_src else []
    configs.append((f"after (budget {args.memory_budget})", budget, None))
    print(f"min of {args.rounds} round(s); seconds (seconds per output megapixel); peak RSS of the process\n")
    print("| config | output side | VAE enc s (s/MP) | UNet s (s/MP) | VAE dec s (s/MP) | total s (s/MP) "
          "| s/MP vs 512 | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    per_mp: dict[str, float] = {}
    for side in (int(s) for s in args.sides.split(",")):
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, budget_bytes, src in configs:
                r = in_subprocess({**common, "size": side // 4, "memory_budget": budget_bytes}, src)
                print(f"{name} {side}: {json.dumps(r)}", file=sys.stderr, flush=True)
                if name not in best or r.get("total", float("inf")) < best[name].get("total", float("inf")):
                    best[name] = r
        for name, _, _ in configs:
            r = best[name]
            if side == 512 and "total" in r:
                per_mp[name] = r["total"] / 0.262144
            print(row(name, side, r, per_mp.get(name)), flush=True)


if __name__ == "__main__":
    main()
