"""The service's model side without Ray: one model call per (size, factor, alignment, ...) group."""

from __future__ import annotations

import numpy as np
import pytest

from osediff.limits import SERVE_LIMITS
from osediff.model_files import ModelOptions
from osediff.outputs import encode_image
from osediff.serve.engine import Engine, Job, JobResult, ServeConfig
from osediff.serve.limits import open_checked, parse_params
from test_serve_limits import png_bytes

LIMITS = SERVE_LIMITS


@pytest.fixture(scope="module")
def engine(tiny_base_dir, tiny_pkl, single_thread):
    model = ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl), device="cpu", offline=True)
    return Engine(ServeConfig.find(model, threads=1))


def job(width: int, height: int, mode: str = "RGB", seed: int = 0, **values: str) -> Job:
    params = parse_params(values, ("text", "none"), LIMITS)
    return Job(open_checked(png_bytes(width, height, mode, seed), params, LIMITS), params)


def test_a_batch_runs_one_model_call_per_size_factor_and_alignment(engine, monkeypatch):
    calls = []
    super_resolve = engine.pipe.super_resolve

    def spy(x_l, embedding, **kwargs):
        calls.append((tuple(x_l.shape), embedding.shape[0]))
        return super_resolve(x_l, embedding, **kwargs)

    monkeypatch.setattr(engine.pipe, "super_resolve", spy)
    jobs = [job(16, 12, upscale="2", prompt="a"), job(20, 10, upscale="2"), job(16, 12, upscale="2", prompt="b"),
            job(16, 12, upscale="2", align="wavelet"), job(16, 12, "RGBA", upscale="2", prompt="c"),
            job(16, 12, upscale="3"), job(16, 12, upscale="2", prompt="d", prompt_extractor="none")]
    results = engine.run(jobs)
    # four prompts "a", "b", "c", "" in one call; one embedding each
    assert sorted(calls) == sorted([((4, 3, 24, 32), 4), ((1, 3, 20, 40), 1), ((1, 3, 24, 32), 1),
                                    ((1, 3, 36, 48), 1)])
    assert all(isinstance(r, JobResult) for r in results)
    assert [r.image.size for r in results] == [(32, 24), (40, 20), (32, 24), (32, 24), (32, 24), (48, 36), (32, 24)]
    assert [r.prompt for r in results] == ["a", "", "b", "", "c", "", ""]
    assert [r.batch_size for r in results] == [4, 1, 4, 1, 4, 1, 4]
    assert results[4].image.mode == "RGBA" and results[0].image.mode == "RGB"
    assert {"queue", "extract", "unet", "vae_encode", "vae_decode"} <= set(results[0].timings)


def test_a_failing_group_fails_only_its_requests(engine, monkeypatch):
    super_resolve = engine.pipe.super_resolve

    def flaky(x_l, embedding, **kwargs):
        if x_l.shape[-1] == 40:
            raise RuntimeError("out of memory")
        return super_resolve(x_l, embedding, **kwargs)

    monkeypatch.setattr(engine.pipe, "super_resolve", flaky)
    results = engine.run([job(16, 12, upscale="2"), job(20, 10, upscale="2"), job(20, 10, upscale="2", seed=1)])
    assert isinstance(results[0], JobResult) and results[0].image.size == (32, 24)
    assert [str(r) for r in results[1:]] == ["out of memory", "out of memory"]


# What the README states of a served image that shared its model call (X-OSEDiff-Batch-Size > 1):
# each channel value is within one level of the value of the same request run alone, and at most
# one value in a thousand differs (measured here: 1 or 2 of the 8100 values of a 60x45 result).
BATCH_MAX_LEVELS = 1
BATCH_MAX_SHARE = 0.001


def test_a_batched_result_is_within_one_level_of_a_lone_run(engine):
    jobs = [job(24, 18, seed=seed, upscale="2.5", prompt=f"p{seed % 2}") for seed in range(4)]
    alone = [engine.run([one])[0] for one in jobs]
    assert {result.batch_size for result in alone} == {1}
    for size in (2, 3, 4):
        for batched, single in zip(engine.run(jobs[:size]), alone, strict=False):
            assert batched.batch_size == size
            difference = np.abs(np.asarray(batched.image, dtype=int) - np.asarray(single.image, dtype=int))
            assert difference.max() <= BATCH_MAX_LEVELS
            assert np.count_nonzero(difference) <= BATCH_MAX_SHARE * difference.size, np.count_nonzero(difference)


def test_output_encodings(engine):
    result = engine.run([job(16, 12, "RGBA", upscale="2")])[0]
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF"), ("tiff", b"II*\x00")):
        params = parse_params({"format": fmt, "quality": "50"}, ("text",), LIMITS)
        assert encode_image(result.image, params.format, params.quality).startswith(magic)
