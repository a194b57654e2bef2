"""benchmarks/gpu_suite.py: the CPU dry run writes one result file per row, with real numbers.

The script runs in this process (loaded from its file, as ``python benchmarks/gpu_suite.py`` would
run it): a subprocess would spend most of its time importing torch and diffusers again.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from conftest import REPO_ROOT

SUITE = REPO_ROOT / "benchmarks" / "gpu_suite.py"


@pytest.fixture
def suite_main(single_thread, monkeypatch):
    """The script's ``main``, with diffusers' log level (which it lowers) restored afterwards."""
    from diffusers.utils import logging as diffusers_logging

    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    suite = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_suite", suite)  # dataclasses look their module up there
    spec.loader.exec_module(suite)
    verbosity = diffusers_logging.get_verbosity()
    yield suite.main
    diffusers_logging.set_verbosity(verbosity)


def test_dry_run_writes_a_result_file_per_row(tmp_path, suite_main):
    rows = ["ours_b1", "authors_fp32", "drift", "out4096_auto"]
    suite_main(["--device", "cpu", "--size", "tiny", "--out", str(tmp_path), "--rows", ",".join(rows), "--warmup",
                "0", "--repeats", "1", "--lr-size", "16", "--big-size", "32", "--budget-s", "600"])
    results = {name: json.loads((tmp_path / "rows" / f"{name}.json").read_text()) for name in rows}
    assert all(r["status"] == "ok" for r in results.values()), results
    assert 0 < results["ours_b1"]["ms_per_image"] < math.inf and results["ours_b1"]["stages_s"]["unet"] > 0
    assert results["authors_fp32"]["dtype"] == "float32" and results["authors_fp32"]["stages_s"]["prompt"] > 0
    variants = results["drift"]["variants"]
    assert set(variants) == {"fp16", "bf16", "fp16_fp32_up_blocks", "fp16_fp32_decoder"}
    assert all(0 < v["max_levels"] < 255 and v["decoder_nonfinite"] == 0 for v in variants.values())
    assert results["out4096_auto"]["output"] == "128x128" and results["out4096_auto"]["seconds"] > 0
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["row"] for line in lines] == rows
    assert all(f"| {name} | ok |" in (tmp_path / "table.md").read_text() for name in rows)
    assert json.loads((tmp_path / "env.json").read_text())["device"] == "cpu"


def test_rows_past_the_budget_are_skipped_with_the_reason(tmp_path, suite_main):
    suite_main(["--device", "cpu", "--size", "tiny", "--out", str(tmp_path), "--rows", "ours_b1,compile_default",
                "--budget-s", "0"])
    for name in ("ours_b1", "compile_default"):
        row = json.loads((tmp_path / "rows" / f"{name}.json").read_text())
        assert row["status"] == "skipped" and row["reason"] == "budget: 0 s left of 0"
