"""The sample inputs the README's first command upscales, the RealSR images tests/data ships, and what a
missing ../shared does (noted on a clone, a failure under CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import EXAMPLES, REALSR_SHIPPED, REALSR_SHIPPED_STEMS, REPO_ROOT, missing_shared_data
from osediff.demo.examples import ExampleLibrary, default_examples_dir
from osediff.images import collect_inputs


def test_examples_ship_a_few_small_images_the_cli_and_demo_find():
    folder = REPO_ROOT / "examples"
    images = collect_inputs([str(folder)])
    assert len(images) >= 3 and sum(p.stat().st_size for p in images) < 500_000
    for path in images:
        with Image.open(path) as image:
            assert image.size == (128, 128)
    # anything else in the folder (its README) is not taken for an input
    assert {p.name for p in folder.iterdir()} - {p.name for p in images} <= {"README.md"}
    assert default_examples_dir() == folder and ExampleLibrary.from_folder(folder).names == [p.name for p in images]


def test_missing_shared_data_fails_under_ci_and_is_noted_elsewhere(monkeypatch):
    monkeypatch.setattr(conftest, "_shared_data_missing", {})  # not this run's summary
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        missing_shared_data("RealSR benchmark data", Path("/nowhere"), "tests/test_x.py::test_y")
    assert conftest._shared_data_missing == {}
    monkeypatch.delenv("CI")
    missing_shared_data("RealSR benchmark data", Path("/nowhere"), "tests/test_x.py::test_y")  # no skip: it goes on
    message = "RealSR benchmark data not found at /nowhere (the shared data beside the repository)"
    assert conftest._shared_data_missing == {message: ["tests/test_x.py::test_y"]}


def test_tests_data_is_small_and_its_realsr_images_are_the_benchmark_s_own(realsr_full):
    """Every file of tests/data is described in its README; the RealSR files are lossless copies: with the
    whole set beside the repository, the same pixels as its PNGs (examples/ too) and the same metric log."""
    data = REPO_ROOT / "tests" / "data"
    files = sorted(p for p in data.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) < 1_000_000
    readme = (data / "README.md").read_text()
    assert all(p.name in readme for p in files if p.name != "README.md")
    log = "osediff_published_metrics.log"
    shipped = {REALSR_SHIPPED / part / f"{stem}.webp": f"{part}/{stem}.png"
               for part in ("hr", "osediff_published") for stem in REALSR_SHIPPED_STEMS}
    assert {p for p in files if p.is_relative_to(REALSR_SHIPPED)} == {*shipped, REALSR_SHIPPED / log}
    shipped |= {path: f"lr/{path.name}" for path in EXAMPLES.glob("*.png")}
    for path in shipped:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == ((128, 128) if path.parent == EXAMPLES else (512, 512))
    if realsr_full is None:
        return
    for path, original in shipped.items():
        with Image.open(path) as ours, Image.open(realsr_full / original) as theirs:
            assert np.array_equal(np.asarray(ours), np.asarray(theirs)), path
    assert (REALSR_SHIPPED / log).read_bytes() == (realsr_full / log).read_bytes()
