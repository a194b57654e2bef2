"""The service's model side without Ray: one run_batch per (size, factor, alignment) group."""

from __future__ import annotations

import pytest

from osediff.limits import SERVE_LIMITS
from osediff.serve.engine import Engine, Job, JobResult, ServeConfig, encode_image
from osediff.serve.limits import open_checked, parse_params
from test_serve_limits import png_bytes

LIMITS = SERVE_LIMITS


@pytest.fixture(scope="module")
def engine(tiny_base_dir, tiny_pkl, single_thread):
    return Engine(ServeConfig(base=str(tiny_base_dir), weights=str(tiny_pkl), device="cpu", threads=1))


def job(width: int, height: int, mode: str = "RGB", seed: int = 0, **values: str) -> Job:
    params = parse_params(values, ("text", "none"), LIMITS)
    return Job(open_checked(png_bytes(width, height, mode, seed), params, LIMITS), params)


def test_a_batch_runs_one_model_call_per_size_factor_and_alignment(engine, monkeypatch):
    calls = []
    run_batch = engine.pipe.run_batch

    def spy(images, upscale, prompts, **kwargs):
        calls.append((len(images), images[0].size, upscale, kwargs["align"], list(prompts)))
        return run_batch(images, upscale, prompts, **kwargs)

    monkeypatch.setattr(engine.pipe, "run_batch", spy)
    jobs = [job(16, 12, upscale="2", prompt="a"), job(20, 10, upscale="2"), job(16, 12, upscale="2", prompt="b"),
            job(16, 12, upscale="2", align="wavelet"), job(16, 12, "RGBA", upscale="2", prompt="c"),
            job(16, 12, upscale="3"), job(16, 12, upscale="2", prompt="d", prompt_extractor="none")]
    results = engine.run(jobs)
    assert sorted(calls) == sorted([
        (4, (16, 12), 2.0, "adain", ["a", "b", "c", ""]),
        (1, (20, 10), 2.0, "adain", [""]),
        (1, (16, 12), 2.0, "wavelet", [""]),
        (1, (16, 12), 3.0, "adain", [""]),
    ])
    assert all(isinstance(r, JobResult) for r in results)
    assert [r.image.size for r in results] == [(32, 24), (40, 20), (32, 24), (32, 24), (32, 24), (48, 36), (32, 24)]
    assert [r.prompt for r in results] == ["a", "", "b", "", "c", "", ""]
    assert [r.batch_size for r in results] == [4, 1, 4, 1, 4, 1, 4]
    assert results[4].image.mode == "RGBA" and results[0].image.mode == "RGB"
    assert {"queue", "extract", "unet", "vae_encode", "vae_decode"} <= set(results[0].timings)


def test_a_failing_group_fails_only_its_requests(engine, monkeypatch):
    run_batch = engine.pipe.run_batch

    def flaky(images, upscale, prompts, **kwargs):
        if images[0].size == (20, 10):
            raise RuntimeError("out of memory")
        return run_batch(images, upscale, prompts, **kwargs)

    monkeypatch.setattr(engine.pipe, "run_batch", flaky)
    results = engine.run([job(16, 12, upscale="2"), job(20, 10, upscale="2"), job(20, 10, upscale="2", seed=1)])
    assert isinstance(results[0], JobResult) and results[0].image.size == (32, 24)
    assert [str(r) for r in results[1:]] == ["out of memory", "out of memory"]


def test_output_encodings(engine):
    result = engine.run([job(16, 12, "RGBA", upscale="2")])[0]
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        data = encode_image(result.image, parse_params({"format": fmt, "quality": "50"}, ("text",), LIMITS))
        assert data.startswith(magic)
