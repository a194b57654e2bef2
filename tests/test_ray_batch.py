"""``osediff upscale --engine ray`` on a local 2-CPU Ray instance with the tiny model.

Ray takes tens of seconds to start, so one instance serves the whole module and the tests are few;
each job starts its own model replica (another ~15 s), so two tests read one shared job. One job
reads and writes an S3-compatible server (moto's, on loopback).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import numpy as np
import pytest
import ray
from PIL import Image
from ray import cloudpickle

from osediff.batch.ray_engine import MANIFEST_NAME
from osediff.cli import main
from test_storage_s3 import BUCKET, KEY_ENV, SECRET_ENV, moto_s3, png

FAULT_ENV = "OSEDIFF_TEST_RAY_FAULT_FILE"


def arm_fault() -> None:
    """Runs in every Ray worker as it starts: while the file ``FAULT_ENV`` names exists, the first
    replica batch to rename it away kills its worker process (the fault comes from the test; the
    engine has no hook for it)."""
    import os

    from osediff.batch import ray_engine

    call = ray_engine._Replica.__call__

    def call_or_die(self, batch):
        fault = os.environ.get("OSEDIFF_TEST_RAY_FAULT_FILE", "")
        try:
            os.rename(fault, f"{fault}.fired")  # atomic: exactly one batch fires, once
        except OSError:
            return call(self, batch)
        os._exit(1)

    ray_engine._Replica.__call__ = call_or_die


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A 2-CPU Ray whose workers arm :func:`arm_fault` on a file no test has written yet."""
    fault = tmp_path_factory.mktemp("fault") / "kill-once"
    os.environ[FAULT_ENV] = str(fault)  # the workers inherit it
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": arm_fault})
    yield fault
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
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


def write_bad_inputs(folder):
    folder.mkdir()
    (folder / "notimage.png").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return folder


@pytest.fixture(scope="module")
def mixed_job(local_ray, tiny_base_dir, tiny_pkl, tmp_path_factory):
    """One Ray job (its replica takes ~15 s to load): good images read and written through file://
    URIs as on a cluster, and broken files named by plain paths, which take the local-read path."""
    root = tmp_path_factory.mktemp("mixed")
    good, bad, out = make_inputs(root / "good", 5), write_bad_inputs(root / "bad"), root / "ray"
    status = main(["upscale", f"file://{good}", str(bad), "-o", f"file://{out}", "--save-prompts", "-s", "2",
                   "--prompt-extractor", "text", "--prompt", "a photo", "--base", str(tiny_base_dir), "--weights",
                   str(tiny_pkl), "--device", "cpu", "--engine", "ray"])
    return status, good, bad, out


def test_outputs_are_pixel_identical_to_the_single_process_runner(mixed_job, upscale, tmp_path, single_thread):
    # the replica has one CPU, so torch runs it on one thread; the local run must too, since float
    # sums split over a different number of threads can round a pixel the other way
    _, src, _, ray_out = mixed_job
    assert upscale(str(src), "-o", str(tmp_path / "local"), "--save-prompts", engine="local") == 0
    names = images_in(src)
    assert images_in(ray_out) == names
    for name in names:
        local, remote = (np.asarray(Image.open(where / name)) for where in (tmp_path / "local", ray_out))
        assert local.shape == remote.shape and np.array_equal(local, remote), name
        stem = name.removesuffix(".png")
        assert (ray_out / f"{stem}.txt").read_text() == "a photo\n"
    rows = [r for r in manifest(ray_out) if r["input"].startswith("file://")]
    assert sorted(r["input"] for r in rows) == [f"file://{src / name}" for name in names]
    assert {(r["status"], r["prompt"], r["error"]) for r in rows} == {("written", "a photo", "")}
    assert all(r["output"] == str(ray_out / os.path.basename(r["input"])) for r in rows)
    assert not [p for p in ray_out.iterdir() if p.name.startswith(".")]


def test_every_front_end_gives_the_ray_engines_bytes(mixed_job, tiny_base_dir, tiny_pkl, tmp_path, single_thread):
    """One image and one set of options through the Ray engine, the batch runner, the service's
    engine, the demo's service, the Python API and an Upscaler: the same PNG from each."""
    from test_one_step import local_front_ends

    _, src, _, ray_out = mixed_job
    source = src / "im1.png"
    outputs = local_front_ends(source, tmp_path, tiny_base_dir, tiny_pkl, upscale=2, align="adain",
                               prompt="a photo")
    ray_png = (ray_out / "im1.png").read_bytes()
    assert {name: data == ray_png for name, data in outputs.items()} == dict.fromkeys(outputs, True)


def test_bad_files_are_in_the_manifest_with_their_error_and_the_rest_written(mixed_job):
    status, good, bad, out = mixed_job
    assert status == 1
    assert images_in(out) == images_in(good)
    rows = manifest(out)
    assert len(rows) == 8  # one per input, good or bad
    errors = {os.path.basename(r["input"]): r["error"] for r in rows if r["status"] == "failed"}
    assert set(errors) == {"notimage.png", "empty.png", "truncated.png"}
    assert "not an image" in errors["notimage.png"] and "0 bytes" in errors["empty.png"]
    assert errors["truncated.png"].startswith(f"{bad / 'truncated.png'}: ")


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
    # a partial first run; the engines name outputs alike (see the pixel-identity test), so the local
    # one stands in for an interrupted Ray job without starting a second model replica: killed while
    # writing im1.png, it left that write's temporary and the manifest rows of its first results
    assert upscale(str(src / "im0.png"), str(src / "im2.png"), "-o", str(out), engine="local") == 0
    earlier = '{"run": "earlier", "input": "im0.png", "status": "written"}\n'
    (out / MANIFEST_NAME).write_text(earlier)
    (out / ".im1.0xcgxehq.png").write_bytes(b"\x89PNG half an image")
    os.utime(out / ".im1.0xcgxehq.png", (time.time() - 60,) * 2)
    kept = {name: (out / name).stat().st_mtime_ns for name in ("im0.png", "im2.png")}
    capsys.readouterr()
    assert upscale(str(src), "-o", str(out), "--skip-existing") == 0  # the same rule as the local runner
    assert "1 written" in capsys.readouterr().out
    assert (out / MANIFEST_NAME).read_text().startswith(earlier)  # the earlier run's rows stay
    rows = manifest(out)[1:]
    assert len({r["run"] for r in rows}) == 1 and rows[0]["run"] != "earlier"
    status = {os.path.basename(r["input"]): r["status"] for r in rows}
    assert status == {"im0.png": "skipped", "im1.png": "written", "im2.png": "skipped"}
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert sorted(p.name for p in out.iterdir()) == ["im0.png", "im1.png", "im2.png", MANIFEST_NAME]


def test_s3_inputs_and_outputs_through_storage_options(upscale, monkeypatch, capsys):
    """One job between two prefixes of an S3-compatible server, reached through --storage-option
    only: the endpoint and the credentials (read from this shell's environment, set after the
    workers started, so they reach them with the job). An object that is not an image and one whose
    bytes cannot be read (archived) fail their own rows; the rest are written and the manifest with them."""
    with moto_s3() as s3:
        for i in range(3):
            s3.put(f"lr/im{i}.png", png((12 + 4 * (i % 2), 8), seed=i))
        s3.put("lr/broken.png", b"not an image")
        s3.put("lr/cold.png", png(), StorageClass="GLACIER")  # listed, but GetObject is refused
        monkeypatch.setenv(KEY_ENV, "test-key")
        monkeypatch.setenv(SECRET_ENV, "test-secret")
        options = [f"endpoint_override={s3.endpoint}", "request_timeout=10", f"access_key_env={KEY_ENV}",
                   f"secret_key_env={SECRET_ENV}"]
        status = upscale(f"s3://{BUCKET}/lr/", "-o", f"s3://{BUCKET}/sr/", "--save-prompts",
                         *[arg for option in options for arg in ("--storage-option", option)])
        assert status == 1, capsys.readouterr().err
        objects = [key for key in s3.keys("sr/") if not key.endswith("/")]  # pyarrow marks folders with "sr/"
        assert objects == [f"sr/{name}" for name in ("im0.png", "im0.txt", "im1.png", "im1.txt", "im2.png",
                                                            "im2.txt", MANIFEST_NAME)]
        for i in range(3):
            with Image.open(io.BytesIO(s3.get(f"sr/im{i}.png"))) as img:
                assert img.size == (2 * (12 + 4 * (i % 2)), 16)
        rows = {r["input"]: r for r in map(json.loads, s3.get(f"sr/{MANIFEST_NAME}").decode().splitlines())}
    assert set(rows) == {f"s3://{BUCKET}/lr/{name}.png" for name in ("im0", "im1", "im2", "broken", "cold")}
    assert {rows[f"s3://{BUCKET}/lr/im{i}.png"]["output"] for i in range(3)} == {
        f"s3://{BUCKET}/sr/im{i}.png" for i in range(3)}
    assert {r["status"] for name, r in rows.items() if "/im" in name} == {"written"}
    assert "not an image" in rows[f"s3://{BUCKET}/lr/broken.png"]["error"]
    assert rows[f"s3://{BUCKET}/lr/cold.png"]["error"].startswith(f"s3://{BUCKET}/lr/cold.png: cannot read (")
    err = capsys.readouterr().err
    assert "test-secret" not in err and "test-key" not in err


def test_video_segments_go_over_two_replicas_and_a_killed_ones_segment_is_redone(upscale, local_ray, tmp_path,
                                                                                  monkeypatch):
    from osediff.batch import ray_cluster
    from test_video import audio_packets, frame_pts, make_clip

    pools = []
    real = ray_cluster.replica_resources
    monkeypatch.setattr(ray_cluster, "plan_replicas", lambda nodes, cpus: (2, {"num_cpus": 0.5}))
    monkeypatch.setattr("osediff.batch.ray_engine.replica_resources",
                        lambda *args: pools.append(real(*args)) or pools[-1])
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "long.mp4", [i * 512 for i in range(24)], size=(16, 12), audio_seconds=1.0)
    make_clip(src / "short.mp4", [i * 512 for i in range(12)], size=(16, 12))
    Image.new("RGB", (16, 12), "blue").save(src / "still.png")
    local_ray.write_text("armed")  # the first replica batch to see it kills its worker process
    out = tmp_path / "out"
    assert upscale(str(src), "-o", str(out), "--segment-seconds", "0.25") == 0
    assert pools[0]["compute"].min_size == 2 and pools[0]["num_cpus"] == 0.5
    assert not local_ray.exists() and local_ray.with_name("kill-once.fired").exists()  # a worker did die
    rows = {os.path.basename(r["input"]): r for r in manifest(out)}
    assert {name: (r["status"], r.get("frames"), r.get("segments")) for name, r in rows.items()} == {
        "long.mp4": ("written", 24, 4), "short.mp4": ("written", 12, 2), "still.png": ("written", None, None)}
    assert frame_pts(out / "long.mp4") == [i * 512 for i in range(24)]
    assert frame_pts(out / "short.mp4") == [i * 512 for i in range(12)]
    assert audio_packets(out / "long.mp4") == audio_packets(src / "long.mp4")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, "long.mp4", "short.mp4", "still.png"])


def test_the_ray_replicas_run_an_openvino_export_as_the_local_runner_does(upscale, tiny_base_dir, tiny_pkl, tmp_path):
    pytest.importorskip("openvino")
    exported = tmp_path / "ov"
    assert main(["export", "-o", str(exported), "--format", "openvino", "--base", str(tiny_base_dir),
                 "--weights", str(tiny_pkl), "--offline"]) == 0
    src = make_inputs(tmp_path / "in", 3)
    outputs = {}
    for engine in ("ray", "local"):
        outputs[engine] = tmp_path / engine
        assert main(["upscale", str(src), "-o", str(outputs[engine]), "-s", "2", "--prompt-extractor", "text",
                     "--prompt", "a photo", "--backend", "openvino", "--export-dir", str(exported),
                     "--engine", engine]) == 0
    assert images_in(outputs["ray"]) == images_in(src)
    for name in images_in(src):
        ray_image, local_image = (np.asarray(Image.open(outputs[e] / name), np.int16) for e in ("ray", "local"))
        assert ray_image.shape == local_image.shape and np.abs(ray_image - local_image).max() <= 1, name
