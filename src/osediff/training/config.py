"""Training configuration: typed dataclasses read from YAML, with errors that name the bad key.

Defaults follow the paper and the authors' training script (cswry/OSEDiff ``train_osediff.py``):
AdamW at 5e-5 (betas 0.9/0.999, weight decay 1e-2, eps 1e-8), LoRA rank 4, loss weights
lambda_l2 = 1, lambda_lpips = 2, lambda_vsd = 1, lambda_vsd_lora = 1, CFG 7.5, 512 px crops,
batch 4 with 4 accumulation steps, fp16, gradient clipping at 1.0.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..typed_config import ConfigError, build, coerce, unknown_key

if TYPE_CHECKING:
    from ..degradation import CodeFormerConfig, DegradationConfig

# The negative prompt of the authors' published training command.
DEFAULT_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, unreal engine, "
    "blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, deformed, "
    "lowres, over-smooth"
)


@dataclass
class DataSource:
    """A folder of images (searched recursively) or a text file with one image path per line.

    How often it is drawn, one of two ways for all sources of a config:

    - ``repeat`` (the authors' way, the default with 1): every source's file list is repeated
      ``repeat`` times into one pool, so a source is drawn in proportion to repeat x its image count
      (LSDIR's 84,991 images + 10k FFHQ faces: 10.5 % faces);
    - ``weight``: the relative probability of the source whatever its size (sources given no weight
      count 1); two sources of weight 1 are drawn half and half.
    """

    path: str
    repeat: int | None = None
    weight: float | None = None


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=list)
    crop_size: int = 512
    hflip: bool = True
    scale: int = 4  # LQ is 1/scale of the HQ crop, then resized back to the crop size
    num_workers: int = 2
    # "realesrgan" (the SR model: second-order degradation to 1/scale) or "codeformer" (the face
    # model: one blur/downsample/noise/JPEG stage, back to the crop size; needs scale 1)
    degradation_model: Literal["realesrgan", "codeformer"] = "realesrgan"
    # parameters of that model (``osediff.degradation.DegradationConfig`` or ``CodeFormerConfig``
    # keys); empty means the authors' params_realesrgan.yml / params_codeformer.yml
    degradation: dict[str, Any] = field(default_factory=dict)
    # how the LQ goes back to the crop size as the model input: "bicubic" (as inference pre-upscales)
    # or "degradation" (the authors' loader: a random resize mode before the final 8-bit rounding)
    lq_resize: Literal["bicubic", "degradation"] = "bicubic"
    validation: list[str] = field(default_factory=list)  # HQ images for the LQ|output|HQ strips


@dataclass
class PromptConfig:
    source: Literal["none", "ram", "captions"] = "ram"
    # captions: a sidecar ``<image stem><caption_ext>`` next to each image, or ``cache`` (a JSON
    # object mapping image path -> caption) when given
    caption_ext: str = ".txt"
    cache: str | None = None
    # keyword arguments of the ``ram`` extractor: ram_path, tags_path, device, dtype, batch_size,
    # local_files_only; the files are found before any model loads
    ram_options: dict[str, Any] = field(default_factory=dict)
    negative: str = DEFAULT_NEGATIVE_PROMPT


@dataclass
class ModelConfig:
    base: str | None = None  # diffusers folder or hub id of SD-2.1-base; None tries the mirrors
    rank_unet: int = 4
    rank_vae: int = 4
    rank_regularizer: int = 4
    # regulariser LoRA groups that train: "authors" (their "others" group, the only one active in their
    # code: 0.38 M parameters at SD-2.1 size) or "all" (down, up and others: 4.06 M)
    regularizer_adapters: Literal["authors", "all"] = "authors"
    train_vae: Literal["encoder", "decoder", "both", "none"] = "encoder"
    train_conv_in: bool = True
    gradient_checkpointing: bool = True


@dataclass
class LossConfig:
    lambda_l2: float = 1.0
    lambda_lpips: float = 2.0
    lambda_reg: float = 1.0  # weight of the regularisation term (lambda_vsd in the paper)
    lambda_reg_lora: float = 1.0  # weight of the regulariser UNet's own diffusion loss
    regularization: Literal["vsd_latent", "vsd_image", "adversarial", "none"] = "vsd_latent"
    cfg_scale: float = 7.5
    t_min: int = 20  # VSD timesteps are drawn uniformly from [t_min, t_max)
    t_max: int = 980
    lpips_pretrained: bool = True  # False builds a random-weight VGG (tests, offline smoke runs)


@dataclass
class OptimConfig:
    lr: float = 5e-5
    lr_regularizer: float = 5e-5  # the regulariser LoRA (or discriminator)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                       "polynomial"] = "constant"
    warmup_steps: int = 500
    max_grad_norm: float = 1.0


@dataclass
class RunConfig:
    output_dir: str = "runs/osediff"
    seed: int = 123
    batch_size: int = 4  # per device
    gradient_accumulation: int = 4
    max_steps: int = 100_000  # optimiser steps
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 500
    export_every: int = 0  # 0: export only at the end
    log_every: int = 10
    device: str | None = None  # None lets Accelerate choose


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, base_dir: str | Path | None = None) -> TrainConfig:
        """Build from a plain dict; relative data paths are taken relative to ``base_dir``."""
        config = build(cls, _expand_shorthands(raw or {}), "")
        config._validate()
        if base_dir is not None:
            config._resolve_paths(Path(base_dir))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        try:
            return cls.from_dict(raw, base_dir=path.parent)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _validate(self) -> None:
        checks = [
            (self.data.crop_size > 0 and self.data.crop_size % (8 * self.data.scale) == 0,
             "data.crop_size", f"must be a positive multiple of 8 * data.scale = {8 * self.data.scale}"),
            (self.data.scale >= 1, "data.scale", "must be >= 1"),
            (all(s.weight is None or s.weight > 0 for s in self.data.sources), "data.sources",
             "every weight must be > 0"),
            (all(s.repeat is None or s.repeat >= 1 for s in self.data.sources), "data.sources",
             "every repeat must be >= 1"),
            (not (any(s.weight is not None for s in self.data.sources)
                  and any(s.repeat is not None for s in self.data.sources)), "data.sources",
             "give sources a repeat (drawn in proportion to repeat x size) or a weight (a probability), "
             "not both kinds"),
            (self.data.degradation_model != "codeformer" or self.data.scale == 1, "data.scale",
             "must be 1 with the codeformer degradation (its LQ comes back at the crop size)"),
            (self.data.degradation_model != "codeformer" or self.data.lq_resize == "bicubic", "data.lq_resize",
             "the codeformer degradation resizes its LQ back itself (bilinear); leave lq_resize out"),
            (min(self.model.rank_unet, self.model.rank_vae, self.model.rank_regularizer) >= 1,
             "model.rank_*", "LoRA ranks must be >= 1"),
            (0 <= self.loss.t_min < self.loss.t_max <= 1000, "loss.t_min/t_max",
             "need 0 <= t_min < t_max <= 1000"),
            (self.optim.lr > 0 and self.optim.lr_regularizer > 0, "optim.lr", "learning rates must be > 0"),
            (self.run.batch_size >= 1, "run.batch_size", "must be >= 1"),
            (self.run.gradient_accumulation >= 1, "run.gradient_accumulation", "must be >= 1"),
            (self.run.max_steps >= 1, "run.max_steps", "must be >= 1"),
            (self.run.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1"),
            (self.prompts.source != "captions" or self.prompts.caption_ext.startswith(".") or self.prompts.cache,
             "prompts.caption_ext", "must start with '.'"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{key}: {message}")
        self.prompts.ram_options = check_ram_options(self.prompts.ram_options)
        self.degradation_config()

    def degradation_config(self) -> DegradationConfig | CodeFormerConfig:
        """The config of ``data.degradation_model`` from ``data.degradation`` (Real-ESRGAN's scale from data.scale)."""
        from ..degradation import CodeFormerConfig, DegradationConfig

        try:
            if self.data.degradation_model == "codeformer":
                return CodeFormerConfig.from_dict(self.data.degradation)
            return DegradationConfig.from_dict({**self.data.degradation, "scale": self.data.scale})
        except ConfigError as err:
            raise ConfigError(f"data.degradation: {err}") from None

    def _resolve_paths(self, base_dir: Path) -> None:
        def absolute(p: str) -> str:
            path = Path(p).expanduser()
            return str(path if path.is_absolute() else base_dir / path)

        for source in self.data.sources:
            source.path = absolute(source.path)
        self.data.validation = [absolute(p) for p in self.data.validation]
        if self.prompts.cache:
            self.prompts.cache = absolute(self.prompts.cache)
        for key in _RAM_FILE_OPTIONS:  # local paths only: hf:// and URLs stay as they are
            spec = self.prompts.ram_options.get(key)
            if spec is not None and "://" not in spec:
                self.prompts.ram_options[key] = absolute(spec)


_RAM_FILE_OPTIONS = ("ram_path", "tags_path")
# keyword arguments of the ``ram`` factory that a training config may not set
_RAM_OPTIONS_REFUSED = {
    "bare": "set by training (it prompts with the tags alone, as the authors did)",
    # the file resolver training shares with inference takes the tag list only
    "thresholds_path": "not read in training; put ram_tag_list_threshold.txt beside the tag list given as "
                       "prompts.ram_options.tags_path",
}


def check_ram_options(options: dict[str, Any]) -> dict[str, Any]:
    """``prompts.ram_options`` checked against the ``ram`` factory's keyword arguments and their types."""
    if not options:
        return options
    import inspect
    import typing

    from ..prompts.dape import create_plain_ram_extractor

    hints = typing.get_type_hints(create_plain_ram_extractor)
    names = [n for n in inspect.signature(create_plain_ram_extractor).parameters if n not in _RAM_OPTIONS_REFUSED]
    checked = {}
    for key, value in options.items():
        path = f"prompts.ram_options.{key}"
        if key in _RAM_OPTIONS_REFUSED:
            raise ConfigError(f"{path}: {_RAM_OPTIONS_REFUSED[key]}")
        if key not in names:
            raise unknown_key(key, path, names)
        checked[key] = coerce(hints[key], os.fspath(value) if isinstance(value, os.PathLike) else value, path)
    return checked


def _expand_shorthands(raw: Any) -> Any:
    """A bare string in ``data.sources`` is a path with the default sampling."""
    data = raw.get("data") if isinstance(raw, dict) else None
    sources = data.get("sources") if isinstance(data, dict) else None
    if isinstance(sources, list):
        data = {**data, "sources": [{"path": s} if isinstance(s, str) else s for s in sources]}
        raw = {**raw, "data": data}
    return raw
