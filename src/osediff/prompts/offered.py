"""The prompt extractors one front end offers, by name, each built once and shared by every request.

``text`` and ``none`` need no model and are always offered; the others are offered with their files
already found (``osediff.model_files.find_model_files``) and are built from those local files on the
device and in the dtype given, on first use or all at once (:meth:`PromptExtractors.build_all`).
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from ..errors import OSEDiffError
from ..fileio import first_line
from .base import (
    PromptExtractor,
    available_prompt_extractors,
    create_prompt_extractor,
    extractor_needs_model,
    known_prompt_extractor,
)

ALWAYS_OFFERED = ("text", "none")


class ExtractorUnavailableError(OSEDiffError):
    """An extractor that is not offered here (``reason`` says why), or that failed to load."""

    def __init__(self, problem: str = "", *, argument: str | None = "prompt_extractor", name: str = "",
                 reason: str = "") -> None:
        super().__init__(problem, argument=argument)
        self.name, self.reason = name, reason


class PromptExtractors:
    """Extractors on offer: ``files`` maps each model extractor to its factory's file arguments.

    Models are built with ``device``, ``dtype`` (torch objects) and ``batch_size`` from local files
    only. Only the extractor being built is locked, so requests using others go on meanwhile; one
    that failed to load is not tried again. ``unavailable`` names extractors that are not offered
    and why (files missing); ``built`` adds extractors made elsewhere (a callable of the
    :class:`PromptExtractor` shape under any name).
    """

    def __init__(self, files: Mapping[str, Mapping[str, Any]] | None = None, *, device: Any = None,
                 dtype: Any = None, batch_size: int = 8, unavailable: Mapping[str, str] | None = None,
                 built: Mapping[str, PromptExtractor] | None = None) -> None:
        self._files = {name: dict(kwargs) for name, kwargs in (files or {}).items()}
        for name in ALWAYS_OFFERED:
            self._files.setdefault(name, {})
        self._factory_kwargs = {"device": device, "dtype": dtype, "batch_size": batch_size, "local_files_only": True}
        self.unavailable = dict(unavailable or {})
        self._built: dict[str, PromptExtractor] = dict(built or {})
        self._failed: dict[str, ExtractorUnavailableError] = {}
        self._building: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    @property
    def names(self) -> list[str]:
        return sorted({*self._files, *self._built})

    def get(self, name: str) -> PromptExtractor:
        """The extractor called ``name``, built now if this is its first use."""
        if name in self._built:
            return self._built[name]
        if name not in self._files:
            if name in self.unavailable:
                raise ExtractorUnavailableError(f"{name!r} is not offered here ({self.unavailable[name]})",
                                                name=name, reason=self.unavailable[name])
            known_prompt_extractor(name)
            raise ExtractorUnavailableError(f"{name!r} is not offered here; choose one of {', '.join(self.names)}",
                                            name=name, reason="not loaded")
        with self._building[name]:
            if name in self._failed:
                raise self._failed[name]
            if name not in self._built:
                self._built[name] = self._build(name)
            return self._built[name]

    def _build(self, name: str) -> PromptExtractor:
        if not extractor_needs_model(name):
            return create_prompt_extractor(name)
        try:
            return create_prompt_extractor(name, **self._files[name], **self._factory_kwargs)
        except Exception as err:  # unreadable weights, a missing optional package, out of memory, ...
            # the whole message goes to the log; requests learn the reason without server paths
            print(f"prompt extractor {name!r} failed to load: {err}", file=sys.stderr, flush=True)
            # ``reason`` is what a web page may show (no paths); the message has the whole first line
            self._failed[name] = ExtractorUnavailableError(
                f"{name!r} could not be loaded ({first_line(err)})", name=name,
                reason=getattr(err, "reason", None) or type(err).__name__)
            raise self._failed[name] from None

    def build_all(self) -> PromptExtractors:
        """Build every extractor on offer now (a service does, so no request waits for a model)."""
        for name in self.names:
            self.get(name)
        return self

    def release_models(self) -> None:
        """Drop the extractors that hold a network; they are built again if asked for."""
        for name in [n for n in self._built if n in available_prompt_extractors() and extractor_needs_model(n)]:
            del self._built[name]
