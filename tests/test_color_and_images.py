"""Colour alignment against independent numpy computations; robust image reading and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from osediff.color import adain_align, align_colors, wavelet_align
from osediff.images import ImageLoadError, collect_inputs, load_image, save_image_atomic
from osediff.tiling import gaussian_weights, tile_starts, tiled_apply


def test_adain_matches_numpy():
    rng = np.random.default_rng(0)
    target, source = rng.random((1, 3, 16, 12)), rng.random((1, 3, 16, 12)) * 0.5 + 0.2
    ours = adain_align(torch.tensor(target), torch.tensor(source)).numpy()
    for c in range(3):
        t, s = target[0, c], source[0, c]
        expected = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-5) * np.sqrt(s.var(ddof=1) + 1e-5) + s.mean()
        assert np.allclose(ours[0, c], expected, atol=1e-10)


def blur_numpy(x: np.ndarray, d: int) -> np.ndarray:
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    padded = np.pad(x, ((d, d), (d, d)), mode="edge")
    h, w = x.shape
    return sum(k[i, j] * padded[i * d : i * d + h, j * d : j * d + w] for i in range(3) for j in range(3))


def test_wavelet_matches_numpy_decomposition():
    rng = np.random.default_rng(1)
    target, source = rng.random((40, 40)), rng.random((40, 40))

    def low(x):
        for level in range(5):
            x = blur_numpy(x, 2**level)
        return x

    expected = target - low(target) + low(source)
    t = torch.tensor(target)[None, None].expand(1, 3, 40, 40)
    s = torch.tensor(source)[None, None].expand(1, 3, 40, 40)
    ours = wavelet_align(t, s)[0, 0].numpy()
    assert np.allclose(ours, expected, atol=1e-10)
    assert torch.allclose(wavelet_align(t, t), t, atol=1e-10)


def test_align_none_and_unknown():
    x = torch.rand(1, 3, 4, 4)
    assert align_colors(x, x * 0, "none") is x
    with pytest.raises(ValueError, match="align must be one of adain, wavelet, none"):
        align_colors(x, x, "lab")


def test_tiled_apply_of_a_pointwise_function_is_exact():
    z = torch.randn(2, 4, 37, 23)
    out = tiled_apply(lambda t: t * 3 - 1, z, tile=10, overlap=4, batch_size=3)
    assert torch.allclose(out, z * 3 - 1, atol=1e-5)
    assert tile_starts(37, 10, 4) == [0, 6, 12, 18, 24, 27]
    w = gaussian_weights(6, 5)
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"missing\.png: no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"zero\.jpg: file is empty"):
        load_image(tmp_path / "zero.jpg")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    img = Image.new("RGB", (4, 4))
    dst = save_image_atomic(img, tmp_path / "a.png")
    assert Image.open(dst).size == (4, 4)

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(img, tmp_path / "b.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_collect_inputs_mixes_files_folders_and_globs(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = collect_inputs([str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "a.jpg")])
    assert [p.name for p in found] == ["a.jpg", "b.png"]


@pytest.mark.parametrize("alpha_value", [255, 128])
def test_rgba_input_keeps_its_alpha_even_when_opaque(tmp_path, alpha_value):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (6, 4), (10, 20, 30, alpha_value)).save(path)
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB" and loaded.alpha is not None
    assert loaded.alpha.getextrema() == (alpha_value, alpha_value)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (6, 4), (10, 20, 30)).save(rgb)
    assert load_image(rgb).alpha is None
