"""Batched super-resolution equals one image at a time; writing files leaves the process umask alone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osediff.images import list_images, save_image_atomic
from osediff.pipeline import OSEDiffPipeline, TileConfig


def noisy(seed: int, size=(20, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("tiled", [False, True])
def test_run_batch_equals_run_per_image(fresh_components, tiny_weights, single_thread, tiled):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    tiles = TileConfig(latent_tile=6, latent_overlap=2, tiles_per_pass=3) if tiled else TileConfig(enabled=False)
    images, prompts = [noisy(i) for i in range(3)], ["a cat", "", "a cat"]
    alphas = [None, Image.new("L", (20, 16), 7), None]
    batched = pipe.run_batch(images, 2.0, prompts, alphas=alphas, tiles=tiles, align="wavelet")
    for image, prompt, alpha, result in zip(images, prompts, alphas, batched, strict=True):
        single = pipe.run(image, 2.0, prompt, alpha=alpha, tiles=tiles, align="wavelet")
        assert result.prompt == single.prompt == prompt
        assert result.image.mode == single.image.mode and result.image.size == (40, 32)
        diff = np.abs(np.asarray(result.image, np.int16) - np.asarray(single.image, np.int16))
        assert diff.max() <= 1  # batched convolutions may round differently in the last bit


def test_run_batch_groups_mixed_sizes_and_refuses_mismatched_lists(fresh_components):
    pipe = OSEDiffPipeline(fresh_components)
    calls = []
    fresh_components.unet.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    results = pipe.run_batch([noisy(0), noisy(1, (24, 16)), noisy(2)], 2.0)
    assert [r.image.size for r in results] == [(40, 32), (48, 32), (40, 32)]
    assert sorted(calls) == [(1, 4, 4, 6), (2, 4, 4, 5)] and [r.batch_size for r in results] == [2, 1, 2]
    with pytest.raises(ValueError, match="differ in number"):
        pipe.run_batch([noisy(0)], 2.0, ["a", "b"])
    assert pipe.run_batch([], 2.0) == []


def test_atomic_writes_never_touch_the_umask(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    image = Image.new("RGB", (4, 4))
    threads = [threading.Thread(target=save_image_atomic, args=(image, tmp_path / f"{i}.png")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == []
    assert len(list_images(tmp_path)) == 8
    mode = (tmp_path / "0.png").stat().st_mode & 0o777
    umask = int(Path("/proc/self/status").read_text().split("Umask:")[1].split()[0], 8)
    assert mode == 0o666 & ~umask


def test_listing_skips_the_hidden_files_of_unfinished_atomic_writes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / ".b.k3j4.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png"]


def test_load_image_reads_bytes_and_refuses_a_huge_header_before_decoding():
    import io

    from osediff.images import ImageLoadError, load_image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(buffer, format="PNG")
    loaded = load_image(buffer.getvalue(), max_pixels=None)
    assert loaded.rgb.size == (300, 200) and loaded.path is None
    with pytest.raises(ImageLoadError, match="<upload>: 300x200 exceeds"):
        load_image(buffer.getvalue(), max_pixels=1000)
    with pytest.raises(ImageLoadError, match=r"photo\.png: not an image"):
        load_image(b"not an image", name="photo.png")
