"""``dape`` and ``ram`` prompt extractors: RAM tags of each image, optionally with DAPE's LoRA.

OSEDiff tags the pre-upscaled LQ image with DAPE (RAM fine-tuned on degraded images) and prompts
the UNet with ``"<tags>, <user prompt>,"``; its training tags the HQ image with plain RAM and uses
the bare tag string. Images go through the model in batches, in half precision on GPU.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..checkpoint.weights import CheckpointError
from ..device import pick_device, pick_dtype
from .base import compose_prompt
from .files import DAPE_MIRRORS, DEFAULT_DAPE, DEFAULT_RAM, RAM_MIRRORS, resolve_ram_files
from .ram_model import RAMTagger, build_ram, imagenet_normalise, resize_for_ram
from .ram_weights import config_from_state_dict, load_published, read_state_dict
from .tags import TagVocabulary, read_tag_vocabulary

__all__ = [
    "DAPE_MIRRORS",
    "DEFAULT_DAPE",
    "DEFAULT_RAM",
    "RAM_MIRRORS",
    "RAMPromptExtractor",
    "create_dape_extractor",
    "create_plain_ram_extractor",
    "load_ram_extractor",
]


class RAMPromptExtractor:
    """Tags images with a loaded :class:`RAMTagger`; calling it gives the final prompts.

    ``bare=True`` makes ``__call__`` return the tag strings alone (the authors' training prompt)
    instead of ``compose_prompt(tags, user_prompt)``.
    """

    def __init__(self, model: RAMTagger, vocabulary: TagVocabulary, *, batch_size: int = 8,
                 bare: bool = False, antialias: bool = False):
        if model.config.num_classes != len(vocabulary):
            raise ValueError(f"the model scores {model.config.num_classes} tags but the vocabulary "
                             f"has {len(vocabulary)}")
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.batch_size = max(1, int(batch_size))
        self.bare = bare
        self.antialias = antialias

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in [0, 1], any size -> [B, num_tags] tag probabilities.

        Resize and normalisation run in float32, the network (and its sigmoid) in the model's
        dtype: the authors' ToTensor -> Resize -> Normalize -> ``.half()`` order.
        """
        size = self.model.config.image_size
        inputs = imagenet_normalise(resize_for_ram(pixels.to(self.device), size, antialias=self.antialias))
        return torch.sigmoid(self.model(inputs.to(self.dtype)))

    def tags(self, images: list[Image.Image]) -> list[str]:
        """Bare tag strings, one per image; each is resized on its own so any sizes share a batch."""
        out: list[str] = []
        size = self.model.config.image_size
        for start in range(0, len(images), self.batch_size):
            batch = [resize_for_ram(self._tensor(image), size, antialias=self.antialias)
                     for image in images[start:start + self.batch_size]]
            out += self.vocabulary.select(self.probabilities(torch.cat(batch)))
        return out

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        array = np.array(image.convert("RGB"))  # uint8 to the device, the float copy is made there
        return torch.from_numpy(array).to(self.device).permute(2, 0, 1).unsqueeze(0).float() / 255.0

    def __call__(self, images: list[Image.Image], user_prompt: str = "") -> list[str]:
        tags = self.tags(images)
        return tags if self.bare else [compose_prompt(t, user_prompt) for t in tags]


def load_ram_extractor(*, ram_path: str | os.PathLike | None = None, dape_path: str | os.PathLike | None = None,
                       use_dape: bool, tags_path: str | os.PathLike | None = None,
                       thresholds_path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                       dtype: str | torch.dtype | None = None, batch_size: int = 8, bare: bool = False,
                       local_files_only: bool = False) -> RAMPromptExtractor:
    """Find every file first, then build, load, merge the LoRA and move to the device.

    The architecture is read from the weights' shapes, so the published Swin-L files and the tiny
    random ones of the tests go through the same path.
    """
    files = resolve_ram_files(ram_path, dape_path, tags_path, thresholds_path, use_dape=use_dape,
                              local_files_only=local_files_only)
    ram_file, dape_file = files["ram_path"], files.get("dape_path")
    vocabulary = read_tag_vocabulary(files["tags_path"], files["thresholds_path"])
    ram_weights = read_state_dict(ram_file)
    dape_weights = read_state_dict(dape_file) if dape_file else None
    weights = f"{ram_file} with {dape_file}" if dape_file else str(ram_file)
    try:
        config = config_from_state_dict(ram_weights, dape_weights)
    except CheckpointError as err:
        raise CheckpointError(f"{weights}: {err}") from None
    if config.num_classes != len(vocabulary):
        raise CheckpointError(f"{ram_file} scores {config.num_classes} tags but {files['tags_path']} lists "
                              f"{len(vocabulary)}; pass the tag list and thresholds that belong to these weights")
    model = build_ram(config)
    try:
        load_published(model, ram_weights, dape_weights)
    except CheckpointError as err:
        raise CheckpointError(f"{weights}: {err}") from None
    # merge in float32 on the CPU before any cast, as the authors' eval() does
    model.merge_lora_()
    target = pick_device(device)
    model = model.to(device=target, dtype=pick_dtype(dtype, target))
    return RAMPromptExtractor(model, vocabulary, batch_size=batch_size, bare=bare)


def create_dape_extractor(*, ram_path: str | os.PathLike | None = None, dape_path: str | os.PathLike | None = None,
                          tags_path: str | os.PathLike | None = None,
                          thresholds_path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                          dtype: str | torch.dtype | None = None, batch_size: int = 8, bare: bool = False,
                          local_files_only: bool = False) -> RAMPromptExtractor:
    """``dape``: RAM weights + DAPE LoRA on top (OSEDiff inference). ``None`` paths use the defaults."""
    return load_ram_extractor(ram_path=ram_path, dape_path=dape_path, use_dape=True, tags_path=tags_path,
                              thresholds_path=thresholds_path, device=device, dtype=dtype, batch_size=batch_size,
                              bare=bare, local_files_only=local_files_only)


def create_plain_ram_extractor(*, ram_path: str | os.PathLike | None = None,
                               tags_path: str | os.PathLike | None = None,
                               thresholds_path: str | os.PathLike | None = None,
                               device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                               batch_size: int = 8, bare: bool = False,
                               local_files_only: bool = False) -> RAMPromptExtractor:
    """``ram``: plain RAM (what OSEDiff training tags HQ images with; ``bare=True`` for its format)."""
    return load_ram_extractor(ram_path=ram_path, use_dape=False, tags_path=tags_path,
                              thresholds_path=thresholds_path, device=device,
                              dtype=dtype, batch_size=batch_size, bare=bare, local_files_only=local_files_only)
