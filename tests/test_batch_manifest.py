"""The Ray engine's manifest, without Ray: rewritten whole while records arrive, never half-written."""

from __future__ import annotations

import json

import pytest

from osediff.batch.ray_engine import Manifest
from osediff.batch.runner import FAILED, WRITTEN, ImageRecord


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def records(n: int) -> list[ImageRecord]:
    return [ImageRecord(f"in/{i}.png", f"out/{i}.png", WRITTEN if i % 3 else FAILED,
                        "" if i % 3 else f"in/{i}.png: not an image", prompt="ä photo", seconds=0.5 * i)
            for i in range(n)]


def test_each_update_after_the_interval_rewrites_every_row_so_far(tmp_path):
    path = tmp_path / "job" / "manifest.jsonl"
    manifest = Manifest(str(path), interval=0.0)
    done = []
    for record in records(5):
        done.append(record)
        manifest.update(done)
        assert rows(path) == [r.as_dict() for r in done]  # a killed driver would leave exactly these
    assert rows(path)[3]["prompt"] == "ä photo"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.jsonl"]  # no temporary files left


def test_updates_within_the_interval_wait_for_the_next_write(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("osediff.batch.ray_engine.time.monotonic", lambda: clock[0])
    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(str(path), interval=30.0)
    done = records(4)
    manifest.update(done[:2])
    assert not path.exists()
    clock[0] += 30.0
    manifest.update(done[:3])
    assert len(rows(path)) == 3
    clock[0] += 10.0
    manifest.update(done)
    assert len(rows(path)) == 3  # throttled: a large job does not rewrite its manifest per image
    manifest.write(done)  # the end of the run always writes
    assert rows(path) == [r.as_dict() for r in done]


@pytest.mark.parametrize("location", ["manifest.jsonl", "file://{tmp}/uri/manifest.jsonl"])
def test_relative_and_file_uri_locations(tmp_path, monkeypatch, location):
    monkeypatch.chdir(tmp_path)
    location = location.format(tmp=tmp_path)
    Manifest(location, interval=0.0).write(records(2))
    written = tmp_path / ("uri/manifest.jsonl" if location.startswith("file://") else "manifest.jsonl")
    assert [row["input"] for row in rows(written)] == ["in/0.png", "in/1.png"]
