"""Which model to load (:class:`ModelOptions`) and finding every file it needs before anything loads.

:func:`find_model_files` looks for the SD-2.1-base folder, the OSEDiff weights and the files of each
prompt extractor (in the local caches, then on the network unless offline) and reports every file
it could not find in one :class:`~osediff.checkpoint.ModelNotFoundError`, each with the argument
that supplies it. The models folder (``ModelOptions.models_dir``, see :mod:`osediff.checkpoint.store`)
is read first, for every file. The result holds local paths only, so it can be handed to processes that load
the model (Ray replicas) without any of them going to the network. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .checkpoint import store
from .checkpoint.hub import ModelNotFoundError, resolve_base
from .errors import OptionError
from .export.plan import ExportPlan, check_backend, checked_export_dir, planned_export
from .presets import DEFAULT_PRESET, get_preset, resolve_weights
from .prompts import extractor_needs_model, known_prompt_extractor, resolve_extractor_files

T = TypeVar("T")


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load and how; ``"auto"`` picks what suits the device.

    ``weights`` ``None`` takes the preset's published file; ``ram``, ``dape``, ``ram_tags`` and
    ``captioner`` name the prompt extractors' files (``None``: their published defaults), which
    ``prompt_batch_size`` images at a time go through. ``models_dir`` is the models folder read
    before the caches and the network (:mod:`osediff.checkpoint.store`); ``None`` takes
    ``$OSEDIFF_MODELS`` when the options are made, so the folder travels with them (Ray replicas),
    else the default folder of the machine that looks.
    """

    base: str | None = None
    weights: str | None = None
    preset: str = DEFAULT_PRESET
    device: str = "auto"
    dtype: str = "auto"
    decoder_dtype: str = "auto"
    offline: bool = False
    merge_lora: bool = True
    preview_decoder: str | None = None
    compile_unet: bool = False
    ram: str | None = None
    dape: str | None = None
    ram_tags: str | None = None
    captioner: str | None = None
    prompt_batch_size: int = 8
    models_dir: str | None = None
    backend: str = "torch"
    export_dir: str | None = None
    precision: str | None = None
    calibration: str | None = None

    def __post_init__(self) -> None:
        get_preset(self.preset)
        check_backend(self)
        named = store.named_models_dir(self.models_dir)  # absolute: a Ray worker's working folder differs
        object.__setattr__(self, "models_dir", None if named is None else os.path.abspath(os.path.expanduser(named)))
        size = self.prompt_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise OptionError(f"must be an integer >= 1, got {size!r}", argument="prompt_batch_size")

    def extractor_files(self) -> dict[str, Any]:
        return {"ram": self.ram, "dape": self.dape, "ram_tags": self.ram_tags, "captioner": self.captioner}


@dataclass(frozen=True)
class ModelFiles:
    """Local paths for everything a run loads.

    ``extractors`` maps each prompt extractor on offer to its factory's file arguments (empty for
    ``text`` and ``none``); ``unavailable`` maps the optional ones whose files are missing to why.
    """

    base: Path | None
    weights: Path | None
    extractors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    exported: ExportPlan | None = None


def find_model_files(options: ModelOptions, extractors: Iterable[str] = (), *, optional: Iterable[str] = (),
                     cached_only: Iterable[str] = (), with_weights: bool = True) -> ModelFiles:
    """Every file ``options`` and the ``extractors`` need, or one error listing every miss.

    ``optional`` extractors are offered if their files are found, and go to ``unavailable`` with
    the reason if not; ``cached_only`` ones are looked for in the local caches only (a page should
    not fetch gigabytes nobody asked for). Unknown extractor names are refused first.
    """
    extractors = list(dict.fromkeys(extractors))
    required, optional = extractors, [n for n in dict.fromkeys(optional) if n not in extractors]
    cached_only = set(cached_only)
    for name in (*required, *optional):
        known_prompt_extractor(name)
    misses: list[ModelNotFoundError] = []
    local_only, models_dir = options.offline, options.models_dir
    given_export = checked_export_dir(options)  # a given export folder needs neither base nor weights
    base = None
    if given_export is None:
        base = _attempt(misses, lambda: resolve_base(options.base, local_files_only=local_only,
                                                     models_dir=models_dir))
    weights = None
    if with_weights and given_export is None:
        weights = _attempt(misses, lambda: resolve_weights(options.weights, preset=options.preset,
                                                           local_files_only=local_only, models_dir=models_dir))
    offered: dict[str, Mapping[str, Any]] = {}
    unavailable: dict[str, str] = {}
    for name in (*required, *optional):
        if not extractor_needs_model(name):
            offered[name] = {}
            continue
        try:
            with store.using(models_dir):  # the extractors' resolvers read the same models folder
                offered[name] = resolve_extractor_files(name, **options.extractor_files(),
                                                        local_files_only=local_only or name in cached_only)
        except ModelNotFoundError as err:
            if name in required:
                misses.append(err)
            else:
                unavailable[name] = err.reason
    if misses:
        raise ModelNotFoundError.merge(misses)
    exported = given_export or (None if options.backend == "torch" else planned_export(options, base, weights))
    return ModelFiles(base, weights, offered, unavailable, exported)  # type: ignore[arg-type]


def _attempt(misses: list[ModelNotFoundError], find: Callable[[], T]) -> T | None:
    try:
        return find()
    except ModelNotFoundError as err:
        misses.append(err)
        return None


def weights_spec(options: ModelOptions) -> str:
    """How the weights were asked for, for logs and /v1/info: the given spec or the preset's file name."""
    return os.path.basename(str(options.weights or get_preset(options.preset).weights))
