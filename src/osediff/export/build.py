"""Making an export: ``osediff export`` and the first run of ``--backend onnxruntime|openvino``.

:func:`build_export` loads the checkpoint on the CPU in fp32 (LoRA merged), writes the ONNX graphs,
converts them to OpenVINO IR for ``openvino`` and quantises them for ``int8``.
:func:`ensure_export` does it once into the cache for a run that named no export folder: built
beside its final place and renamed into it, under a lock file, so processes that start together
(Ray replicas, service replicas) export once and the others wait, then load it.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..fileio import file_sha256, replaced_folder
from ..model_files import ModelFiles, ModelOptions
from .folder import ExportError
from .plan import ExportPlan


def build_export(files: ModelFiles, out: Path, fmt: str, precision: str = "fp32",
                 calibration: Path | None = None) -> dict:
    """Export ``files.base`` + ``files.weights`` into ``out`` (its graph folders and metadata replaced,
    the metadata last); returns the metadata."""
    import torch

    from ..pipeline import OSEDiffPipeline
    from .onnx import export_onnx

    if files.base is None:
        raise ExportError("exporting needs the SD-2.1-base folder and the weights (--base, --weights)")
    images = None
    if precision == "int8":
        from .quantize import calibration_images

        images = calibration_images(calibration or "")  # read before minutes of export, to fail first
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = OSEDiffPipeline.from_pretrained(files.base, files.weights, device=torch.device("cpu"),
                                           dtype=torch.float32, decoder_dtype=torch.float32, merge_lora=True,
                                           local_files_only=True)
    sha256 = file_sha256(files.weights) if files.weights else ""
    if fmt == "onnx":
        return export_onnx(pipe, out, weights_sha256=sha256)
    from .openvino import convert_onnx_folder

    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=out) as scratch:
        export_onnx(pipe, Path(scratch), weights_sha256=sha256)
        del pipe  # the torch model's 5 GB are not needed while OpenVINO converts and calibrates
        gc.collect()
        metadata = convert_onnx_folder(Path(scratch), out)
    if images is not None:
        from .quantize import quantize_folder

        metadata = quantize_folder(out, images)
    return metadata


def ensure_export(options: ModelOptions, files: ModelFiles) -> Path:
    """The export folder ``files.exported`` names, made now in the cache if it is not there yet."""
    plan: ExportPlan | None = files.exported
    if plan is None:
        raise ExportError(f"--backend {options.backend} found no export folder to load (find_model_files makes one)")
    if plan.is_complete():
        return plan.folder
    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(plan.folder.parent / f"{plan.folder.name}.lock"):
        if plan.is_complete():  # made by another process while this one waited
            return plan.folder
        print(f"exporting the model for --backend {options.backend} ({plan.precision}) into {plan.folder}, "
              "once; later runs load it", file=sys.stderr)
        with replaced_folder(plan.folder) as staging:  # over an incomplete one an interrupted run left
            build_export(files, staging, plan.fmt, plan.precision, plan.calibration)
    return plan.folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes of this machine (where fcntl exists)."""
    try:
        import fcntl
    except ImportError:  # Windows: processes may export twice, each into its own staging folder
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
