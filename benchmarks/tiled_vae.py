"""Tiled vs untiled VAE decode on the full SD-2.1-base VAE architecture (random weights).

Each variant runs in its own subprocess so that its memory is its own: the process's resident
set size sampled during the decode (psutil, every 5 ms) and, on CUDA, ``max_memory_allocated``.
Outputs are compared with the first variant's, by default the untiled decode; at 2048x2048, where
the untiled decode alone needs about 10 GiB in 16-bit floats and twice that in fp32, leave it out
(``--variants tiled``). Example (about 1-3 minutes per variant at 1024x1024 on two idle CPU cores)::

    .venv/bin/python benchmarks/tiled_vae.py --latent 128 --tile 64
    .venv/bin/python benchmarks/tiled_vae.py --latent 256 --tile 224 --dtype bf16 --variants tiled
    python3 benchmarks/tiled_vae.py --device cuda --dtype fp16 --latent 256 --tile 64 --offload cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "untiled": {},
    "tiled": {"attention": "global"},
    "tiled-attn-per-tile": {"attention": "tile"},
    "tiled-naive-groupnorm": {"attention": "global", "group_norm_stats": "tile"},
}


def full_vae():
    """SD-2.1-base's VAE config (as ``osediff.testing.build_base('full').vae``), without the UNet."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                         sample_size=768, scaling_factor=0.18215).eval().requires_grad_(False)


class RssSampler:
    """Peak resident memory while decoding, sampled every 5 ms (ru_maxrss would also count model setup)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.before = self.peak = self.process.memory_info().rss / 2**20
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            time.sleep(0.005)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
        return self.peak


def worker(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from osediff.tiling.vae import tiled_decode

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    vae = full_vae().to(args.device, dtype)
    z = torch.randn(1, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(1)).to(args.device)
    cuda = args.device.startswith("cuda")
    sampler = RssSampler()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.no_grad():
        if args.variant == "untiled":
            image = vae.decoder(vae.post_quant_conv(z.to(dtype)))
        else:
            image = tiled_decode(vae, z, tile_size=args.tile, offload_device=args.offload,
                                 recompute_above=args.recompute_above, **VARIANTS[args.variant])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "rss_before_mb": sampler.before, "decode_peak_rss_mb": sampler.stop(),
              "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        result["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    torch.save(image.float().cpu(), args.output)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=128, help="latent side (output side is 8x)")
    parser.add_argument("--tile", type=int, default=64, help="tile size in latent pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--offload", default=None, help="where tiled maps live between layers, e.g. cpu")
    parser.add_argument("--recompute-above", type=int, default=1 << 30,
                        help="bytes from which a map is recomputed instead of stored (1 GiB: from 2048x2048 in "
                             "16-bit floats; 2**28 gives 1024x1024 the same passes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="untiled,tiled,tiled-attn-per-tile,tiled-naive-groupnorm")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        worker(args)
        return

    import torch

    names = args.variants.split(",")
    if unknown := [name for name in names if name not in VARIANTS]:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            output = Path(tmp) / f"{name}.pt"
            cmd = [sys.executable, __file__, "--variant", name, "--output", str(output),
                   *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k in ("latent", "tile", "device", "dtype", "offload", "threads", "recompute_above")
                     and v is not None)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
            image = torch.load(output)
            ref = image if ref is None else ref
            diff = (image - ref).abs()
            rows.append((name, stats, diff.max().item(), diff.mean().item()))
            print(f"{name}: done in {stats['seconds']:.1f} s", file=sys.stderr, flush=True)
    side = args.latent * 8
    print(f"\nVAE decode, SD-2.1-base architecture (random weights), latent {args.latent}x{args.latent} -> "
          f"{side}x{side}, {args.device} {args.dtype}, tile {args.tile}, offload {args.offload}, "
          f"recompute above {args.recompute_above} B, "
          f"{args.threads} threads; image range about [{ref.min().item():.2f}, {ref.max().item():.2f}]")
    cuda = "cuda" in args.device
    header = f"{'variant':24} {'time s':>8} {'RSS before MB':>14} {'peak RSS MB':>12} {'peak - before':>14}"
    header += f" {'CUDA peak MB':>13}" if cuda else ""
    print(header + f" {'max |diff|':>11} {'mean |diff|':>12}  (diff: against {names[0]})")
    for name, stats, dmax, dmean in rows:
        before, peak = stats["rss_before_mb"], stats["decode_peak_rss_mb"]
        line = f"{name:24} {stats['seconds']:8.1f} {before:14.0f} {peak:12.0f} {peak - before:14.0f}"
        line += f" {stats['cuda_peak_mb']:13.0f}" if cuda else ""
        print(line + f" {dmax:11.2e} {dmean:12.2e}")


if __name__ == "__main__":
    main()
