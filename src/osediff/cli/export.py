"""``osediff export``: the one-step model (LoRA merged) as graphs an exported runtime loads.

Writes vae_encoder/, unet/, vae_decoder/, text_encoder/ (dynamic batch, height and width), the
tokenizer and osediff_export.json (format, precision, latent scaling, abar_999, the weights' sha256,
versions). ``--format onnx``: each graph as model.onnx + model.onnx.data, for ONNX Runtime,
TensorRT and others; ``--format openvino``: OpenVINO IR, fp32 or ``--precision int8`` (NNCF,
calibrated on ``--calibration`` photos). Run it with ``osediff upscale --backend onnxruntime|openvino
--export-dir DIR``, or in Python with ``osediff.export.runtime.load_exported(DIR)`` under an Upscaler.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_model_options, model_options_from_args


def add_command(subparsers: argparse._SubParsersAction) -> None:
    from ..export.folder import FORMATS, PRECISIONS

    p = subparsers.add_parser("export", help="export the model as ONNX or OpenVINO graphs", description=__doc__,
                              allow_abbrev=False)
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the graphs (made if missing)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="graph format (default %(default)s)")
    p.add_argument("--precision", dest="export_precision", choices=PRECISIONS, default="fp32",
                   help="int8: NNCF post-training quantisation, --format openvino only (default %(default)s)")
    p.add_argument("--calibration", dest="export_calibration", default=None, metavar="DIR",
                   help="low-quality photos int8 is calibrated on (default: the checkout's examples/)")
    add_model_options(p, backends=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.config import check_writable_folder
    from ..errors import OptionError
    from ..export.build import build_export
    from ..export.plan import calibration_folder
    from ..model_files import find_model_files

    precision = args.export_precision  # not the model options' --precision: that one picks an export to run
    if precision == "int8" and args.format != "openvino":
        raise OptionError("int8 is made for OpenVINO: pass --format openvino", argument="precision")
    calibration = calibration_folder(args.export_calibration) if precision == "int8" else None
    check_writable_folder(args.output)
    files = find_model_files(model_options_from_args(args), [])  # every missing file named before anything loads
    metadata = build_export(files, args.output, args.format, precision, calibration)
    for name in metadata["graphs"].values():
        graph = args.output / name
        size = sum(f.stat().st_size for f in graph.parent.iterdir())
        print(f"{graph}  {size / 2**20:.1f} MiB with its weights")
    print(f"wrote {args.format} {precision} graphs, tokenizer and osediff_export.json to {args.output}")
    return 0
