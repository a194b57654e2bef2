"""What a training run reads, found before any model loads: the resume checkpoint, the HQ images,
the SD-2.1-base folder and the RAM tagger's files.

A miss is one OSEDiffError naming the config key (``model.base``, ``prompts.ram_options.*``,
``data.sources``) rather than inference's flags, raised before gigabytes of weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpointing import ResumeError, resolve_resume
from .config import PromptConfig, TrainConfig
from .data import HQDataset, build_dataset

if TYPE_CHECKING:
    from ..checkpoint.hub import Option


@dataclass
class RunInputs:
    checkpoint: Path | None  # what --resume names (None: a fresh run, or `latest` found none)
    dataset: HQDataset | None  # None for an export, which reads no images
    prompt_options: dict[str, Any]  # the ``ram`` extractor's arguments, files as local paths


def find_run_inputs(config: TrainConfig, resume: str | None, *, export_only: bool = False,
                    need_base: bool = True) -> RunInputs:
    """Everything the run will read; ``need_base=False`` when the caller brings its own SD components."""
    checkpoint = resolve_resume(resume, config.run.output_dir)
    if export_only and checkpoint is None:
        raise ResumeError(f"--export-only: no checkpoint to export in {config.run.output_dir} "
                          f"(--resume {resume} found none)")
    dataset = None if export_only else build_dataset(config.data, config.prompts, config.run.seed)
    if need_base:
        resolve_training_base(config.model.base)  # found (or fetched) now; the Trainer then finds it locally
    prompt_options = {} if export_only else resolve_training_prompts(config.prompts)  # an export tags nothing
    return RunInputs(checkpoint, dataset, prompt_options)


def resolve_training_base(base: str | None) -> Path:
    """The local SD-2.1-base folder of ``model.base``; a miss names that key, not inference's --base."""
    from ..checkpoint.hub import ModelNotFoundError, Option, resolve_base

    try:
        return resolve_base(base)
    except ModelNotFoundError as err:
        option = Option("model.base (a diffusers folder or hub id) in the training config",
                        "model.base (a diffusers folder or hub id) in the --config file")
        raise ModelNotFoundError(err.reason, option) from None


def resolve_training_prompts(prompts: PromptConfig) -> dict[str, Any]:
    """With ``prompts.source: ram``, the ``ram`` extractor's arguments with its files as local paths.

    Found as ``model.base`` is (the cache, then the network unless offline or
    ``ram_options.local_files_only``); a miss is one ModelNotFoundError naming the config keys.
    ``{}`` for the other sources.
    """
    from ..checkpoint.hub import ModelNotFoundError
    from ..prompts import resolve_extractor_files

    if prompts.source != "ram":
        return {}
    options = prompts.ram_options
    try:
        files = resolve_extractor_files("ram", ram=options.get("ram_path"), ram_tags=options.get("tags_path"),
                                        local_files_only=options.get("local_files_only", False))
    except ModelNotFoundError as err:
        raise ModelNotFoundError(err.reason, _ram_option(err.option)) from None
    return {**options, **files, "local_files_only": True}


_RAM_KEYS = {"ram_path": "ram_swin_large_14m.pth",
             "tags_path": "a folder with ram_tag_list.txt and ram_tag_list_threshold.txt"}


def _ram_option(option: Option | None) -> Option:
    """The config keys for the files an inference option names (its arguments are ``ram_path=<...>``, ...)."""
    from ..checkpoint.hub import Option

    keys = [k for k in _RAM_KEYS if option is not None and f"{k}=" in option.argument] or list(_RAM_KEYS)
    named = " and ".join(f"prompts.ram_options.{k} ({_RAM_KEYS[k]})" for k in keys)
    return Option(f"{named} in the training config", f"{named} in the --config file")
