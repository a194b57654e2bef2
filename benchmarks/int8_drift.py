"""int8 (OpenVINO + NNCF) against the fp32 export, per component and for the whole image.

    python benchmarks/drift.py --int8                 # full-size random model, 128->512
    python benchmarks/drift.py --int8 --keep "unet=.*conv_in.*,.*conv_out.*" --keep "decoder=..."

Each variant quantises a copy of the fp32 OpenVINO export (calibrated on examples/, as
`osediff export --precision int8` does) keeping the named layers fp32: none at all, the project's
choice (osediff.export.quantize.KEEP_FP32), and any --keep given. Per component the same fp32
inputs go through both: the encoder's latent mean and the UNet's eps as mean |error| / std of the
fp32 output (the UNet's also as the error of z_H, which the one-step update scales by
1 / sqrt(abar_999)); the decoder's output, and the whole image, in 8-bit levels and PSNR. Seconds
per component are single runs after a warm-up.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from _common import drift, lr_images

CALIBRATION = Path(__file__).resolve().parents[1] / "examples"


def fp32_export(base: str, weights: str, folder: Path) -> Path:
    """The fp32 OpenVINO export of base + weights, made once into ``folder``."""
    from osediff.export.build import build_export
    from osediff.export.plan import ExportPlan
    from osediff.model_files import ModelFiles

    if not ExportPlan(folder, "openvino", "fp32").is_complete():
        build_export(ModelFiles(Path(base), Path(weights)), folder, "openvino")
    return folder


def quantised_copy(fp32: Path, out: Path, keep: dict[str, list[str]]) -> Path:
    """int8 of ``fp32`` in ``out`` keeping ``keep`` fp32 (files hard-linked, then replaced graph by graph)."""
    from osediff.export.quantize import calibration_images, quantize_folder

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32, out, copy_function=os.link)
    quantize_folder(out, calibration_images(CALIBRATION), keep_fp32=keep)
    return out


def components(model, x_l: torch.Tensor, context: torch.Tensor, inputs: dict | None = None) -> tuple[dict, dict]:
    """Each graph's output on the fp32 inputs (``inputs``; this model's own when None), and seconds."""
    from osediff.diffusion import predict_x0

    seconds, out = {}, {}
    for _ in range(2):  # the first run compiles shapes; the second is timed
        start = time.perf_counter()
        out["z_l"] = model.encode_latent(x_l)
        seconds["vae_encoder"] = time.perf_counter() - start
        z_l = out["z_l"] if inputs is None else inputs["z_l"]
        start = time.perf_counter()
        out["eps"] = model._unet(z_l, context)
        seconds["unet"] = time.perf_counter() - start
        out["z_h"] = predict_x0(z_l, out["eps"], model.alpha_bar)
        z_h = out["z_h"] if inputs is None else inputs["z_h"]
        start = time.perf_counter()
        out["x_h"] = model._run("vae_decoder", z=z_h)[0]
        seconds["vae_decoder"] = time.perf_counter() - start
    return out, seconds


def relative(error: torch.Tensor, reference: torch.Tensor) -> float:
    return (error.abs().mean() / reference.std()).item()


def run_int8(base: str, weights: str, size: int, keeps: dict[str, dict[str, list[str]]], work: Path) -> None:
    from osediff.export.quantize import KEEP_FP32
    from osediff.export.runtime import load_exported
    from osediff.images import LoadedImage
    from osediff.params import TileConfig, UpscaleParams
    from osediff.pipeline import Upscaler
    from osediff.pipeline.step import bicubic_upscale, image_tensor

    image = lr_images(size, 8)[-1]  # not one of examples/, which calibrate
    params = UpscaleParams(upscale=4, prompt="a photo", prompt_extractor="text", tiles=TileConfig(enabled=False))
    x_l = image_tensor(bicubic_upscale(image, 4))
    fp32 = load_exported(fp32_export(base, weights, work / "fp32"))
    context = fp32.encode_prompt("a photo")
    reference, ref_seconds = components(fp32, x_l, context)
    ref_image = Upscaler(fp32).upscale([(LoadedImage(image, None), params)], output_type="pt")[0].image * 255
    del fp32
    print(f"# int8 vs fp32 OpenVINO, {size}->{size * 4}, one image (not a calibration photo)\n")
    print("| variant | encoder err | UNet eps err | z_H err | decoder max/mean lv | image max/mean lv | PSNR dB "
          "| enc s | UNet s | dec s | quantise s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| fp32 | 0 | 0 | 0 | 0 / 0 | 0 / 0 | inf | {ref_seconds['vae_encoder']:.2f} | {ref_seconds['unet']:.2f} "
          f"| {ref_seconds['vae_decoder']:.2f} | - |", flush=True)
    variants: dict[str, dict[str, list[str]]] = {}
    for name, keep in {"all layers int8": {}, "KEEP_FP32 (the default)": KEEP_FP32, **keeps}.items():
        if not any({k: v for k, v in keep.items() if v} == {k: v for k, v in seen.items() if v}
                   for seen in variants.values()):
            variants[name] = keep
    for index, (name, keep) in enumerate(variants.items()):
        start = time.perf_counter()
        model = load_exported(quantised_copy(work / "fp32", work / f"int8-{index}", keep))
        made = time.perf_counter() - start
        out, sec = components(model, x_l, context, reference)
        whole = Upscaler(model).upscale([(LoadedImage(image, None), params)], output_type="pt")[0].image * 255
        dec = drift((out["x_h"].clamp(-1, 1) + 1) * 127.5, (reference["x_h"].clamp(-1, 1) + 1) * 127.5)
        img = drift(whole, ref_image)
        enc, eps, z_h = (relative(out[k] - reference[k], reference[k]) for k in ("z_l", "eps", "z_h"))
        print(f"| {name} | {enc:.3f} | {eps:.3f} | {z_h:.3f} | {dec['max_levels']:.0f} / {dec['mean_levels']:.2f} "
              f"| {img['max_levels']:.0f} / {img['mean_levels']:.2f} | {img['psnr_db']:.1f} "
              f"| {sec['vae_encoder']:.2f} | {sec['unet']:.2f} | {sec['vae_decoder']:.2f} | {made:.0f} |", flush=True)
        del model
    print("\nerrors of the encoder, UNet and z_H: mean |int8 - fp32| / std(fp32) on the same fp32 inputs")


def parse_keep(values: list[str]) -> dict[str, dict[str, list[str]]]:
    """``--keep graph=pattern,pattern --keep graph=...`` (each --keep one variant; graphs joined by ';')."""
    variants = {}
    for value in values:
        keep: dict[str, list[str]] = {}
        for part in value.split(";"):
            graph, _, patterns = part.partition("=")
            keep[{"encoder": "vae_encoder", "decoder": "vae_decoder"}.get(graph, graph)] = patterns.split(",")
        variants[f"keep {value}"] = keep
    return variants


