"""The paper's metrics over pyiqa: which pyiqa metric and options each one is, plus display metadata.

The options are the authors' (their pyiqa log for RealSR is the reference): PSNR and SSIM on the
rounded Y channel of BT.601 YCbCr, everything else with pyiqa's defaults. Any other pyiqa metric
name is accepted too and runs with pyiqa's defaults and metadata.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import OSEDiffError, as_python_argument
from ..fileio import first_line
from .downloads import downloads_disabled, is_network_error
from .niqe_params import NiqeParamsError, find_niqe_params, how_to


@dataclass(frozen=True)
class MetricSpec:
    name: str  # our name, lower case: what resolve_metrics (osediff eval --metrics) takes and the JSON/CSV keys
    label: str  # column heading
    pyiqa_name: str
    lower_better: bool
    needs_reference: bool  # full-reference: needs ground truth (gt)
    per_folder: bool = False  # FID compares two image sets, not image pairs
    needs_download: bool = True  # False: computed from code alone, always available offline
    options: dict = field(default_factory=dict)


_Y = {"test_y_channel": True, "color_space": "ycbcr"}
PAPER_METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("psnr", "PSNR", "psnr", False, True, needs_download=False, options=_Y),
    MetricSpec("ssim", "SSIM", "ssim", False, True, needs_download=False, options=_Y),
    MetricSpec("lpips", "LPIPS", "lpips", True, True),
    MetricSpec("dists", "DISTS", "dists", True, True),
    MetricSpec("fid", "FID", "fid", True, True, per_folder=True),
    MetricSpec("niqe", "NIQE", "niqe", True, False),
    MetricSpec("musiq", "MUSIQ", "musiq", False, False),
    MetricSpec("maniqa", "MANIQA", "maniqa", False, False),
    MetricSpec("clipiqa", "CLIPIQA", "clipiqa", False, False),
)}


def resolve_metrics(text: str | None) -> list[MetricSpec]:
    """``"psnr,ssim"`` -> specs, in the order given; empty/``paper``/``all`` -> the paper's set."""
    names = [n.strip().lower() for n in (text or "paper").split(",") if n.strip()]
    specs: list[MetricSpec] = []
    for name in names:
        found = list(PAPER_METRICS.values()) if name in ("paper", "all") else [spec_for(name)]
        specs.extend(s for s in found if s not in specs)
    return specs


def spec_for(name: str) -> MetricSpec:
    if name in PAPER_METRICS:
        return PAPER_METRICS[name]
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    config = DEFAULT_CONFIGS.get(name)
    if config is None:
        raise UnknownMetricError(f"unknown metric {name!r}; choose from {', '.join(PAPER_METRICS)} "
                         "or any pyiqa metric name (python -c 'import pyiqa; print(pyiqa.list_models())')")
    return MetricSpec(name, name.upper(), name, bool(config.get("lower_better", False)),
                      config.get("metric_mode") == "FR", per_folder="fid" in name)


class MetricUnavailable(OSEDiffError, RuntimeError):
    """A metric that cannot be built here; the message is the one-line reason shown to the user.

    With ``argument="niqe_params"`` the reason ends with how to supply NIQE's parameters
    (:func:`.niqe_params.how_to`), naming that argument through ``name_of``.
    """

    def message(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        if self.argument == "niqe_params":
            return f"{self.problem}; or {how_to(name_of)}"
        return super().message(name_of)


class UnknownMetricError(OSEDiffError, ValueError):
    """A metric name that is neither the paper's nor pyiqa's."""


@dataclass
class LoadedMetric:
    spec: MetricSpec
    score: Callable[..., float]  # (sr, gt) tensors -> value, or (sr_dir, gt_dir) for per-folder metrics
    source: str = "pyiqa"  # where its parameters came from, for the report


def load_metric(spec: MetricSpec, device: torch.device, *, offline: bool = False,
                niqe_params: str | None = None) -> LoadedMetric:
    """Build ``spec`` on ``device``; raises MetricUnavailable with a one-line reason."""
    options = dict(spec.options)
    source = "pyiqa"
    if spec.name == "niqe":
        try:
            path, source = find_niqe_params(niqe_params)
        except NiqeParamsError as err:
            raise MetricUnavailable(f"{spec.label}: {err}") from None
        if path is not None:
            options["pretrained_model_path"] = str(path)
    if spec.name == "ssim":
        # same numbers as pyiqa's SSIM, ten times faster on CPU (see ssim.py)
        from .ssim import ssim_y

        return LoadedMetric(spec, lambda sr, gt: float(ssim_y(sr, gt).item()),
                            "osediff.evaluation.ssim (pyiqa's SSIM, separable filter)")
    try:
        metric = _create_quietly(spec, device, options, offline)
    except Exception as err:  # pyiqa and the libraries under it raise anything; the report says what
        hint = "niqe_params" if spec.name == "niqe" and is_network_error(err) else None
        raise MetricUnavailable(_reason(spec, err, offline), argument=hint) from err
    if spec.per_folder:
        def score_folders(sr_dir: Path, gt_dir: Path) -> float:
            return float(metric(str(sr_dir), str(gt_dir), verbose=False))

        return LoadedMetric(spec, score_folders, source)

    def score(sr: torch.Tensor, gt: torch.Tensor | None = None) -> float:
        value = metric(sr, gt) if spec.needs_reference else metric(sr)
        return float(torch.as_tensor(value).flatten()[0].item())

    return LoadedMetric(spec, score, source)


def _create_quietly(spec: MetricSpec, device: torch.device, options: dict, offline: bool):
    import pyiqa

    logging.getLogger("pyiqa").setLevel(logging.WARNING)
    # pyiqa prints "Downloading ..." / "Loading pretrained model ..." to stdout and torchvision
    # warns about its deprecated arguments; the table is what users came for
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), downloads_disabled(offline):
        warnings.simplefilter("ignore")
        # check_input_range=False: read_rgb already guarantees [0, 1], and pyiqa's check scans
        # every image twice more
        return pyiqa.create_metric(spec.pyiqa_name, device=device, check_input_range=False, **options)


def _reason(spec: MetricSpec, err: BaseException, offline: bool) -> str:
    detail = f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
    detail = detail if len(detail) <= 160 else detail[:159] + "…"
    if is_network_error(err):
        from .niqe_params import pyiqa_cached_file

        why = "downloads are off" if offline else "download failed"
        # NIQE's other source (MetricUnavailable's niqe_params hint) follows in the message
        return (f"{spec.label}: weights not cached here and {why} ({detail}); pyiqa keeps them in "
                f"{pyiqa_cached_file().parent}")
    if isinstance(err, ImportError) and "pkg_resources" in str(err):
        return f"{spec.label}: pyiqa needs pkg_resources: pip install 'setuptools<81' ({detail})"
    return f"{spec.label}: could not be initialised ({detail})"
