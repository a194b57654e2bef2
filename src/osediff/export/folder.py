"""The layout of an export folder, shared by the exporters, the runtimes and the file checks.

    osediff_export.json   format (onnx | openvino), precision (fp32 | int8), scaling factor, abar_999,
                          timestep, the source weights' sha256, versions
    tokenizer/            CLIP's tokenizer (DAPE and user prompts are encoded at run time)
    <graph>/              one folder per graph of GRAPHS, in the format's files (see GRAPH_FILES)

No torch here: the file checks run before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OSEDiffError
from ..fileio import atomic_write

METADATA = "osediff_export.json"
GRAPHS = ("vae_encoder", "unet", "vae_decoder", "text_encoder")
# each graph's folder: the graph and the weights beside it (protobuf stops at 2 GB; the UNet is 3.4)
GRAPH_FILES = {"onnx": ("model.onnx", "model.onnx.data"), "openvino": ("openvino_model.xml", "openvino_model.bin")}
FORMATS = tuple(GRAPH_FILES)
PRECISIONS = ("fp32", "int8")


class ExportError(OSEDiffError):
    """A model that cannot be exported as it is, or an export folder that cannot be used."""


def graph_path(name: str, fmt: str) -> Path:
    """Where graph ``name`` of a ``fmt`` export lies, relative to the folder."""
    return Path(name) / GRAPH_FILES[fmt][0]


def read_metadata(folder: Path | str) -> dict:
    """The metadata of an export folder, checked for its graphs and tokenizer; an
    :class:`ExportError` says in one line what is wrong."""
    folder = Path(folder)
    try:
        metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
        fmt, precision = metadata["format"], metadata["precision"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{folder}: not an osediff export folder (no readable {METADATA}: {err})") from None
    if fmt not in FORMATS or precision not in PRECISIONS:
        raise ExportError(f"{folder}: format {fmt!r} / precision {precision!r} is not one of "
                          f"{', '.join(FORMATS)} / {', '.join(PRECISIONS)}")
    needed = [graph_path(name, fmt) for name in GRAPHS] + [Path("tokenizer") / "tokenizer_config.json"]
    missing = [str(path) for path in needed if not (folder / path).is_file()]
    if missing:
        raise ExportError(f"{folder}: missing {', '.join(missing)}")
    return metadata


def write_metadata(folder: Path | str, metadata: dict) -> None:
    """The metadata file, written last and atomically: a folder that has it is complete."""
    atomic_write(Path(folder) / METADATA,
                 lambda tmp: tmp.write_text(json.dumps(metadata, indent=1), encoding="utf-8"))
