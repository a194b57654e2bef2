"""Prompt extraction (DAPE/RAM tags, captioners) behind one small interface."""

from .base import (
    EmptyPrompt,
    PromptExtractor,
    UserPrompt,
    available_prompt_extractors,
    compose_prompt,
    create_prompt_extractor,
    register_prompt_extractor,
)

__all__ = [
    "EmptyPrompt",
    "PromptExtractor",
    "UserPrompt",
    "available_prompt_extractors",
    "compose_prompt",
    "create_prompt_extractor",
    "register_prompt_extractor",
]
