"""The Ray engine's manifest, without Ray: written at the first record and then rewritten whole as
records arrive, never half-written, below the rows of earlier runs; and what a killed run's atomic
writes left beside the outputs is cleaned up by the next run."""

from __future__ import annotations

import json
import os
import time

import pytest
from PIL import Image

from osediff.batch import BatchConfig
from osediff.batch.ray_engine import MANIFEST_NAME, Manifest, RayOptions, run_ray
from osediff.batch.runner import FAILED, WRITTEN, ImageRecord
from osediff.params import UpscaleParams


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def records(n: int) -> list[ImageRecord]:
    return [ImageRecord(f"in/{i}.png", f"out/{i}.png", WRITTEN if i % 3 else FAILED,
                        "" if i % 3 else f"in/{i}.png: not an image", prompt="ä photo", seconds=0.5 * i)
            for i in range(n)]


def as_rows(run: str, done: list[ImageRecord]) -> list[dict]:
    return [{"run": run, **record.as_dict()} for record in done]


def test_each_update_after_the_interval_rewrites_every_row_so_far(tmp_path):
    path = tmp_path / "job" / "manifest.jsonl"
    manifest = Manifest(str(path), interval=0.0, run="r1")
    done = []
    for record in records(5):
        done.append(record)
        manifest.update(done)
        assert rows(path) == as_rows("r1", done)  # a killed driver would leave exactly these
    assert rows(path)[3]["prompt"] == "ä photo"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.jsonl"]  # no temporary files left


def test_the_first_record_is_written_at_once_then_updates_wait_for_the_interval(tmp_path, monkeypatch):
    """A driver killed before its first 30 s once left no manifest at all."""
    clock = [100.0]
    monkeypatch.setattr("osediff.batch.manifest.time.monotonic", lambda: clock[0])
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(str(path), interval=30.0)
    done = records(4)
    manifest.update(done[:1])
    assert path.exists() and len(rows(path)) == 1
    clock[0] += 10.0
    manifest.update(done[:2])
    assert len(rows(path)) == 1  # throttled: a large job does not rewrite its manifest per image
    clock[0] += 20.0
    manifest.update(done[:3])
    assert len(rows(path)) == 3
    manifest.write(done)  # the end of the run always writes
    assert rows(path) == as_rows(manifest.run, done)


def test_each_run_keeps_the_rows_of_the_runs_before_it(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"input": "in/old.png", "status": "written"}', encoding="utf-8")  # an older format, no newline
    first = Manifest(str(path), interval=0.0)
    first.write(records(2))
    assert rows(path)[0] == {"input": "in/old.png", "status": "written"}
    second = Manifest(str(path), interval=0.0)
    assert first.run != second.run and first.run[:4].isdigit()  # its UTC start time, then a random part
    second.update(records(1))
    second.write(records(3))
    assert rows(path) == [{"input": "in/old.png", "status": "written"}, *as_rows(first.run, records(2)),
                          *as_rows(second.run, records(3))]


@pytest.mark.parametrize("location", ["manifest.jsonl", "file://{tmp}/uri/manifest.jsonl"])
def test_relative_and_file_uri_locations(tmp_path, monkeypatch, location):
    monkeypatch.chdir(tmp_path)
    location = location.format(tmp=tmp_path)
    Manifest(location, interval=0.0).write(records(2))
    written = tmp_path / ("uri/manifest.jsonl" if location.startswith("file://") else "manifest.jsonl")
    assert [row["input"] for row in rows(written)] == ["in/0.png", "in/1.png"]


def test_a_run_removes_the_partial_files_a_killed_run_left_and_nothing_else(tmp_path, capsys):
    """A driver killed mid-write left ``.<stem>.<random><suffix>`` beside the outputs for good. The
    next run deletes those of its own outputs (images, prompts, manifest) that are older than its
    start; every other file stays. (Every output exists here, so the run starts no Ray.)"""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for stem in ("Canon_024_LR4_128x96", "b"):
        Image.new("RGB", (4, 4)).save(src / f"{stem}.png")
        Image.new("RGB", (8, 8)).save(out / f"{stem}.png")
    stale = [".Canon_024_LR4_128x96.0xcgxehq.png", ".b.k2j4x_9q.png", ".b.abcdefgh.txt", ".manifest.zz_00aa1.jsonl"]
    kept = [".other.abcdefgh.png",  # not an output of this job
            ".b.png.swp", "b.abcdefgh.png", ".b.ABCDEFGH.png", ".b.abcdefg.png",  # not the atomic-write pattern
            ".b.abcdefgh.webp",  # another format's output
            "notes.txt"]
    for name in stale + kept:
        (out / name).write_bytes(b"partial")
        os.utime(out / name, (time.time() - 3600,) * 2)
    young = ".Canon_024_LR4_128x96.youngerr.png"  # written after the run started: another writer's
    (out / young).write_bytes(b"partial")
    os.utime(out / young, (time.time() + 3600,) * 2)
    config = BatchConfig([str(src)], out, params=UpscaleParams(upscale=2, prompt_extractor="text"),
                         save_prompts=True, skip_existing=True)
    summary = run_ray(config, RayOptions(progress=False))
    assert (summary.skipped, summary.written, summary.failed) == (2, 0, 0)
    assert sorted(p.name for p in out.iterdir()) == sorted([*kept, young, "Canon_024_LR4_128x96.png", "b.png",
                                                            MANIFEST_NAME])
    assert "removed 4 partial file(s) an interrupted run left" in capsys.readouterr().err
