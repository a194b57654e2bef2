"""Evaluating super-resolution results with the paper's metrics (pyiqa underneath).

``evaluate`` pairs result and ground-truth images by name, builds the metrics that can be built
here (the others are reported with a reason), and returns per-image and mean values; ``reports``
turns that into the terminal/Markdown table, a per-image CSV and a summary JSON.
"""

from .metrics import PAPER_METRICS, MetricSpec, MetricUnavailable, resolve_metrics
from .pairing import EvalInputError, ImagePair, UnmatchedNamesError, pair_folders, read_rgb
from .runner import EvalOptions, EvalResult, MethodResult, evaluate

__all__ = [
    "PAPER_METRICS",
    "EvalInputError",
    "EvalOptions",
    "EvalResult",
    "ImagePair",
    "MethodResult",
    "MetricSpec",
    "MetricUnavailable",
    "UnmatchedNamesError",
    "evaluate",
    "pair_folders",
    "read_rgb",
    "resolve_metrics",
]
