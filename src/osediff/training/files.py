"""What a training run reads, found before any model loads: the resume checkpoint, the HQ images,
the SD-2.1-base folder and the RAM tagger's files.

A missing model file is one :class:`ConfigFilesError` (a ModelNotFoundError) naming the config keys
(``model.base``, ``prompts.ram_options.*``) rather than inference's arguments and flags, raised
before gigabytes of weights are read; the misses of ``model.base`` and the RAM files come in one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..checkpoint.hub import ModelNotFoundError, Option
from ..errors import as_python_argument
from .checkpointing import ResumeError, resolve_resume
from .config import PromptConfig, TrainConfig
from .data import HQDataset, build_dataset

# inference's argument for a file -> the config key that supplies it in training
CONFIG_KEYS: dict[str, Option] = {
    "base": Option("model.base", "a diffusers folder or hub id"),
    "ram_path": Option("prompts.ram_options.ram_path", "ram_swin_large_14m.pth"),
    "tags_path": Option("prompts.ram_options.tags_path",
                        "a folder with ram_tag_list.txt and ram_tag_list_threshold.txt"),
}


class ConfigFilesError(ModelNotFoundError):
    """Model files a training config names could not be found; the options are config keys.

    The message ends ``"; pass model.base (a diffusers folder or hub id) in the training config"``
    (Python) or ``"... in the --config file"`` (the command line, told apart by a ``name_of`` that
    gives flags).
    """

    def message(self, name_of: Callable[[str], str] = as_python_argument) -> str:
        options = self.options
        if not options:
            return self.reason
        keys = [f"{option.argument} ({option.hint})" for option in options]
        listed = f"{', '.join(keys[:-1])} and {keys[-1]}" if len(keys) > 1 else keys[0]
        return f"{self.reason}; pass {listed} in {_config_file(name_of)}"

    @classmethod
    def from_inference(cls, err: ModelNotFoundError) -> ConfigFilesError:
        """``err`` with each miss's inference argument (``ram_path``) replaced by its config key."""
        return cls(tuple(replace(miss, option=CONFIG_KEYS.get(miss.option.argument) if miss.option else None)
                         for miss in err.misses), subject=err.subject)


def _config_file(name_of: Callable[[str], str]) -> str:
    """``"the --config file"`` where ``name_of`` gives flags (the command line), else ``"the training config"``."""
    flag = name_of("config")
    if flag != "config":
        return f"the {flag} file"
    return "the --config file" if name_of("base") != "base" else "the training config"


@dataclass
class RunInputs:
    checkpoint: Path | None  # what --resume names (None: a fresh run, or `latest` found none)
    dataset: HQDataset | None  # None for an export, which reads no images
    prompt_options: dict[str, Any]  # the ``ram`` extractor's arguments, files as local paths


def find_run_inputs(config: TrainConfig, resume: str | None, *, export_only: bool = False,
                    need_base: bool = True) -> RunInputs:
    """Everything the run will read; ``need_base=False`` when the caller brings its own SD components.

    Missing ``model.base`` and RAM files are reported together, in one :class:`ConfigFilesError`.
    """
    checkpoint = resolve_resume(resume, config.run.output_dir)
    if export_only and checkpoint is None:
        raise ResumeError(f"{{argument}}: no checkpoint to export in {config.run.output_dir} "
                          f"(resume {resume} found none)", argument="export_only")
    dataset = None if export_only else build_dataset(config.data, config.prompts, config.run.seed)
    misses: list[ModelNotFoundError] = []
    if need_base:
        try:
            resolve_training_base(config.model.base)  # found (or fetched) now; the Trainer then finds it locally
        except ModelNotFoundError as err:
            misses.append(err)
    prompt_options: dict[str, Any] = {}
    if not export_only:  # an export tags nothing
        try:
            prompt_options = resolve_training_prompts(config.prompts)
        except ModelNotFoundError as err:
            misses.append(err)
    if misses:
        raise ConfigFilesError.merge(misses)
    return RunInputs(checkpoint, dataset, prompt_options)


def resolve_training_base(base: str | None) -> Path:
    """The local SD-2.1-base folder of ``model.base``; a miss names that key, not inference's ``base``."""
    from ..checkpoint.hub import resolve_base

    try:
        return resolve_base(base)
    except ModelNotFoundError as err:
        raise ConfigFilesError.from_inference(err) from None


def resolve_training_prompts(prompts: PromptConfig) -> dict[str, Any]:
    """With ``prompts.source: ram``, the ``ram`` extractor's arguments with its files as local paths.

    Found as ``model.base`` is (the cache, then the network unless offline or
    ``ram_options.local_files_only``); a miss is one :class:`ConfigFilesError` naming the config keys.
    ``{}`` for the other sources.
    """
    from ..prompts import resolve_extractor_files

    if prompts.source != "ram":
        return {}
    options = prompts.ram_options
    try:
        files = resolve_extractor_files("ram", ram=options.get("ram_path"), ram_tags=options.get("tags_path"),
                                        local_files_only=options.get("local_files_only", False))
    except ModelNotFoundError as err:
        raise ConfigFilesError.from_inference(err) from None
    return {**options, **files, "local_files_only": True}
