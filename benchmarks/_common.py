"""Pieces shared by the benchmark scripts: inputs, memory peaks, the multi-step baseline, drift."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REALSR_LR = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "realsr" / "lr"
PROMPT = "a photo"


def lr_images(size: int, count: int) -> list[Image.Image]:
    """RealSR LR crops when ../shared is present (tiled up for large sizes), else smooth noise."""
    files = sorted(REALSR_LR.glob("*.png")) if REALSR_LR.is_dir() else []
    images = []
    for i in range(count):
        if files:
            img = Image.open(files[i % len(files)]).convert("RGB")
            img = img.resize((size, size), Image.BICUBIC) if size > img.width else img.crop((0, 0, size, size))
        else:
            rng = np.random.default_rng(i)
            img = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize(
                (size, size), Image.BICUBIC)
        images.append(img)
    return images


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cfg_unet_step(pipe, latent: int, repeats: int, control: bool = False) -> float:
    """Median seconds of one classifier-free-guided UNet evaluation (cond + uncond, batch 2), with
    the residuals of a ControlNet branch fed into it when ``control``. ``pipe`` must hold the
    embeddings of PROMPT and of the empty prompt."""
    from diffusers import ControlNetModel

    z = torch.randn(2, 4, latent, latent, device=pipe.device, dtype=pipe.dtype)
    context = torch.cat([pipe.encode_prompt(PROMPT), pipe.encode_prompt("")])
    timestep = torch.tensor([500], device=pipe.device)
    controlnet = ControlNetModel.from_unet(pipe.unet).to(pipe.device, pipe.dtype) if control else None
    condition = torch.rand(2, 3, latent * 8, latent * 8, device=pipe.device, dtype=pipe.dtype) if control else None
    seconds = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            residuals = {}
            if controlnet is not None:
                down, mid = controlnet(z, timestep, encoder_hidden_states=context, controlnet_cond=condition,
                                       return_dict=False)
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            pipe.unet(z, timestep, encoder_hidden_states=context, **residuals)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def drift(out: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Differences between two images in 8-bit levels (inputs in 0..255): max, mean and PSNR (dB)."""
    diff = (out.float() - reference.float()).abs()
    mse = (diff**2).mean().item()
    psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()
    return {"max_levels": diff.max().item(), "mean_levels": diff.mean().item(), "psnr_db": psnr}
