"""Resolving every model file a batch job needs, then loading the pipeline from those local files.

Resolution comes first and fails in one line naming the missing file and the option that supplies
it; nothing heavy loads until every file is known to be there.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OSEDiffError
from ..prompts import extractor_needs_model, resolve_extractor_files
from .config import TEXT_EXTRACTORS, BatchConfig


class ModelFilesError(OSEDiffError):
    """The prompt extractor's model files are missing and no fallback was asked for."""


@dataclass
class ResolvedModels:
    """Local paths for everything the job loads; ``extractor`` is the one that will actually run."""

    base: Path
    weights: Path
    extractor: str
    user_prompt: str
    extractor_kwargs: dict = field(default_factory=dict)


def resolve_models(config: BatchConfig) -> ResolvedModels:
    """Find (and download unless offline) the base model, the weights and the extractor's files."""
    from ..checkpoint import ModelNotFoundError, resolve_base
    from ..presets import resolve_weights

    model = config.model
    base = resolve_base(model.base, local_files_only=model.offline)
    weights_path = resolve_weights(model.weights, preset=model.preset, local_files_only=model.offline)
    name = config.prompt_extractor if config.needs_extractor else "text"
    kwargs: dict = {}
    if config.needs_extractor:
        try:
            kwargs = resolve_extractor_files(name, ram=config.ram, dape=config.dape, ram_tags=config.ram_tags,
                                             captioner=config.captioner, local_files_only=model.offline)
        except ModelNotFoundError as err:
            name = _fallback(config, err)
    return ResolvedModels(base, weights_path, name, "" if name == "none" else config.prompt, kwargs)


def _fallback(config: BatchConfig, err: Exception) -> str:
    name, reason = config.prompt_extractor, cli_message(err)
    if config.prompt_fallback is None:
        raise ModelFilesError(f"prompt extractor {name!r}: {reason} (pass --prompt-fallback text to go "
                              "on without it)") from None
    print(f"warning: prompt extractor {name!r} unavailable ({reason}); using {config.prompt_fallback!r}",
          file=sys.stderr)
    return config.prompt_fallback


def cli_message(err: BaseException) -> str:
    """The first line of an error, naming command-line flags where the error knows them."""
    text = err.cli_message() if hasattr(err, "cli_message") else str(err)
    return text.splitlines()[0] if text else type(err).__name__


def load_pipeline(config: BatchConfig, resolved: ResolvedModels):
    """The pipeline on its device, optimised as the CLI runs it, with the prompt extractor attached."""
    import torch

    from ..device import pick_decoder_dtype, pick_device, pick_dtype
    from ..pipeline import OSEDiffPipeline

    model = config.model
    device = pick_device(model.device)
    if config.world > 1 and device.type == "cuda":  # one GPU per process under accelerate/torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", config.rank)) % torch.cuda.device_count())
    dtype = pick_dtype(model.dtype, device)
    # one fixed prompt for the whole batch: encoded while loading, then the text encoder is freed
    fixed = resolved.extractor in TEXT_EXTRACTORS and config.prompts_from is None
    pipe = OSEDiffPipeline.from_pretrained(
        resolved.base, resolved.weights, device=device, dtype=dtype, merge_lora=model.merge_lora,
        local_files_only=model.offline, prompts=[resolved.user_prompt] if fixed else None,
        decoder_dtype=pick_decoder_dtype(model.decoder_dtype, device, dtype),
    )
    if model.compile_unet:
        pipe.optimize(channels_last=False, compile_unet=True)
    if model.preview_decoder:
        from diffusers import AutoencoderTiny

        pipe.use_preview_decoder(AutoencoderTiny.from_pretrained(model.preview_decoder,
                                                                 local_files_only=model.offline))
    if config.needs_extractor and resolved.extractor not in TEXT_EXTRACTORS:
        pipe.prompt_extractor = _build_extractor(config, resolved, device, dtype)
    return pipe


def _build_extractor(config: BatchConfig, resolved: ResolvedModels, device, dtype):
    import torch

    from ..prompts import create_prompt_extractor

    name = resolved.extractor
    if not extractor_needs_model(name):
        return create_prompt_extractor(name)
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    return create_prompt_extractor(name, device=str(device), dtype=dtype_name, batch_size=config.prompt_batch_size,
                                   local_files_only=config.model.offline, **resolved.extractor_kwargs)
