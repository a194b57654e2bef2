"""Prompt extraction (DAPE/RAM tags, captioners) behind one small interface.

Importing this package registers ``none``, ``text``, ``dape``, ``ram`` and ``caption`` without
importing torch, timm or transformers; each factory loads its libraries when called.
"""

from .base import (
    EmptyPrompt,
    PromptExtractor,
    UserPrompt,
    available_prompt_extractors,
    compose_prompt,
    create_prompt_extractor,
    register_prompt_extractor,
)


@register_prompt_extractor("dape")
def _dape(**kwargs) -> PromptExtractor:
    """RAM + DAPE LoRA tags (OSEDiff inference); see :func:`osediff.prompts.dape.create_dape_extractor`."""
    from .dape import create_dape_extractor

    return create_dape_extractor(**kwargs)


@register_prompt_extractor("ram")
def _ram(**kwargs) -> PromptExtractor:
    """Plain RAM tags (OSEDiff training); see :func:`osediff.prompts.dape.create_plain_ram_extractor`."""
    from .dape import create_plain_ram_extractor

    return create_plain_ram_extractor(**kwargs)


@register_prompt_extractor("caption")
def _caption(**kwargs) -> PromptExtractor:
    """A transformers image-to-text model; see :func:`osediff.prompts.captioner.create_caption_extractor`."""
    from .captioner import create_caption_extractor

    return create_caption_extractor(**kwargs)


__all__ = [
    "EmptyPrompt",
    "PromptExtractor",
    "UserPrompt",
    "available_prompt_extractors",
    "compose_prompt",
    "create_prompt_extractor",
    "register_prompt_extractor",
]
