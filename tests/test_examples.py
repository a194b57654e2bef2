"""The sample inputs the README's first command upscales, and data-dependent tests failing under CI."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO_ROOT, missing_shared_data
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


def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        missing_shared_data("RealSR benchmark data", Path("/nowhere"))
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="RealSR benchmark data not found"):
        missing_shared_data("RealSR benchmark data", Path("/nowhere"))
