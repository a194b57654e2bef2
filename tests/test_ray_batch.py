"""``osediff upscale --engine ray`` on a local 2-CPU Ray instance with the tiny model.

Ray takes tens of seconds to start, so one instance serves the whole module and the tests are few.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import ray
from PIL import Image

from osediff.batch.ray_engine import FAULT_ENV, MANIFEST_NAME
from osediff.cli import main


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A 2-CPU Ray; workers inherit ``FAULT_ENV``, pointing at a file no test has written yet."""
    fault = tmp_path_factory.mktemp("fault") / "kill-once"
    os.environ[FAULT_ENV] = str(fault)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield fault
    ray.shutdown()
    del os.environ[FAULT_ENV]


@pytest.fixture
def upscale(local_ray, tiny_base_dir, tiny_pkl):
    def invoke(*args: str, engine: str = "ray") -> int:
        return main(["upscale", *args, "-s", "2", "--prompt-extractor", "text", "--prompt", "a photo",
                     "--base", str(tiny_base_dir), "--weights", str(tiny_pkl), "--device", "cpu",
                     "--engine", engine])

    return invoke


def make_inputs(folder, count: int, size=(16, 12)):
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(count):
        shape = (size[1], size[0] + 4 * (i % 2), 3)  # two sizes: groups of one size in each batch
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def manifest(out):
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def images_in(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


def test_outputs_are_pixel_identical_to_the_single_process_runner(upscale, tmp_path, single_thread):
    # the replica has one CPU, so torch runs it on one thread; the local run must too, since float
    # sums split over a different number of threads can round a pixel the other way
    src = make_inputs(tmp_path / "in", 5)
    assert upscale(str(src), "-o", str(tmp_path / "local"), "--save-prompts", engine="local") == 0
    # URIs as on a cluster (file:// here; s3:// and gs:// go through the same pyarrow filesystem calls)
    assert upscale(f"file://{src}", "-o", f"file://{tmp_path / 'ray'}", "--save-prompts") == 0
    names = images_in(src)
    assert images_in(tmp_path / "ray") == names
    for name in names:
        local, remote = (np.asarray(Image.open(tmp_path / where / name)) for where in ("local", "ray"))
        assert local.shape == remote.shape and np.array_equal(local, remote), name
        stem = name.removesuffix(".png")
        assert (tmp_path / "ray" / f"{stem}.txt").read_text() == "a photo\n"
    rows = manifest(tmp_path / "ray")
    assert sorted(r["input"] for r in rows) == [f"file://{src / name}" for name in names]
    assert {(r["status"], r["prompt"], r["error"]) for r in rows} == {("written", "a photo", "")}
    assert all(r["output"] == str(tmp_path / "ray" / os.path.basename(r["input"])) for r in rows)
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]


def test_bad_files_are_in_the_manifest_with_their_error_and_the_rest_written(upscale, tmp_path):
    src = make_inputs(tmp_path / "in", 2)
    (src / "notimage.png").write_text("this is not an image")
    (src / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(buffer, format="PNG")
    (src / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out = tmp_path / "out"
    assert upscale(str(src), "-o", str(out)) == 1
    assert images_in(out) == ["im0.png", "im1.png"]
    errors = {os.path.basename(r["input"]): r["error"] for r in manifest(out) if r["status"] == "failed"}
    assert set(errors) == {"notimage.png", "empty.png", "truncated.png"}
    assert "not an image" in errors["notimage.png"] and "0 bytes" in errors["empty.png"]
    assert errors["truncated.png"].startswith(f"{src / 'truncated.png'}: ")


def test_a_killed_worker_is_retried_and_every_output_is_written_once(upscale, local_ray, tmp_path):
    src = make_inputs(tmp_path / "in", 4)
    local_ray.write_text("armed")  # the first replica batch to see it kills its worker process
    out = tmp_path / "out"
    assert upscale(str(src), "-o", str(out)) == 0
    assert not local_ray.exists() and local_ray.with_name("kill-once.fired").exists()  # a worker did die
    rows = manifest(out)
    assert sorted(os.path.basename(r["input"]) for r in rows) == images_in(src)  # one row per input
    assert {r["status"] for r in rows} == {"written"}
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, *images_in(src)])  # no partial files
    for name in images_in(src):
        with Image.open(out / name) as img:
            img.load()
            assert img.size == (2 * Image.open(src / name).width, 24)


def test_a_second_run_processes_only_the_missing_images(upscale, tmp_path, capsys):
    src = make_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert upscale(str(src / "im0.png"), str(src / "im2.png"), "-o", str(out)) == 0  # a partial first run
    kept = {name: (out / name).stat().st_mtime_ns for name in ("im0.png", "im2.png")}
    capsys.readouterr()
    assert upscale(str(src), "-o", str(out)) == 0
    assert "1 written" in capsys.readouterr().out
    status = {os.path.basename(r["input"]): r["status"] for r in manifest(out)}
    assert status == {"im0.png": "skipped", "im1.png": "written", "im2.png": "skipped"}
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert images_in(out) == ["im0.png", "im1.png", "im2.png"]
