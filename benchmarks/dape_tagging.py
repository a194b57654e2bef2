"""DAPE tagging at the published size with random weights: load path, speed, fp16 vs fp32 agreement.

Writes RAM/DAPE files in the published layout (random Swin-L weights, 4585 synthetic tags), loads
them through ``create_prompt_extractor("dape", ...)`` and tags a batch of images. Prints one table.

    python benchmarks/dape_tagging.py --device cuda --images 32 --batch-size 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from osediff.prompts import create_prompt_extractor
from osediff.prompts.ram_model import RAMConfig, RAMTagger, imagenet_normalise, resize_for_ram
from osediff.prompts.ram_weights import published_state_dict


def write_files(folder: Path, seed: int = 0) -> RAMTagger:
    torch.manual_seed(seed)
    model = RAMTagger(RAMConfig().with_lora(8)).eval()
    with torch.no_grad():
        model.label_embed.normal_()
        for layer in model.lora_layers():
            layer.lora_B.normal_(0, 0.02)
    weights = published_state_dict(model)
    torch.save({"model": {k: v for k, v in weights.items() if ".lora_" not in k}}, folder / "ram.pth")
    torch.save({k: v for k, v in weights.items() if ".lora_" in k}, folder / "dape.pth")
    (folder / "ram_tag_list.txt").write_text("\n".join(f"tag{i}" for i in range(4585)) + "\n")
    (folder / "ram_tag_list_threshold.txt").write_text("0.65\n" * 4585)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="side of the (pre-upscaled) input images")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dape-bench-"))
    reference = write_files(folder)

    start = time.perf_counter()
    extract = create_prompt_extractor("dape", ram_path=folder / "ram.pth", dape_path=folder / "dape.pth",
                                      tags_path=folder, device=args.device, batch_size=args.batch_size)
    load_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(args.images, 3, args.size, args.size, generator=generator)
    pictures = [Image.fromarray((p.permute(1, 2, 0) * 255).to(torch.uint8).numpy()) for p in pixels]

    extract(pictures[: args.batch_size])  # warm-up (kernels, allocator)
    if extract.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    prompts = extract(pictures)
    if extract.device.type == "cuda":
        torch.cuda.synchronize()
    run_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if extract.device.type == "cuda" else float("nan")

    # the extractor (merged LoRA, its dtype) against the unmerged fp32 reference on the same inputs
    quantised = torch.stack([torch.from_numpy(__import__("numpy").array(p)).permute(2, 0, 1) for p in pictures[:8]])
    quantised = quantised.float() / 255
    got = extract.probabilities(quantised).float().cpu()
    ref_model = reference.to(extract.device)
    with torch.inference_mode():
        ref = torch.sigmoid(ref_model(imagenet_normalise(resize_for_ram(quantised.to(extract.device), 384)))).cpu()
    flips = ((got > 0.65) != (ref > 0.65)).float().mean().item()
    on = (ref > 0.65).float().sum(1).mean().item()

    print(f"device {extract.device} {extract.dtype} | load {load_s:.1f} s | {args.images} images of "
          f"{args.size}px, batch {args.batch_size}: {run_s:.2f} s ({1000 * run_s / args.images:.1f} ms/image) | "
          f"peak {peak:.2f} GiB")
    print(f"vs fp32 unmerged reference: max |dp| {(got - ref).abs().max().item():.2e}, decisions differing "
          f"{100 * flips:.3f} % (mean {on:.0f} tags on) | first prompt: {prompts[0][:80]!r}")


if __name__ == "__main__":
    main()
