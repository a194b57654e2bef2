"""The one way every front end loads the model: :func:`load_upscaler`.

The command line, the batch runner, each Ray replica, each service replica and the demo call it
with the :class:`~osediff.model_files.ModelOptions` they were given and the files
:func:`~osediff.model_files.find_model_files` found, so the model is the same whichever asks.
Device and dtype are parsed once, here, and handed down as torch objects. ``options.backend``
``onnxruntime`` or ``openvino`` loads an export folder instead (made in the cache on first use) into
a model with the pipeline's methods, under the same per-image step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .device import pick_decoder_dtype, pick_device, pick_dtype
from .model_files import ModelFiles, ModelOptions, find_model_files
from .pipeline import OSEDiffPipeline, Upscaler
from .prompts.offered import ALWAYS_OFFERED, PromptExtractors


def load_upscaler(options: ModelOptions, files: ModelFiles | None = None, *, device: torch.device | None = None,
                  fixed_prompts: Sequence[str] | None = None, build_extractors: bool = False) -> Upscaler:
    """The pipeline on its device, optimised as measured fastest, with the extractors of ``files``.

    ``files`` defaults to what :func:`~osediff.model_files.find_model_files` finds for ``options`` with
    the extractors that need no model (``text``, ``none``): the Python API's
    ``load_upscaler(ModelOptions(backend="openvino"))``. ``device`` overrides ``options.device`` (one
    GPU per process under torchrun). With ``fixed_prompts`` only those prompts can be used: they are
    encoded while loading and the text encoder is never kept. ``build_extractors`` builds every
    extractor now instead of on first use.
    """
    if files is None:
        files = find_model_files(options, ALWAYS_OFFERED)
    if options.backend != "torch":
        return _load_exported(options, files, fixed_prompts, build_extractors)
    device = device or pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    preview = None
    if options.preview_decoder:
        from diffusers import AutoencoderTiny

        preview = AutoencoderTiny.from_pretrained(options.preview_decoder, local_files_only=options.offline)
    pipe = OSEDiffPipeline.from_pretrained(
        files.base, files.weights, device=device, dtype=dtype, merge_lora=options.merge_lora,
        local_files_only=True, prompts=fixed_prompts, preview_decoder=preview,
        decoder_dtype=pick_decoder_dtype(options.decoder_dtype, device, dtype))
    if options.compile_unet:
        pipe.optimize(channels_last=False, compile_unet=True)
    extractors = PromptExtractors(files.extractors, device=device, dtype=dtype,
                                  batch_size=options.prompt_batch_size, unavailable=files.unavailable)
    if build_extractors:
        extractors.build_all()
    return Upscaler(pipe, extractors, owns_models=True)


def describe_precision(model: object) -> str:
    """How a loaded model computes, for logs and /v1/info: the torch dtype's name (``float32``), or
    an export's runtime and precision (``openvino int8``)."""
    describe = getattr(model, "describe_precision", None)
    return describe() if describe is not None else str(model.dtype).removeprefix("torch.")  # type: ignore[attr-defined]


def _load_exported(options: ModelOptions, files: ModelFiles, fixed_prompts: Sequence[str] | None,
                   build_extractors: bool) -> Upscaler:
    """The export ``files.exported`` plans (made first if it is not there yet) in its runtime, on the CPU."""
    from .export.build import ensure_export
    from .export.runtime import load_exported

    model = load_exported(ensure_export(options, files), inference=files.exported.inference)
    extractors = PromptExtractors(files.extractors, device=torch.device("cpu"), dtype=torch.float32,
                                  batch_size=options.prompt_batch_size, unavailable=files.unavailable)
    if build_extractors:
        extractors.build_all()
    upscaler = Upscaler(model, extractors, owns_models=True)
    if fixed_prompts is not None:  # as the pipeline: encoded now, and the text encoder never kept
        upscaler.prompts.keep(list(fixed_prompts))
        model.text_encoder = None
    return upscaler
