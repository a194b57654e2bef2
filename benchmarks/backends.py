"""Whole-image seconds and peak memory of each backend, as `osediff upscale --backend ... --prompt` runs.

    python benchmarks/backends.py                       # 128->512 on the full-size random model
    python benchmarks/backends.py --sizes 128,512       # and 512->2048

Rows: torch with the defaults `from_pretrained` picks for this CPU (bf16 decoder where the CPU has
bf16), torch fp32 (the parity reference), ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 (the fp32
export computed in bf16) and OpenVINO int8 (osediff.export.quantize.KEEP_FP32 kept fp32, calibrated
on examples/). Each row runs in its own
process (peak RSS is its own) through the one loader with the prompt encoded at load time; the
exports are made once into --exports. LR sizes up to 256 get a warm-up run first, larger ones run
once. Drift is against the torch fp32 row's image, in 8-bit levels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "torch (defaults)": {"backend": "torch"},
    "torch fp32": {"backend": "torch", "dtype": "fp32", "decoder_dtype": "fp32"},
    "onnxruntime fp32": {"backend": "onnxruntime", "export": "onnx"},
    "openvino fp32": {"backend": "openvino", "export": "openvino-fp32"},
    "openvino bf16": {"backend": "openvino", "export": "openvino-fp32", "precision": "bf16"},
    "openvino int8": {"backend": "openvino", "export": "openvino-int8"},
}
STAGES = ("vae_encode", "unet", "vae_decode")
EXPORTS = {"onnx": ("onnx", "fp32"), "openvino-fp32": ("openvino", "fp32"), "openvino-int8": ("openvino", "int8")}


def measure(cfg: dict) -> dict:
    import numpy as np

    from _common import lr_images, peak_memory_gib
    from osediff.images import LoadedImage
    from osediff.loading import load_upscaler
    from osediff.model_files import ModelOptions, find_model_files
    from osediff.params import UpscaleParams

    given = {key: cfg[key] for key in ("backend", "dtype", "decoder_dtype", "precision") if key in cfg}
    if "export" in cfg:
        options = ModelOptions(export_dir=cfg["export_dir"], offline=True, **given)
    else:
        options = ModelOptions(base=cfg["base"], weights=cfg["weights"], offline=True, **given)
    start = time.perf_counter()
    upscaler = load_upscaler(options, find_model_files(options, ["text"]), fixed_prompts=["a photo"])
    load_s = time.perf_counter() - start
    request = [(LoadedImage(lr_images(cfg["size"], 1)[0], None),
                UpscaleParams(upscale=4, prompt="a photo", prompt_extractor="text"))]
    for _ in range(2 if cfg["size"] <= 256 else 1):
        start = time.perf_counter()
        result = upscaler.upscale(request)[0]
        total = time.perf_counter() - start
    np.save(cfg["image_out"], np.asarray(result.image))
    return {"load_s": load_s, "total_s": total, **{s: result.timings.get(s, 0.0) for s in STAGES},
            "peak_gib": peak_memory_gib(upscaler.device)}


def make_exports(base: str, weights: str, folder: Path, wanted: set[str]) -> None:
    from osediff.export.build import build_export
    from osediff.export.plan import ExportPlan, calibration_folder
    from osediff.model_files import ModelFiles

    for name in wanted:
        fmt, precision = EXPORTS[name]
        if not ExportPlan(folder / name, fmt, precision).is_complete():
            print(f"exporting {name} into {folder / name}", file=sys.stderr)
            build_export(ModelFiles(Path(base), Path(weights)), folder / name, fmt, precision,
                         calibration_folder(None) if precision == "int8" else None)


def in_subprocess(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base", default=None, help="SD-2.1-base folder (default: the random full-size model)")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--sizes", default="128", help="LR sizes, x4 each")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, by name")
    parser.add_argument("--exports", type=Path, default=Path("/tmp/osediff-backend-exports"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    import numpy as np

    from _cpu import cpu_line
    from random_model import make_random_model

    if args.base is None:
        base, weights = make_random_model(Path("/tmp/osediff-sd21-full"))
        args.base, args.weights = str(base), str(weights)
    rows = [name.strip() for name in args.rows.split(",")]
    make_exports(args.base, args.weights, args.exports, {ROWS[r]["export"] for r in rows if "export" in ROWS[r]})
    print(f"CPU: {cpu_line()}\n")
    print("| size | backend | load s | encode s | UNet s | decode s | total s | vs torch defaults | peak GiB "
          "| vs torch fp32: max / mean levels |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        results = {}
        for name in rows:
            image_out = args.exports / f"out-{size}-{name.replace(' ', '_')}.npy"
            cfg = {**ROWS[name], "base": args.base, "weights": args.weights, "size": size, "image_out": str(image_out)}
            if "export" in cfg:
                cfg["export_dir"] = str(args.exports / cfg["export"])
            results[name] = r = in_subprocess(cfg)
            if "error" in r:
                print(f"| {size}->{size * 4} | {name} | error: {r['error']} |", flush=True)
                continue
            r["image"] = np.load(image_out).astype(np.int16)
            first = results.get("torch (defaults)", {})
            ratio = f"{first['total_s'] / r['total_s']:.2f}x" if "total_s" in first else "-"
            reference = results.get("torch fp32", {}).get("image")
            levels = "-"
            if reference is not None:
                diff = np.abs(r["image"] - reference)
                levels = f"{diff.max()} / {diff.mean():.2f}"
            print(f"| {size}->{size * 4} | {name} | {r['load_s']:.1f} | {r['vae_encode']:.2f} | {r['unet']:.2f} "
                  f"| {r['vae_decode']:.2f} | {r['total_s']:.2f} | {ratio} | {r['peak_gib']:.2f} | {levels} |",
                  flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
