"""``osediff export``: the one-step model (LoRA merged) as ONNX graphs an exported runtime can load.

Writes vae_encoder/, unet/, vae_decoder/, text_encoder/ (each model.onnx + model.onnx.data; fp32;
dynamic batch, height and width), the tokenizer and osediff_export.json (latent scaling, abar_999, the weights' sha256,
versions). In Python, ``Upscaler(OnnxOneStepModel(DIR))`` runs the per-image step on them with ONNX
Runtime (see osediff.export.runtime).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, model_options_from_args


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the model as ONNX graphs", description=__doc__,
                              allow_abbrev=False)
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the graphs (made if missing)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="graph format")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..batch.config import check_writable_folder
    from ..export.onnx import export_onnx
    from ..fileio import file_sha256
    from ..loading import load_upscaler
    from ..model_files import find_model_files
    check_writable_folder(args.output)
    options = replace(model_options_from_args(args), device="cpu", dtype="fp32", decoder_dtype="fp32")
    files = find_model_files(options, [])  # every missing file named before anything loads
    upscaler = load_upscaler(options, files)
    metadata = export_onnx(upscaler.pipe, args.output, weights_sha256=file_sha256(files.weights))
    for name in metadata["graphs"].values():
        graph = args.output / name
        size = sum(f.stat().st_size for f in graph.parent.iterdir())
        print(f"{graph}  {size / 2**20:.1f} MiB with its weights")
    print(f"wrote {args.format} graphs, tokenizer and osediff_export.json to {args.output}")
    return 0
