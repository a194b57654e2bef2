"""Prompt extractors: turn the (pre-upscaled) LQ images into the text the UNet is conditioned on.

An extractor is a callable ``(images, user_prompt) -> list[str]`` giving one final prompt per
image. Register a factory with :func:`register_prompt_extractor`; build one by name with
:func:`create_prompt_extractor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image


class PromptExtractor(Protocol):
    def __call__(self, images: list[Image.Image], user_prompt: str = "") -> list[str]: ...


_REGISTRY: dict[str, Callable[..., PromptExtractor]] = {}


def register_prompt_extractor(name: str):
    def decorate(factory: Callable[..., PromptExtractor]) -> Callable[..., PromptExtractor]:
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_prompt_extractors() -> list[str]:
    return sorted(_REGISTRY)


def create_prompt_extractor(name: str, **kwargs) -> PromptExtractor:
    """Build a registered extractor; ``kwargs`` go to its factory (weights paths, device, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown prompt extractor {name!r}; available: {', '.join(available_prompt_extractors())}")
    return _REGISTRY[name](**kwargs)


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
