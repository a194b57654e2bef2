"""HQ training images: folders and path lists mixed by repeat counts or weights, random crops, flips.

Every sample is a pure function of (seed, position): position p of the stream picks its source,
its file, its crop and its flip from a generator seeded with (seed, p). Resuming a run therefore
only needs the number of samples consumed, and each process of a multi-GPU run reads its own
positions. Unreadable files are skipped (with one warning each) by drawing again.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import OSEDiffError
from ..images import IMAGE_SUFFIXES, ImageLoadError, load_image
from .config import DataConfig, DataSource, PromptConfig

log = logging.getLogger(__name__)
MAX_DRAWS = 100


class TrainingDataError(OSEDiffError, ValueError):
    """Training images or captions that cannot be used; the message names the config key."""


def list_source(path: str) -> list[str]:
    """Image paths of a folder (recursive, sorted) or of a text file (one path per line, '#' comments)."""
    source = Path(path)
    if source.is_dir():
        return sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        return [str(source.parent / line) if not Path(line).is_absolute() else line
                for line in lines if line and not line.startswith("#")]
    raise TrainingDataError(f"data.sources: {path}: no such folder or file")


def source_probabilities(sources: list[DataSource], sizes: list[int]) -> np.ndarray:
    """Probability of drawing from each source: weight / sum of weights when any source has a weight
    (missing weights count 1), else repeat x size / sum (the authors' repeated file lists)."""
    if any(s.weight is not None for s in sources):
        counts = np.array([1.0 if s.weight is None else s.weight for s in sources], dtype=np.float64)
    else:
        counts = np.array([(s.repeat or 1) * n for s, n in zip(sources, sizes, strict=True)], dtype=np.float64)
    return counts / counts.sum()


class CaptionLookup:
    """Training prompts from sidecar text files or a JSON cache {image path: caption}."""

    def __init__(self, config: PromptConfig) -> None:
        self.ext = config.caption_ext
        self.cache: dict[str, str] | None = None
        if config.cache:
            if not Path(config.cache).is_file():
                raise TrainingDataError(f"prompts.cache: {config.cache}: no such file")
            try:
                self.cache = json.loads(Path(config.cache).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise TrainingDataError(f"prompts.cache: {config.cache}: not a readable JSON file ({err})") from None
            if not isinstance(self.cache, dict):
                raise TrainingDataError(f"prompts.cache: {config.cache}: expected a JSON object "
                                        "{image path: caption}")

    def __call__(self, image_path: str) -> str:
        if self.cache is not None:
            return self.cache.get(image_path, self.cache.get(Path(image_path).name, ""))
        sidecar = Path(image_path).with_suffix(self.ext)
        return sidecar.read_text().strip() if sidecar.is_file() else ""


class HQDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by stream position; item = {"hq": (3, S, S) in [0, 1], "caption", "path"}."""

    def __init__(self, config: DataConfig, seed: int, captions: CaptionLookup | None = None) -> None:
        if not config.sources:
            raise TrainingDataError("data.sources is empty: give at least one folder or list of HQ images")
        self.files = [list_source(s.path) for s in config.sources]
        empty = [s.path for s, files in zip(config.sources, self.files, strict=True) if not files]
        if empty:
            raise TrainingDataError(f"data.sources: no images in {', '.join(empty)}")
        self.probabilities = source_probabilities(config.sources, [len(files) for files in self.files])
        self.crop, self.hflip, self.seed, self.captions = config.crop_size, config.hflip, seed, captions
        self._bad: set[str] = set()

    def __len__(self) -> int:  # the stream is endless; this is only a nominal epoch
        return sum(len(files) for files in self.files)

    def __getitem__(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, int(position)])
        for _ in range(MAX_DRAWS):
            source = int(rng.choice(len(self.files), p=self.probabilities))
            path = self.files[source][int(rng.integers(len(self.files[source])))]
            crop_xy, flip = rng.random(2), bool(rng.random() < 0.5) and self.hflip
            if path in self._bad:
                continue
            try:
                image = load_image(path).rgb
            except (ImageLoadError, OSError, ValueError) as err:
                self._bad.add(path)
                warnings.warn(f"skipping unreadable training image {path}: {err}", stacklevel=2)
                continue
            hq = self._crop(image, crop_xy, flip)
            caption = self.captions(path) if self.captions else ""
            return {"hq": hq, "caption": caption, "path": path}
        raise RuntimeError(f"{MAX_DRAWS} draws in a row gave unreadable images; check data.sources")

    def _crop(self, image: Image.Image, crop_xy: np.ndarray, flip: bool) -> torch.Tensor:
        short = min(image.size)
        if short < self.crop:  # enlarge small images rather than fail, as a random crop would
            scale = self.crop / short
            image = image.resize((max(self.crop, round(image.width * scale)),
                                  max(self.crop, round(image.height * scale))), Image.BICUBIC)
        left = int(crop_xy[0] * (image.width - self.crop + 1))
        top = int(crop_xy[1] * (image.height - self.crop + 1))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def build_dataset(data: DataConfig, prompts: PromptConfig, seed: int) -> HQDataset:
    """The HQ stream with its captions; lists every source and reads the caption cache, so a run
    can build it before any model loads and fail on a missing folder in one line."""
    captions = CaptionLookup(prompts) if prompts.source == "captions" else None
    return HQDataset(data, seed, captions)


class StreamSampler(torch.utils.data.Sampler):
    """Positions for one process: micro-batch m of process r holds ((m * world + r) * B + j)_j."""

    def __init__(self, batch_size: int, start_micro_step: int = 0, rank: int = 0, world: int = 1) -> None:
        self.batch_size, self.start, self.rank, self.world = batch_size, start_micro_step, rank, world

    def __iter__(self) -> Iterator[int]:
        micro = self.start
        while True:
            first = (micro * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            micro += 1


def collate(items: list[dict]) -> dict:
    return {"hq": torch.stack([i["hq"] for i in items]), "caption": [i["caption"] for i in items],
            "path": [i["path"] for i in items]}


def make_loader(dataset: HQDataset, batch_size: int, num_workers: int, start_micro_step: int,
                rank: int, world: int) -> torch.utils.data.DataLoader:
    sampler = StreamSampler(batch_size, start_micro_step, rank, world)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                       num_workers=num_workers, persistent_workers=num_workers > 0,
                                       pin_memory=torch.cuda.is_available())


def load_validation_images(paths: list[str], size: int) -> torch.Tensor | None:
    """Centre crops (enlarged if needed) of the validation HQ images, (N, 3, size, size) in [0, 1]."""
    crops = []
    for path in paths:
        try:
            image = load_image(path).rgb
        except (ImageLoadError, OSError) as err:
            log.warning("skipping validation image %s: %s", path, err)
            continue
        scale = max(1.0, size / min(image.size))
        if scale > 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        crops.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    return torch.stack(crops) if crops else None
