"""``osediff export --format openvino``: an ONNX export folder converted to OpenVINO IR.

Each graph of :mod:`osediff.export.onnx` goes through ``openvino.convert_model`` and is saved
uncompressed (fp32 weights: ``compress_to_fp16`` would change the model); the tokenizer and the
metadata come along, the metadata saying ``format: openvino``. int8 is a further step on the
result (:mod:`osediff.export.quantize`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..fileio import replaced_folder
from .folder import GRAPHS, graph_path, read_metadata, write_metadata


def convert_onnx_folder(onnx_folder: Path, out: Path) -> dict:
    """Write the OpenVINO IR of the ONNX export ``onnx_folder`` into ``out``; returns its metadata."""
    import openvino as ov

    metadata = read_metadata(onnx_folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in GRAPHS:
        save_graph(ov.convert_model(str(Path(onnx_folder) / graph_path(name, "onnx"))), out / name)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    shutil.copytree(Path(onnx_folder) / "tokenizer", out / "tokenizer")
    metadata.update(format="openvino", openvino=ov.get_version(),
                    graphs={name: graph_path(name, "openvino").as_posix() for name in GRAPHS})
    write_metadata(out, metadata)
    return metadata


def save_graph(model, folder: Path) -> None:
    """``model`` as folder/openvino_model.xml + .bin, replacing an earlier pair only once both are written."""
    import openvino as ov

    with replaced_folder(folder) as staging:
        ov.save_model(model, str(staging / graph_path(folder.name, "openvino").name), compress_to_fp16=False)

