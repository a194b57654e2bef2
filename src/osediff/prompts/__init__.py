"""Prompt extraction (DAPE/RAM tags, captioners) behind one small interface."""

from .base import (
    EmptyPrompt,
    UserPrompt,
    PromptExtractor,
    available_prompt_extractors,
    compose_prompt,
    create_prompt_extractor,
    register_prompt_extractor,
)

__all__ = [
    "EmptyPrompt",
    "UserPrompt",
    "PromptExtractor",
    "available_prompt_extractors",
    "compose_prompt",
    "create_prompt_extractor",
    "register_prompt_extractor",
]
