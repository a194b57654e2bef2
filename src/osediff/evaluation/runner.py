"""Running a set of metrics over one or more result folders against one ground-truth folder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import as_python_argument
from ..fileio import first_line
from .downloads import is_network_error
from .metrics import LoadedMetric, MetricSpec, MetricUnavailable, load_metric
from .pairing import ImagePair, pair_folders, read_rgb


@dataclass
class MethodResult:
    name: str
    folder: Path
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # image -> metric -> value
    per_folder: dict[str, float] = field(default_factory=dict)  # metric -> value (FID)

    def mean(self, metric: str) -> float | None:
        if metric in self.per_folder:
            return self.per_folder[metric]
        values = [row[metric] for row in self.per_image.values() if metric in row]
        return float(np.mean(values)) if values else None


@dataclass
class EvalResult:
    gt: Path | None
    metrics: list[MetricSpec]  # the ones that ran, in column order
    methods: list[MethodResult]
    skipped: dict[str, str]  # metric name -> one-line reason
    sources: dict[str, str]  # metric name -> where its parameters came from


@dataclass
class EvalOptions:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offline: bool = False
    niqe_params: str | None = None
    ignore_unmatched: bool = False
    progress: bool = True
    # how skip reasons name an argument: its Python name, or (osediff eval) its flag via cli.flags.flag_for
    name_of: Callable[[str], str] = as_python_argument


def evaluate(methods: dict[str, Path], gt: Path | None, specs: list[MetricSpec],
             options: EvalOptions | None = None, note: Callable[[str], None] | None = None) -> EvalResult:
    """Score every folder in ``methods`` (name -> folder) with ``specs``.

    Inputs are checked first (raising EvalInputError), then metrics are built; a metric that cannot
    be built, or that fails on an image, is reported in ``skipped`` and the others go on.
    """
    options = options or EvalOptions()
    note = note or (lambda line: print(line, file=sys.stderr))
    pairs = {name: pair_folders(folder, gt, ignore_unmatched=options.ignore_unmatched)
             for name, folder in methods.items()}
    loaded, skipped = _load_all(specs, gt is not None, options, note)
    results = [MethodResult(name, Path(folder)) for name, folder in methods.items()]
    for result in results:
        _score_images(result, pairs[result.name], [m for m in loaded if not m.spec.per_folder],
                      options, skipped, note)
        for metric in (m for m in loaded if m.spec.per_folder and m.spec.name not in skipped):
            try:
                result.per_folder[metric.spec.name] = metric.score(result.folder, gt)
            except Exception as err:  # a third-party failure on one metric must not lose the others
                skipped[metric.spec.name] = f"{metric.spec.label}: failed on {result.folder} ({_one_line(err)})"
                note(f"skipped {skipped[metric.spec.name]}")
    # a metric that failed part-way must not leave a partial column behind
    for result in results:
        for row in result.per_image.values():
            for name in [n for n in row if n in skipped]:
                del row[name]
    ran = [m.spec for m in loaded if m.spec.name not in skipped]
    return EvalResult(gt, ran, results, skipped, {m.spec.name: m.source for m in loaded})


def _load_all(specs: list[MetricSpec], have_gt: bool, options: EvalOptions,
              note: Callable[[str], None]) -> tuple[list[LoadedMetric], dict[str, str]]:
    loaded: list[LoadedMetric] = []
    skipped: dict[str, str] = {}
    offline = options.offline
    # metrics computed from code alone first: if a download later fails we still have them
    for spec in sorted(specs, key=lambda s: s.needs_download):
        if spec.needs_reference and not have_gt:
            skipped[spec.name] = f"{spec.label}: needs ground truth ({options.name_of('gt')})"
            note(f"skipped {skipped[spec.name]}")
            continue
        try:
            loaded.append(load_metric(spec, options.device, offline=offline, niqe_params=options.niqe_params))
        except MetricUnavailable as err:
            skipped[spec.name] = err.message(options.name_of)
            note(f"skipped {skipped[spec.name]}")
            # one failed download is enough to know: don't sit through retries for the next ones
            offline = offline or (err.__cause__ is not None and is_network_error(err.__cause__))
    order = {spec.name: i for i, spec in enumerate(specs)}
    loaded.sort(key=lambda m: order[m.spec.name])
    return loaded, skipped


def _score_images(result: MethodResult, pairs: list[ImagePair], metrics: list[LoadedMetric],
                  options: EvalOptions, skipped: dict[str, str], note: Callable[[str], None]) -> None:
    from tqdm import tqdm

    active = [m for m in metrics if m.spec.name not in skipped]
    if not active:
        return
    bar = tqdm(pairs, desc=result.name, unit="img", disable=not options.progress, dynamic_ncols=True,
               file=sys.stderr)
    with torch.inference_mode():
        for pair in bar:
            sr = _to_tensor(read_rgb(pair.sr), options.device)
            gt = _to_tensor(read_rgb(pair.gt), options.device) if pair.gt is not None else None
            row = result.per_image.setdefault(pair.name, {})
            for metric in list(active):
                try:
                    row[metric.spec.name] = metric.score(sr, gt) if metric.spec.needs_reference else metric.score(sr)
                except Exception as err:  # e.g. an image too small for a network's patch size
                    skipped[metric.spec.name] = f"{metric.spec.label}: failed on {pair.sr} ({_one_line(err)})"
                    note(f"skipped {skipped[metric.spec.name]}")
                    active.remove(metric)
    bar.close()


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(device)


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
    return text[:200]
