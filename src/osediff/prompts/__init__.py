"""Prompt extraction (DAPE/RAM tags, captioners) behind one small interface.

Importing this package registers ``none``, ``text``, ``dape``, ``ram`` and ``caption`` without
importing torch, timm or transformers; each factory loads its libraries when called.
"""

from .base import (
    EmptyPrompt,
    PromptExtractor,
    UnknownPromptExtractorError,
    UserPrompt,
    available_prompt_extractors,
    compose_prompt,
    create_prompt_extractor,
    extractor_needs_model,
    known_prompt_extractor,
    register_prompt_extractor,
    resolve_extractor_files,
)


def _ram_files(*, use_dape: bool):
    def resolve(*, ram=None, dape=None, ram_tags=None, captioner=None, local_files_only=False) -> dict:
        from .files import resolve_ram_files

        return resolve_ram_files(ram, dape, ram_tags, use_dape=use_dape, local_files_only=local_files_only)

    return resolve


def _caption_files(*, ram=None, dape=None, ram_tags=None, captioner=None, local_files_only=False) -> dict:
    from .files import resolve_captioner

    return {"model": resolve_captioner(captioner, local_files_only=local_files_only)}


@register_prompt_extractor("dape", files=_ram_files(use_dape=True))
def _dape(**kwargs) -> PromptExtractor:
    """RAM + DAPE LoRA tags (OSEDiff inference); see :func:`osediff.prompts.dape.create_dape_extractor`."""
    from .dape import create_dape_extractor

    return create_dape_extractor(**kwargs)


@register_prompt_extractor("ram", files=_ram_files(use_dape=False))
def _ram(**kwargs) -> PromptExtractor:
    """Plain RAM tags (OSEDiff training); see :func:`osediff.prompts.dape.create_plain_ram_extractor`."""
    from .dape import create_plain_ram_extractor

    return create_plain_ram_extractor(**kwargs)


@register_prompt_extractor("caption", files=_caption_files)
def _caption(**kwargs) -> PromptExtractor:
    """A transformers image-to-text model; see :func:`osediff.prompts.captioner.create_caption_extractor`."""
    from .captioner import create_caption_extractor

    return create_caption_extractor(**kwargs)


__all__ = [
    "EmptyPrompt",
    "PromptExtractor",
    "UnknownPromptExtractorError",
    "UserPrompt",
    "available_prompt_extractors",
    "compose_prompt",
    "create_prompt_extractor",
    "extractor_needs_model",
    "known_prompt_extractor",
    "register_prompt_extractor",
    "resolve_extractor_files",
]
