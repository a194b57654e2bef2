"""Command-line options shared by the sub-commands that load the model."""

from __future__ import annotations

import argparse

from ..export.plan import BACKENDS, RUN_PRECISIONS
from ..limits import RequestLimits
from ..model_files import ModelOptions
from ..presets import DEFAULT_PRESET, PRESETS


def add_model_options(parser: argparse.ArgumentParser, *, backends: bool = True) -> argparse._ArgumentGroup:
    """``--base --preset --weights --models-dir --device --dtype --offline`` in a "model" group, and
    with ``backends`` ``--backend --export-dir --precision --calibration``; returns the group."""
    model = parser.add_argument_group("model")
    model.add_argument("--base", default=None, help="SD-2.1-base folder or hub id (default: known mirrors)")
    model.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                       help="published weights and their defaults: "
                            + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    model.add_argument("--weights", default=None,
                       help="osediff.pkl / .safetensors path or hf:// / URL spec (default: the preset's)")
    model.add_argument("--models-dir", default=None, metavar="DIR",
                       help="models folder read before the caches and the network, as `osediff models download "
                            "--to DIR` fills it (default: $OSEDIFF_MODELS, else ~/.cache/osediff/models)")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    model.add_argument("--dtype", default="auto", help="auto | fp32 | fp16 | bf16")
    model.add_argument("--offline", action="store_true", help="use only local files and caches")
    if backends:
        add_backend_options(model)
    return model


def add_backend_options(group: argparse._ArgumentGroup) -> None:
    """``--backend --export-dir --precision --calibration``: which runtime runs the model."""
    group.add_argument("--backend", default="torch", choices=BACKENDS,
                       help="torch runs the checkpoint (any device); onnxruntime and openvino run an export of it "
                            "on the CPU (--export-dir, else exported once into the cache on first use)")
    group.add_argument("--export-dir", default=None, metavar="DIR",
                       help="a folder `osediff export` wrote, for --backend onnxruntime|openvino (no --base/--weights "
                            "needed)")
    group.add_argument("--precision", default=None, choices=RUN_PRECISIONS,
                       help="fp32 (default; equal to torch to 1/255); with --backend openvino also bf16 (the fp32 "
                            "export computed in bf16: CPUs with AVX512-BF16/AMX) or int8 (NNCF; faster, with a "
                            "drift: see README)")
    group.add_argument("--calibration", default=None, metavar="DIR",
                       help="low-quality photos int8 is calibrated on (default: the checkout's examples/)")


def add_limit_options(parser: argparse.ArgumentParser, defaults: RequestLimits) -> argparse._ArgumentGroup:
    """``--max-upload-mb --max-pixels --max-output-pixels --max-upscale`` with a front end's defaults."""
    group = parser.add_argument_group("limits per request")
    group.add_argument("--max-upload-mb", type=float, default=defaults.max_bytes / 2**20,
                       help="largest upload in MB (default %(default)g)")
    group.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                       help=f"largest input in pixels (default {defaults.max_side}*{defaults.max_side})")
    group.add_argument("--max-output-pixels", type=int, default=defaults.max_output_pixels,
                       help="largest result in pixels (default %(default)d)")
    group.add_argument("--max-upscale", type=float, default=defaults.max_upscale,
                       help="largest upscale factor (default %(default)g)")
    return group


def limits_from_args(args: argparse.Namespace) -> RequestLimits:
    """The limits the flags of :func:`add_limit_options` ask for (a :class:`LimitsError` names the flag)."""
    return RequestLimits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                         max_output_pixels=args.max_output_pixels, max_upscale=args.max_upscale)


def model_options_from_args(args: argparse.Namespace) -> ModelOptions:
    """The model the flags ask for; flags a command does not have keep ModelOptions' defaults."""
    given = {"base": args.base, "weights": args.weights, "preset": args.preset, "device": args.device,
             "dtype": args.dtype, "offline": args.offline, "models_dir": getattr(args, "models_dir", None)}
    for flag, option in (("decoder_dtype", "decoder_dtype"), ("preview_decoder", "preview_decoder"),
                         ("compile", "compile_unet"), ("ram", "ram"), ("dape", "dape"), ("ram_tags", "ram_tags"),
                         ("captioner", "captioner"), ("prompt_batch_size", "prompt_batch_size")):
        if hasattr(args, flag):
            given[option] = getattr(args, flag)
    for flag in ("backend", "export_dir", "precision", "calibration"):
        if hasattr(args, flag):
            given[flag] = getattr(args, flag)
    if hasattr(args, "no_merge"):
        given["merge_lora"] = not args.no_merge
    return ModelOptions(**given)


def names_from_args(values: list[str] | None) -> list[str] | None:
    """``--names``: separate words, one per folder; a single comma-separated word is read as a list
    (how ``osediff eval --names`` took them before)."""
    if values is not None and len(values) == 1 and "," in values[0]:
        return [name.strip() for name in values[0].split(",")]
    return values
