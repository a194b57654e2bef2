"""Side-by-side comparison figures: one row per image, columns bicubic | each method | HQ.

Every panel shows the whole image (downscaled to the panel width) with a box marking a region,
and under it that region enlarged with nearest-neighbour, so pixels stay visible. Images are
paired across folders by file stem; the region is the same in every column of a row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import OSEDiffError
from .pairing import EvalInputError, images_by_stem

Box = tuple[int, int, int, int]  # x, y, width, height in reference (HQ / SR) pixels
GAP = 8
TITLE_HEIGHT = 30
BOX_COLOUR = (230, 20, 20)
BOX_LINE = 2
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)


class CompareError(OSEDiffError, ValueError):
    """Inputs that cannot make a figure; the message says which folder, image or argument and why."""


@dataclass
class CompareRow:
    name: str
    lq: Path
    methods: list[Path]
    gt: Path | None = None


def index_folder(folder: str | os.PathLike, role: str) -> dict[str, Path]:
    """Images in ``folder`` by stem, as evaluation pairs them (:func:`.pairing.images_by_stem`)."""
    try:
        return images_by_stem(folder, role)
    except EvalInputError as err:
        raise CompareError(err.problem, argument=err.argument) from None


def pair_images(lq_dir: str | os.PathLike, method_dirs: Sequence[str | os.PathLike],
                gt_dir: str | os.PathLike | None = None, select: Sequence[str] | None = None,
                limit: int | None = None) -> list[CompareRow]:
    """Rows for the LQ images (all, sorted, or ``select`` in that order), each found in every other folder."""
    lq = index_folder(lq_dir, "LQ")
    if select:
        stems = [Path(s).stem for s in select]
        unknown = [s for s in stems if s not in lq]
        if unknown:
            raise CompareError(f"{lq_dir}: no image named {', '.join(unknown)}")
    else:
        stems = sorted(lq)
    stems = stems[:limit] if limit else stems
    others = [index_folder(d, "method") for d in method_dirs]
    gt = index_folder(gt_dir, "HQ") if gt_dir is not None else None
    for folder, index in [*zip(method_dirs, others, strict=True), *([(gt_dir, gt)] if gt is not None else [])]:
        missing = [s for s in stems if s not in index]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CompareError(f"{folder}: {len(missing)} of {len(stems)} images have no match by file name "
                               f"(missing: {shown})")
    return [CompareRow(s, lq[s], [index[s] for index in others], gt[s] if gt is not None else None) for s in stems]


def parse_crop(spec: str) -> Box | None:
    """``"x,y,w,h"`` -> a box; ``"auto"`` -> None (chosen per image)."""
    if spec.strip().lower() == "auto":
        return None
    try:
        x, y, w, h = (int(v) for v in spec.split(","))
    except ValueError:
        raise CompareError(f"must be 'auto' or x,y,w,h in integers, got {spec!r}", argument="crop") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise CompareError(f"{spec!r}: needs x, y >= 0 and w, h > 0", argument="crop")
    return x, y, w, h


def auto_crop(image: Image.Image, side: int) -> Box:
    """The ``side`` x ``side`` window with the most gradient energy: where textures and edges are."""
    side = max(4, min(side, image.width, image.height))
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    energy = np.zeros_like(gray)
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    # integral image: every window's sum in O(1)
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x), int(y), side, side


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def render_panel(image: Image.Image, box: Box, panel_width: int, zoom: float) -> Image.Image:
    """Full view with ``box`` outlined, above the boxed region at ``zoom`` x its pixels (fit to the width)."""
    x, y, w, h = box
    scale = panel_width / image.width
    full = image.resize((panel_width, max(1, round(image.height * scale))), Image.LANCZOS)
    draw = ImageDraw.Draw(full)
    draw.rectangle([round(x * scale), round(y * scale), round((x + w) * scale) - 1, round((y + h) * scale) - 1],
                   outline=BOX_COLOUR, width=BOX_LINE)
    crop_scale = min(zoom, panel_width / w)
    size = (max(1, round(w * crop_scale)), max(1, round(h * crop_scale)))
    # nearest keeps the real pixels visible when enlarging; shrinking a too-wide crop needs a filter
    crop = image.crop((x, y, x + w, y + h)).resize(size, Image.NEAREST if crop_scale >= 1 else Image.LANCZOS)
    ImageDraw.Draw(crop).rectangle([0, 0, size[0] - 1, size[1] - 1], outline=BOX_COLOUR, width=BOX_LINE)
    panel = Image.new("RGB", (panel_width, full.height + GAP + crop.height), BACKGROUND)
    panel.paste(full, (0, 0))
    panel.paste(crop, ((panel_width - crop.width) // 2, full.height + GAP))
    return panel


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: cannot read image ({err})") from None


def row_images(row: CompareRow) -> list[Image.Image]:
    """Bicubic, each method, HQ: all at the reference size (HQ's, else the first method's)."""
    methods = [_open_rgb(p) for p in row.methods]
    gt = _open_rgb(row.gt) if row.gt is not None else None
    ref = gt if gt is not None else methods[0]
    out = [_open_rgb(row.lq).resize(ref.size, Image.BICUBIC)]
    for path, img in zip([*row.methods, row.gt], [*methods, gt], strict=True):
        if img is None:
            continue
        if img.size != ref.size:
            # a few pixels of difference is a rounding convention; a different shape is a wrong pairing
            if abs(img.width / img.height - ref.width / ref.height) > 0.02 * ref.width / ref.height:
                raise CompareError(f"{path}: {img.width}x{img.height} does not match {ref.width}x{ref.height} "
                                   f"({row.name}); are these the same image?")
            img = img.resize(ref.size, Image.BICUBIC)
        out.append(img)
    return out


def make_grid(rows: Sequence[CompareRow], titles: Sequence[str], crop: Box | None = None, zoom: float = 2.0,
              panel_width: int = 256, row_labels: bool = True) -> Image.Image:
    """The figure: a title line, then one row of panels per :class:`CompareRow` (name on the left)."""
    if zoom <= 0:
        raise CompareError(f"must be positive, got {zoom}", argument="zoom")
    font = _font(16)
    label_width = 0
    if row_labels:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_width = max(int(probe.textlength(r.name, font=font)) for r in rows) + GAP
    panels: list[list[Image.Image]] = []
    for row in rows:
        images = row_images(row)
        if len(images) != len(titles):
            raise CompareError(f"{len(titles)} column titles for {len(images)} columns")
        ref = images[-1]
        box = crop if crop is not None else auto_crop(ref, max(4, round(panel_width / zoom)))
        if box[0] + box[2] > ref.width or box[1] + box[3] > ref.height:
            raise CompareError(f"{box} lies outside {row.name} ({ref.width}x{ref.height})", argument="crop")
        panels.append([render_panel(img, box, panel_width, zoom) for img in images])
    width = label_width + GAP + len(titles) * (panel_width + GAP)
    height = TITLE_HEIGHT + GAP + sum(r[0].height + GAP for r in panels)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(titles):
        centre = label_width + GAP + j * (panel_width + GAP) + panel_width // 2
        draw.text((centre, TITLE_HEIGHT // 2 + GAP // 2), title, fill=TEXT_COLOUR, font=font, anchor="mm")
    y = TITLE_HEIGHT + GAP
    for row, row_panels in zip(rows, panels, strict=True):
        if row_labels:
            draw.text((GAP // 2, y + row_panels[0].height // 2), row.name, fill=TEXT_COLOUR, font=font, anchor="lm")
        for j, panel in enumerate(row_panels):
            grid.paste(panel, (label_width + GAP + j * (panel_width + GAP), y))
        y += row_panels[0].height + GAP
    return grid


def default_titles(method_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None, has_gt: bool) -> list[str]:
    if names is not None and len(names) != len(method_dirs):
        raise CompareError(f"gives {len(names)} names for {len(method_dirs)} method folders", argument="names")
    labels = list(names) if names is not None else [Path(d).resolve().name for d in method_dirs]
    return ["Bicubic", *labels, *(["HQ"] if has_gt else [])]


def compare_folders(lq_dir: str | os.PathLike, method_dirs: Sequence[str | os.PathLike],
                    gt_dir: str | os.PathLike | None = None, *, names: Sequence[str] | None = None,
                    crop: str | Box | None = None, zoom: float = 2.0, limit: int | None = None,
                    select: Sequence[str] | None = None, panel_width: int = 256,
                    row_labels: bool = True) -> Image.Image:
    """Pair the folders and draw the figure; ``crop`` is a box, ``"x,y,w,h"``, or ``"auto"``/None."""
    if not method_dirs:
        raise CompareError("give at least one folder of super-resolved images")
    titles = default_titles(method_dirs, names, gt_dir is not None)
    rows = pair_images(lq_dir, method_dirs, gt_dir, select=select, limit=limit)
    box = parse_crop(crop) if isinstance(crop, str) else crop
    return make_grid(rows, titles, box, zoom=zoom, panel_width=panel_width, row_labels=row_labels)
