"""Which exported model a run loads (no torch here: this is decided before anything loads).

``--backend onnxruntime|openvino`` runs an export folder: the one ``--export-dir`` names, checked
now, or one made on first use in the cache (``$OSEDIFF_CACHE/exports/``, see
:mod:`osediff.export.build`). A cached folder is named by everything it was made from (the
weights' sha256, the SD-2.1-base weight files, format, precision, the calibration photos' sha256
and this layout's version), so a changed input makes a new export instead of loading a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OptionError
from ..fileio import file_sha256
from ..images import list_images
from .folder import ExportError, read_metadata

if TYPE_CHECKING:
    from ..model_files import ModelOptions

BACKENDS = ("torch", "onnxruntime", "openvino")
# what --precision may ask: an export's precision, or bf16: an fp32 export run with OpenVINO's bf16
# inference precision (CPUs with native bf16: AVX512-BF16, AMX)
RUN_PRECISIONS = ("fp32", "bf16", "int8")
BACKEND_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
LAYOUT_VERSION = 1  # bump when the graphs an export holds change, so cached exports are remade
_BASE_WEIGHTS = ("unet", "vae", "text_encoder")


@dataclass(frozen=True)
class ExportPlan:
    """The export folder a run loads, in ``fmt`` at ``precision``; ``calibration``: the photos an int8
    export still to be made is calibrated on; ``inference``: the precision OpenVINO computes the
    layers that are not int8 in (``f32``, or ``bf16`` for ``--precision bf16``)."""

    folder: Path
    fmt: str
    precision: str
    calibration: Path | None = None
    inference: str = "f32"

    def is_complete(self) -> bool:
        try:
            read_metadata(self.folder)
        except ExportError:
            return False
        return True


def check_backend(options: ModelOptions) -> None:
    """The backend options fit together (an :class:`OptionError` names the flag that does not)."""
    backend = options.backend
    if backend not in BACKENDS:
        raise OptionError(f"must be one of {', '.join(BACKENDS)}, got {backend!r}", argument="backend")
    if options.precision not in (None, *RUN_PRECISIONS):
        raise OptionError(f"must be one of {', '.join(RUN_PRECISIONS)}, got {options.precision!r}",
                          argument="precision")
    if backend == "torch":
        for name in ("export_dir", "precision", "calibration"):
            if getattr(options, name) is not None:
                raise OptionError("needs --backend onnxruntime or openvino (the torch backend runs the checkpoint "
                                  "itself)", argument=name)
        return
    if options.precision in ("int8", "bf16") and backend != "openvino":
        raise OptionError(f"{options.precision} runs on OpenVINO: pass --backend openvino", argument="precision")
    if options.device not in ("auto", "cpu"):
        raise OptionError(f"--backend {backend} runs on the CPU; for {options.device!r} use --backend torch",
                          argument="device")
    if options.dtype not in ("auto", "fp32") or options.decoder_dtype not in ("auto", "fp32"):
        raise OptionError(f"--backend {backend} runs the export's own precision (--precision); "
                          "--dtype/--decoder-dtype are for --backend torch", argument="dtype")
    if options.compile_unet or options.preview_decoder:
        raise OptionError(f"--compile and --preview-decoder are for --backend torch, not {backend}",
                          argument="backend")


def checked_export_dir(options: ModelOptions) -> ExportPlan | None:
    """The plan for ``options.export_dir`` once its files are checked; None when none is given."""
    if options.backend == "torch" or options.export_dir is None:
        return None
    try:
        metadata = read_metadata(options.export_dir)
    except ExportError as err:
        raise OptionError(str(err), argument="export_dir") from None
    fmt = BACKEND_FORMATS[options.backend]
    if metadata["format"] != fmt:
        raise OptionError(f"{options.export_dir}: a {metadata['format']} export; --backend {options.backend} runs "
                          f"{fmt} exports (osediff export --format {fmt})", argument="export_dir")
    if options.precision is not None and _folder_precision(options) != metadata["precision"]:
        raise OptionError(f"{options.export_dir}: a {metadata['precision']} export, not "
                          f"{_folder_precision(options)}", argument="export_dir")
    return ExportPlan(Path(os.path.abspath(options.export_dir)), fmt, metadata["precision"],
                      inference=_inference(options))


def planned_export(options: ModelOptions, base: Path | None, weights: Path | None) -> ExportPlan:
    """Where the export of ``base`` + ``weights`` for ``options`` lies in the cache, made or not."""
    from ..checkpoint.hub import cache_dir

    fmt, precision = BACKEND_FORMATS[options.backend], _folder_precision(options)
    calibration = calibration_folder(options.calibration) if precision == "int8" else None
    recipe = {"layout": LAYOUT_VERSION, "format": fmt, "precision": precision,
              "weights": file_sha256(weights) if weights else "",
              "base": _base_identity(base) if base else "",
              "calibration": _photos_identity(calibration) if calibration else ""}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return ExportPlan(cache_dir() / "exports" / f"{fmt}-{precision}-{digest}", fmt, precision, calibration,
                      _inference(options))


def _folder_precision(options: ModelOptions) -> str:
    """The precision of the export folder ``options`` run: bf16 runs an fp32 one."""
    return "fp32" if options.precision in (None, "bf16") else options.precision


def _inference(options: ModelOptions) -> str:
    return "bf16" if options.precision == "bf16" else "f32"


def calibration_folder(given: str | None) -> Path:
    """The folder of low-quality photos int8 is calibrated on: ``given``, else the checkout's ``examples/``."""
    folder = Path(given).expanduser() if given else Path(__file__).resolve().parents[3] / "examples"
    if not folder.is_dir() or not list_images(folder):
        where = f"{folder}: no photos" if given else "no --calibration folder given and no examples/ folder found"
        raise OptionError(f"{where} to calibrate int8 on (a folder of low-quality photos)", argument="calibration")
    return folder.absolute()


def _photos_identity(folder: Path) -> list[tuple[str, str]]:
    return [(p.name, file_sha256(p)) for p in list_images(folder)]


def _base_identity(base: Path) -> list:
    """The base folder's weight files by path, size and time: hashing 5 GB on every start would cost
    more than the export it guards."""
    found = []
    for name in _BASE_WEIGHTS:
        for path in sorted((base / name).glob("*")):
            if path.is_file():
                stat = path.stat()
                found.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return found
