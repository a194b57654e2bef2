"""Peak GPU memory and time of real OSEDiff training steps at the published model size (random weights).

Builds the full SD-2.1-base architecture with random weights (no download), runs a few generator +
regulariser steps on HQ crops from ``--images`` and prints one JSON line per run. The first step
includes warm-up; later ones are the steady state.

    python benchmarks/train_memory.py --images ../shared/benchmarks/realsr/hr --precision fp16 --batch 1
    python benchmarks/train_memory.py --images ... --no-checkpointing --regularization vsd_image
    python benchmarks/train_memory.py --count-params   # trainable parameters per model (meta device, no GPU)

Measured on one H200 (512 px, fp16, random-VGG LPIPS, prompts none): batch 1 with gradient
checkpointing 7.2 GiB peak allocated (8.2 reserved), 0.8-1.0 s/step; without checkpointing 14.3 GiB;
batch 4 with checkpointing 16.1 GiB (19.7 reserved), 1.2 s/step; bf16 like fp16.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from osediff.testing import build_base
from osediff.training.config import TrainConfig
from osediff.training.data import HQDataset, collate
from osediff.training.loop import Trainer


def count_params(size: str) -> None:
    """Trainable parameters of the generator and of the regulariser for each adapter setting."""
    from osediff.training.model import REGULARIZER_ADAPTERS, Generator, Regulariser

    with torch.device("meta"):  # shapes only: the full size needs no memory and no weights
        base = build_base(size, seed=0)
        rows = {"generator": Generator(base.vae, base.unet, base.scheduler.alphas_cumprod)}
        for adapters in REGULARIZER_ADAPTERS:
            rows[f"regulariser ({adapters})"] = Regulariser(build_base(size, seed=0).unet, adapters=adapters)
    for name, model in rows.items():
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(json.dumps({"size": size, "model": name, "trainable": count, "millions": round(count / 1e6, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of HQ images")
    parser.add_argument("--count-params", action="store_true", help="print trainable parameter counts and exit")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default="fp16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--regularization", default="vsd_latent")
    args = parser.parse_args()
    if args.count_params:
        count_params(args.size)
        return
    if not args.images:
        parser.error("--images is required unless --count-params")

    config = TrainConfig.from_dict({
        "data": {"sources": [args.images], "crop_size": args.crop, "num_workers": 0},
        "prompts": {"source": "none"},
        "model": {"gradient_checkpointing": not args.no_checkpointing},
        "loss": {"lpips_pretrained": False, "regularization": args.regularization},
        "run": {"output_dir": "/tmp/osediff-train-memory", "batch_size": args.batch, "gradient_accumulation": 1,
                "max_steps": args.steps, "mixed_precision": args.precision, "checkpoint_every": 0,
                "validate_every": 0},
    })
    trainer = Trainer(config, build_base(args.size, seed=0))
    cuda = trainer.accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    data = HQDataset(config.data, config.run.seed)
    seconds, losses = [], []
    for step in range(args.steps):
        batch = collate([data[step * args.batch + i] for i in range(args.batch)])
        start = time.perf_counter()
        out = trainer.train_micro_step(batch)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(round(time.perf_counter() - start, 3))
        losses.append({k: round(float(v.detach()), 5) for k, v in out.terms.items()})
    print(json.dumps({
        "device": torch.cuda.get_device_name() if cuda else "cpu", **vars(args),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "step_seconds": seconds, "losses": losses,
    }))


if __name__ == "__main__":
    main()
