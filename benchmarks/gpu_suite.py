"""Every row of the GPU speed and memory table in one process, each row saved as soon as it is measured.

    python benchmarks/gpu_suite.py --device cuda --size full --out $OUT --budget-s 420
    python benchmarks/gpu_suite.py --device cpu --size tiny --out /tmp/gpu_dry          # dry run

The model (full-size SD-2.1-base architecture with random weights, or --base/--weights) is built
once; each row takes a fresh copy of it on the device and frees it afterwards, so a row's peak
memory is its own. Rows, in the order they run:

  ours_b1            merged LoRA, fp16 (--dtype), channels_last, 128->512 at batch 1 after warm-up:
                     end to end (VAE encode + UNet + VAE decode + colour fix + PIL), per stage
  ours_b1_nchw       the same without channels_last (does NHWC help here?)
  ours_b8, ours_b16  images/s through OSEDiffPipeline.run_batch (one model call per batch)
  authors_fp32/fp16  unmerged peft LoRA, sampled latent, text encoder run per image
  multistep50(+_control)  50 classifier-free-guided UNet steps, with the ControlNet branch
  drift              fp16, bf16, fp16 + fp32 up blocks, fp16 + fp32 decoder vs fp32: levels, PSNR,
                     non-finite decoder outputs, time; the largest VAE activations in fp32
  out4096_auto/cpu   1024->4096 in fp16, tiled, --vae-maps auto / cpu: time and peak memory
  compile_*          torch.compile of UNet + VAE per mode: warm-up cost and time per image
  tensorrt_fp16      the ONNX export built into TensorRT fp16 engines: ms per 512 image vs torch fp16
                     (benchmarks/gpu_tensorrt.py; skipped where tensorrt or onnx is not installed)

Each row writes <out>/rows/<row>.json (status ok, error or skipped, with why) and appends one line
to <summary-dir>/results.jsonl; <summary-dir>/table.md is rewritten after every row. A row starts
only if the --budget-s left covers its estimated cost; the rest are skipped with the reason.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

sys.path.insert(0, str(Path(__file__).parent))
from _common import PROMPT, cfg_unet_step, drift, lr_images, peak_memory_gib
from osediff.components import BaseComponents, encode_text, load_base_components
from osediff.device import pick_device, pick_dtype
from osediff.fileio import write_text_atomic
from osediff.pipeline import OSEDiffPipeline, TileConfig
from osediff.tiling.memory import vae_map_store

FP16_MAX = 65504.0


@dataclass
class Suite:
    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    components: BaseComponents  # fp32 on the CPU, never moved
    weights: object

    @property
    def tiny(self) -> bool:
        return self.args.size == "tiny"

    def pipeline(self, dtype: torch.dtype | None = None, merge: bool = True, text_encoder: bool = False,
                 channels_last: bool = True) -> OSEDiffPipeline:
        """A fresh copy of the model on the device: ours (merged, prompts encoded, text encoder freed,
        channels_last) or, with ``merge=False`` and ``text_encoder``, the authors' runtime form."""
        c = self.components
        parts = BaseComponents(copy.deepcopy(c.vae), copy.deepcopy(c.unet),
                               copy.deepcopy(c.text_encoder) if text_encoder else None, c.tokenizer, c.scheduler)
        # without a text encoder of its own: the prompts encoded on the CPU with the shared one
        embeds = {} if text_encoder else {p: encode_text(c.tokenizer, c.text_encoder, p) for p in (PROMPT, "")}
        pipe = OSEDiffPipeline(parts, prompt_embeds=embeds)
        pipe.load_weights(self.weights, merge=merge)
        pipe.to(self.device, dtype or self.dtype)
        if merge:
            pipe.optimize(channels_last=channels_last)
        return pipe

    def tiles(self, **kwargs) -> TileConfig:
        """Default tiles; for the tiny model, small enough that 512 px output takes the tiled paths."""
        if self.tiny:
            kwargs = {"latent_tile": 32, "latent_overlap": 8, "vae_encoder_tile": 256, "vae_decoder_tile": 32,
                      **kwargs}
        return TileConfig(**kwargs)


# -- measuring --------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> float:
    """Start a peak-memory window; returns the GiB already allocated (the model's weights)."""
    if device.type != "cuda":
        return 0.0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**30


def timed_runs(pipe: OSEDiffPipeline, call: Callable[[], list], warmup: int, repeats: int) -> dict:
    """Median wall seconds of ``call`` (which returns SRResults) and of each stage, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    walls, stages = [], []
    for _ in range(repeats):
        sync(pipe.device)
        start = time.perf_counter()
        results = call()
        sync(pipe.device)
        walls.append(time.perf_counter() - start)
        stages.append(results[0].timings)
    return {"seconds": statistics.median(walls), "seconds_min": min(walls), "repeats": repeats,
            "stages_s": {k: statistics.median(t[k] for t in stages) for k in stages[0]}}


# -- rows ---------------------------------------------------------------------------------------------
def _ours_b1(suite: Suite, channels_last: bool) -> dict:
    pipe = suite.pipeline(channels_last=channels_last)
    image = lr_images(suite.args.lr_size, 1)[0]
    resident = reset_peak(suite.device)
    r = timed_runs(pipe, lambda: [pipe.run(image, 4, PROMPT)], suite.args.warmup, suite.args.repeats)
    ms = 1000 * r["seconds"]
    return {**r, "ms_per_image": ms, "images_per_s": 1 / r["seconds"], "goal_40ms_met": ms <= 40,
            "resident_gib": resident, "peak_gib": peak_memory_gib(suite.device),
            "summary": f"{ms:.1f} ms/image ({1 / r['seconds']:.1f} images/s), stages "
                       + ", ".join(f"{k} {1000 * v:.1f}" for k, v in r["stages_s"].items())}


def ours_b1(suite: Suite) -> dict:
    return _ours_b1(suite, channels_last=True)


def ours_b1_nchw(suite: Suite) -> dict:
    return _ours_b1(suite, channels_last=False)


def _ours_batch(suite: Suite, batch: int) -> dict:
    pipe = suite.pipeline()
    images = lr_images(suite.args.lr_size, 1) * batch  # one size: one model call
    resident = reset_peak(suite.device)
    r = timed_runs(pipe, lambda: pipe.run_batch(images, 4, [PROMPT] * batch), 1, max(1, suite.args.repeats // 4))
    return {**r, "batch": batch, "images_per_s": batch / r["seconds"], "ms_per_image": 1000 * r["seconds"] / batch,
            "resident_gib": resident, "peak_gib": peak_memory_gib(suite.device),
            "summary": f"{batch / r['seconds']:.1f} images/s ({1000 * r['seconds'] / batch:.1f} ms/image), "
                       f"peak {peak_memory_gib(suite.device):.2f} GiB"}


def ours_b8(suite: Suite) -> dict:
    return _ours_batch(suite, 8)


def ours_b16(suite: Suite) -> dict:
    return _ours_batch(suite, 16)


def _authors(suite: Suite, dtype: torch.dtype) -> dict:
    pipe = suite.pipeline(dtype=dtype, merge=False, text_encoder=True)
    image = lr_images(suite.args.lr_size, 1)[0]

    def call() -> list:  # a plain call keeps no prompt cache: the text encoder runs every time, as in their script
        return [pipe.run(image, 4, PROMPT, latent="sample", seed=0)]

    resident = reset_peak(suite.device)
    r = timed_runs(pipe, call, suite.args.warmup, max(1, suite.args.repeats // 2))
    return {**r, "dtype": str(dtype).removeprefix("torch."), "ms_per_image": 1000 * r["seconds"],
            "resident_gib": resident, "peak_gib": peak_memory_gib(suite.device),
            "summary": f"{1000 * r['seconds']:.1f} ms/image"}


def authors_fp32(suite: Suite) -> dict:
    return _authors(suite, torch.float32)


def authors_fp16(suite: Suite) -> dict:
    return _authors(suite, suite.dtype)


def _multistep(suite: Suite, control: bool) -> dict:
    pipe = suite.pipeline()
    image = lr_images(suite.args.lr_size, 1)[0]
    one = timed_runs(pipe, lambda: [pipe.run(image, 4, PROMPT)], 1, 3)["stages_s"]
    step = cfg_unet_step(pipe, suite.args.lr_size * 4 // 8, max(3, suite.args.repeats // 4), control)
    steps = suite.args.steps
    total = one["vae_encode"] + steps * step + one["vae_decode"]
    return {"step_s": step, "steps": steps, "seconds": total, "ms_per_image": 1000 * total,
            "peak_gib": peak_memory_gib(suite.device),
            "summary": f"{1000 * total:.0f} ms/image ({steps} x {1000 * step:.1f} ms CFG step"
                       f"{' + ControlNet' if control else ''} + VAE)"}


def multistep50(suite: Suite) -> dict:
    return _multistep(suite, control=False)


def multistep50_control(suite: Suite) -> dict:
    return _multistep(suite, control=True)


def _largest_activations(model: torch.nn.Module) -> tuple[dict, Callable[[], None]]:
    """Forward hooks that record the largest |output| of every submodule; returns (record, remove)."""
    record = {"max_abs": 0.0, "module": ""}

    def hook(name: str):
        def fn(_module, _args, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                value = output.detach().abs().max().item()
                if value > record["max_abs"]:
                    record.update(max_abs=value, module=name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    return record, lambda: [h.remove() for h in handles]


def _nonfinite_outputs(model: torch.nn.Module) -> tuple[list[int], Callable[[], None]]:
    """A forward hook counting NaN/inf values in each output of ``model``; returns (counts, remove)."""
    counts: list[int] = []
    handle = model.register_forward_hook(lambda _m, _a, out: counts.append(int((~torch.isfinite(out)).sum())))
    return counts, handle.remove


def drift_row(suite: Suite) -> dict:
    """Output drift of half-precision variants against fp32 on one image, untiled."""
    image = lr_images(suite.args.lr_size, 1)[0]
    tiles = TileConfig(enabled=False)

    def run(pipe: OSEDiffPipeline) -> torch.Tensor:
        return pipe.run(image, 4, PROMPT, tiles=tiles, output_type="pt").image * 255

    pipe = suite.pipeline(dtype=torch.float32)
    activations = {}
    for part in ("encoder", "decoder"):
        record, remove = _largest_activations(getattr(pipe.vae, part))
        reference = run(pipe)
        remove()
        activations[part] = {**record, "fp16_headroom": FP16_MAX / max(record["max_abs"], 1e-12)}
    del pipe
    bf16 = torch.bfloat16
    fp16 = torch.float16
    variants = {
        "fp16": (fp16, {}),
        "bf16": (bf16, {}),
        "fp16_fp32_up_blocks": (fp16, {"upcast_decoder": True}),
        "fp16_fp32_decoder": (fp16, {"decoder_dtype": torch.float32}),
    }
    results = {}
    for name, (dtype, options) in variants.items():
        pipe = suite.pipeline(dtype=dtype).optimize(**options)  # fresh: no weights rounded by a variant before
        counts, remove = _nonfinite_outputs(pipe.vae.decoder)
        out = run(pipe)
        remove()
        results[name] = {**drift(out, reference), "decoder_nonfinite": sum(counts), "ms_per_image": None}
        if suite.device.type == "cuda":  # fp16 on a CPU runs on slow fallback kernels: no figure to keep
            speed = timed_runs(pipe, lambda p=pipe: [p.run(image, 4, PROMPT, tiles=tiles)], 1,
                               max(1, suite.args.repeats // 4))
            results[name]["ms_per_image"] = 1000 * speed["seconds"]
        del pipe
    summary = "; ".join(f"{n} max/mean {r['max_levels']:.1f}/{r['mean_levels']:.2f} levels {r['psnr_db']:.1f} dB"
                        f"{' NONFINITE' if r['decoder_nonfinite'] else ''}"
                        + (f" {r['ms_per_image']:.1f} ms" if r["ms_per_image"] is not None else "")
                        for n, r in results.items())
    return {"variants": results, "fp32_activations": activations, "size": f"{suite.args.lr_size}->"
            f"{suite.args.lr_size * 4}", "summary": summary}


def _big(suite: Suite, vae_maps: str) -> dict:
    size = suite.args.big_size
    pipe = suite.pipeline()
    tiles = suite.tiles(vae_maps=vae_maps)
    image = lr_images(size, 1)[0]
    out_pixels = (4 * size) ** 2
    resident = reset_peak(suite.device)
    maps_on = vae_map_store(tiles.vae_maps, suite.device, out_pixels, pipe.vae.dtype).type
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False  # tile shapes vary, one run
    try:
        start = time.perf_counter()
        result = pipe.run(image, 4, PROMPT, tiles=tiles)
        seconds = time.perf_counter() - start
    finally:
        torch.backends.cudnn.benchmark = benchmark
    peak = peak_memory_gib(suite.device)
    return {"output": f"{4 * size}x{4 * size}", "seconds": seconds, "stages_s": result.timings,
            "vae_maps": vae_maps, "decoder_maps_on": maps_on, "resident_gib": resident, "peak_gib": peak,
            "within_8gib": peak <= 8, "summary": f"{4 * size}x{4 * size} in {seconds:.1f} s, peak {peak:.2f} GiB "
                                                 f"(maps on {maps_on}; weights {resident:.2f} GiB)"}


def out4096_auto(suite: Suite) -> dict:
    return _big(suite, "auto")


def out4096_cpu(suite: Suite) -> dict:
    return _big(suite, "cpu")


def _compiled(suite: Suite, mode: str) -> dict:
    backend = suite.args.compile_backend
    if backend != "inductor" and mode != "reduce-overhead":
        return {"status": "skipped", "reason": f"modes differ only under inductor; the {backend} backend "
                                               "was checked in compile_reduce_overhead"}
    torch.compiler.reset()  # each mode compiles from scratch: its warm-up is its own
    pipe = suite.pipeline()
    pipe.optimize(channels_last=True, compile_unet=True, compile_vae=True,
                  compile_mode=mode if backend == "inductor" else "default", compile_backend=backend)
    image = lr_images(suite.args.lr_size, 1)[0]
    warmups = []
    for _ in range(3):  # compile, then CUDA graph recording happens on the following calls
        sync(suite.device)
        start = time.perf_counter()
        pipe.run(image, 4, PROMPT)
        sync(suite.device)
        warmups.append(time.perf_counter() - start)
    resident = reset_peak(suite.device)
    r = timed_runs(pipe, lambda: [pipe.run(image, 4, PROMPT)], 0, suite.args.repeats)
    ms = 1000 * r["seconds"]
    return {**r, "mode": mode, "backend": backend, "warmup_s": warmups, "ms_per_image": ms,
            "images_per_s": 1 / r["seconds"], "goal_40ms_met": ms <= 40, "resident_gib": resident,
            "peak_gib": peak_memory_gib(suite.device),
            "summary": f"{ms:.1f} ms/image after warm-up calls of " + ", ".join(f"{w:.1f}" for w in warmups) + " s"}


def compile_default(suite: Suite) -> dict:
    return _compiled(suite, "default")


def compile_reduce_overhead(suite: Suite) -> dict:
    return _compiled(suite, "reduce-overhead")


def compile_max_autotune(suite: Suite) -> dict:
    return _compiled(suite, "max-autotune")


def tensorrt_fp16(suite: Suite) -> dict:
    from gpu_tensorrt import tensorrt_row

    return tensorrt_row(suite, timed_runs, peak_memory_gib)


# (row, estimated seconds on an H200 with the full model: a row starts only if the budget left covers it)
ROWS: list[tuple[Callable[[Suite], dict], float]] = [
    (ours_b1, 10), (ours_b1_nchw, 10), (ours_b8, 10), (ours_b16, 15), (authors_fp32, 15), (authors_fp16, 10),
    (multistep50, 15), (multistep50_control, 25), (drift_row, 20), (out4096_auto, 60),
    (compile_reduce_overhead, 120), (compile_default, 100), (out4096_cpu, 120), (tensorrt_fp16, 240),
    (compile_max_autotune, 300),
]
ROW_NAMES = [fn.__name__.removesuffix("_row") for fn, _ in ROWS]


# -- driver ---------------------------------------------------------------------------------------------
def load_model(args: argparse.Namespace) -> tuple[BaseComponents, object]:
    from osediff.checkpoint.weights import OSEDiffWeights
    from osediff.testing import build_base, random_weights

    if args.base:
        return load_base_components(args.base, local_files_only=True), OSEDiffWeights.load(args.weights)
    components = build_base(args.size, seed=0)
    return components, random_weights(components, seed=1)


class Recorder:
    """Per-row JSON files, one JSON line per row, and a Markdown table rewritten after each row."""

    def __init__(self, out: Path, summary_dir: Path, header: dict) -> None:
        self.rows_dir, self.summary_dir = out / "rows", summary_dir
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        summary_dir.mkdir(parents=True, exist_ok=True)
        self.header, self.lines = header, []
        write_text_atomic(json.dumps(header, indent=1) + "\n", summary_dir / "env.json")
        (summary_dir / "results.jsonl").unlink(missing_ok=True)

    def write(self, row: dict) -> None:
        write_text_atomic(json.dumps(row, indent=1) + "\n", self.rows_dir / f"{row['row']}.json")
        with open(self.summary_dir / "results.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        detail = row.get("summary") or row.get("error") or row.get("reason", "")
        line = f"| {row['row']} | {row['status']} | {detail} | {row['row_s']:.1f} |"
        self.lines.append(line)
        print(line, flush=True)
        write_text_atomic(self.table(), self.summary_dir / "table.md")

    def table(self) -> str:
        h = self.header
        return (f"# osediff GPU suite on {h['device_name']} ({h['size']} model, {h['dtype']}, torch {h['torch']})\n\n"
                f"`{h['command']}`\n\n| row | status | result | row s |\n|---|---|---|---|\n"
                + "\n".join(self.lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=("tiny", "full"), default="full", help="random model size")
    parser.add_argument("--base", default=None, help="real SD-2.1-base folder instead of random weights")
    parser.add_argument("--weights", default=None, help="osediff.pkl / .safetensors (with --base)")
    parser.add_argument("--dtype", default="auto", help="dtype of the 'ours' rows (auto: fp16 on GPUs, fp32 on CPU)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_suite_out"))
    parser.add_argument("--summary-dir", type=Path, default=None,
                        help="results.jsonl, table.md and env.json (default: --out)")
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--rows", default=",".join(ROW_NAMES), help=f"comma-separated subset of {ROW_NAMES}")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3, tiny 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 20, tiny 2)")
    parser.add_argument("--steps", type=int, default=50, help="steps of the multi-step baseline")
    parser.add_argument("--lr-size", type=int, default=None, help="LR side of the x4 rows (default 128, tiny 32)")
    parser.add_argument("--big-size", type=int, default=None, help="LR side of the large rows (default 1024, "
                                                                   "tiny 128 with small tiles)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; eager on CPU, where inductor takes minutes)")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROW_NAMES))
    if unknown:
        parser.error(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(ROW_NAMES)}")
    if bool(args.base) != bool(args.weights):
        parser.error("--base and --weights go together")
    args.rows = rows
    tiny = args.size == "tiny"
    args.repeats = args.repeats if args.repeats is not None else (2 if tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.lr_size = args.lr_size or (32 if tiny else 128)
    args.big_size = args.big_size or (128 if tiny else 1024)
    args.summary_dir = args.summary_dir or args.out
    if args.repeats < 1 or args.warmup < 0 or args.lr_size < 8 or args.big_size < 8 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0, --lr-size and --big-size >= 8")
    return args


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    device = pick_device(args.device)
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "eager")
    dtype = pick_dtype(args.dtype, device)
    diffusers_logging.set_verbosity_error()  # each .to(dtype) would warn about modules it need not keep in fp32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    components, weights = load_model(args)
    suite = Suite(args, device, dtype, components, weights)
    header = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "device": str(device), "size": args.size, "dtype": str(dtype).removeprefix("torch."),
              "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "setup_s": time.perf_counter() - started,
              "cudnn_benchmark": torch.backends.cudnn.benchmark, "budget_s": args.budget_s}
    recorder = Recorder(args.out, args.summary_dir, header)
    print(f"# {header['device_name']}, {args.size} model, setup {header['setup_s']:.1f} s", flush=True)
    for fn, estimate in ROWS:
        name = fn.__name__.removesuffix("_row")
        if name not in args.rows:
            continue
        left = args.budget_s - (time.perf_counter() - started)
        needed = estimate if args.size == "full" else 0
        row_start = time.perf_counter()
        if left <= 0 or left < needed:
            row = {"status": "skipped", "reason": f"budget: {max(left, 0):.0f} s left of {args.budget_s:.0f}"
                                                  + (f", row needs ~{needed:.0f} s" if needed else "")}
        else:
            try:
                row = {"status": "ok", **fn(suite)}
            except Exception as exc:  # one failing row (e.g. out of memory) must not lose the others
                message = (str(exc).splitlines() or [""])[0]
                row = {"status": "error", "error": f"{type(exc).__name__}: {message}",
                       "traceback": traceback.format_exc(limit=-4)}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        recorder.write({"row": name, **row, "row_s": time.perf_counter() - row_start})
    print(f"\n{recorder.table()}\nrow files in {recorder.rows_dir}; total {time.perf_counter() - started:.1f} s",
          flush=True)


if __name__ == "__main__":
    main()
