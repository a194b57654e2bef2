"""Prompt extractors: turn the (pre-upscaled) LQ images into the text the UNet is conditioned on.

An extractor is a callable ``(images, user_prompt) -> list[str]`` giving one final prompt per
image. Register a factory with :func:`register_prompt_extractor`; build one by name with
:func:`create_prompt_extractor`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from ..errors import OSEDiffError


class PromptExtractor(Protocol):
    def __call__(self, images: list[Image.Image], user_prompt: str = "") -> list[str]: ...


class UnknownPromptExtractorError(OSEDiffError, ValueError):
    """A prompt extractor name that is not registered."""


# resolves an extractor's model files: (ram=, dape=, ram_tags=, captioner=, local_files_only=) -> factory kwargs
FileResolver = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., PromptExtractor]
    files: FileResolver | None  # None: the extractor loads no model


_REGISTRY: dict[str, _Entry] = {}


def register_prompt_extractor(name: str, *, files: FileResolver | None = None):
    """Register a factory; ``files`` (for extractors that load a model) resolves its files first."""

    def decorate(factory: Callable[..., PromptExtractor]) -> Callable[..., PromptExtractor]:
        _REGISTRY[name] = _Entry(factory, files)
        return factory

    return decorate


def available_prompt_extractors() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UnknownPromptExtractorError(f"{name!r} is not a prompt extractor; choose one of "
                                          f"{', '.join(available_prompt_extractors())}", argument="prompt_extractor")
    return _REGISTRY[name]


def known_prompt_extractor(name: str) -> str:
    """``name`` if it is registered, else :class:`UnknownPromptExtractorError` listing the registered ones."""
    _entry(name)
    return name


def extractor_needs_model(name: str) -> bool:
    """Whether ``name`` loads a network (and so needs model files, a device and a dtype)."""
    return _entry(name).files is not None


def resolve_extractor_files(name: str, *, ram: str | os.PathLike | None = None,
                            dape: str | os.PathLike | None = None, ram_tags: str | os.PathLike | None = None,
                            captioner: str | os.PathLike | None = None,
                            local_files_only: bool = False) -> dict[str, Any]:
    """Every model file ``name`` needs, as local paths in its factory's keyword arguments.

    Call it before loading anything: a missing file raises one
    :class:`~osediff.checkpoint.ModelNotFoundError` naming the arguments that supply each file
    (``err.message(osediff.cli.flags.flag_for)`` names the flags ``--ram``, ``--dape``, ``--ram-tags``,
    ``--captioner``); offline it fails in well under a second, and a second call within a minute fails
    at once. Extractors without a model give ``{}``.
    """
    files = _entry(name).files
    if files is None:
        return {}
    return files(ram=ram, dape=dape, ram_tags=ram_tags, captioner=captioner, local_files_only=local_files_only)


def create_prompt_extractor(name: str, **kwargs) -> PromptExtractor:
    """Build a registered extractor; ``kwargs`` go to its factory (weights paths, device, ...)."""
    return _entry(name).factory(**kwargs)


def compose_prompt(extracted: str, user_prompt: str = "") -> str:
    """The authors' format: ``"<tags>, <user prompt>,"`` (their trailing comma included)."""
    return f"{extracted}, {user_prompt or ''},"


class EmptyPrompt:
    """``none``: unconditional on text, whatever the user typed."""

    def __call__(self, images: list[Image.Image], user_prompt: str = "") -> list[str]:
        return [""] * len(images)


class UserPrompt:
    """``text``: the user's prompt for every image."""

    def __call__(self, images: list[Image.Image], user_prompt: str = "") -> list[str]:
        return [user_prompt or ""] * len(images)


register_prompt_extractor("none")(lambda **_: EmptyPrompt())
register_prompt_extractor("text")(lambda **_: UserPrompt())
