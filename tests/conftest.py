"""Shared fixtures: tiny random SD-2.1-shaped models and official-format checkpoints, built in code."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from osediff.testing import build_base, random_weights, save_base

REPO_ROOT = Path(__file__).resolve().parents[1]
# The RealSR x4 test set (100 images), beside the repository when present: what the whole-set checks read.
REALSR = REPO_ROOT.parent / "shared" / "benchmarks" / "realsr"
REALSR_PARTS = ("lr", "hr", "osediff_published", "osediff_published_metrics.log")
# Shipped with the repository (tests/data/README.md): two images of that set, as ground truth and the
# authors' published OSEDiff result (lossless WebP, the same pixels as their PNGs), and the authors'
# metric log for all 100; the four LR inputs of examples/ are from the same set.
REALSR_SHIPPED = REPO_ROOT / "tests" / "data" / "realsr"
REALSR_SHIPPED_STEMS = ("Canon_001_LR4", "Nikon_015_LR4")
EXAMPLES = REPO_ROOT / "examples"

# One thread for the whole suite: tiny models and metrics on ~512 px images are many small ops, and
# on the shared 2-core machine a second thread turns each into a wait for a busy core (measured:
# tests/test_evaluation.py 323 s on two threads, 63 s on one). Tests that compare against a one-CPU
# replica or subprocess still ask for ``single_thread``, so they hold if this changes.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_components():
    """Pristine tiny components; tests must deep-copy before mutating (see ``fresh_components``)."""
    return build_base("tiny", seed=0)


@pytest.fixture
def fresh_components(tiny_components):
    return copy.deepcopy(tiny_components)


@pytest.fixture(scope="session")
def tiny_weights(tiny_components):
    return random_weights(tiny_components, seed=1)


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_components, tmp_path_factory) -> Path:
    return save_base(tiny_components, tmp_path_factory.mktemp("sd21-tiny"))


@pytest.fixture(scope="session")
def tiny_pkl(tiny_weights, tmp_path_factory) -> Path:
    return tiny_weights.save(tmp_path_factory.mktemp("weights") / "osediff.pkl")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never touch the network: every host probe answers "unreachable" and is counted.

    What was learnt about hosts and failed lookups is forgotten around each test.
    """
    from osediff.checkpoint import network

    probes: list[str] = []
    monkeypatch.setattr(network, "_probe", lambda url: probes.append(url) or False)
    network.forget()
    yield probes
    network.forget()


_shared_data_missing: dict[str, list[str]] = {}  # "what was missing at where" -> the tests that went on without it


def missing_shared_data(what: str, folder: Path, test: str) -> None:
    """Data beside the repository is missing: ``test`` goes on with what the repository ships and the
    run's summary says what it did not check; under CI, where the data is expected, the test fails
    instead (quietly checking less there would hide that the whole-set checks never ran)."""
    message = f"{what} not found at {folder} (the shared data beside the repository)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it")
    _shared_data_missing.setdefault(message, []).append(test)


@pytest.fixture
def realsr_full(request) -> Path | None:
    """The whole RealSR set (../shared/benchmarks/realsr), for the checks that need all 100 images;
    None where it is missing (a clone with nothing beside it), see :func:`missing_shared_data`.
    Tests taking it check the shipped images (``REALSR_SHIPPED``) in any case."""
    if all((REALSR / part).exists() for part in REALSR_PARTS):
        return REALSR
    missing_shared_data("RealSR benchmark data", REALSR, request.node.nodeid)
    return None


@pytest.fixture(scope="session")
def realsr_lr() -> Path:
    """The folder of RealSR LR inputs the repository ships: examples/ (four 128x128 PNGs beside its README.md)."""
    return EXAMPLES


def pytest_terminal_summary(terminalreporter):
    """Name the tests that checked only the shipped images because the shared data was missing."""
    if not _shared_data_missing:
        return
    terminalreporter.section("checked on the shipped data only", sep="-")
    for message, tests in _shared_data_missing.items():
        terminalreporter.write_line(f"{message}: these tests checked the images in tests/data, not the whole set:")
        for test in tests:
            terminalreporter.write_line(f"  {test}")


@pytest.fixture(scope="module")
def single_thread():
    """One thread, as in a one-CPU replica or a subprocess with ``OMP_NUM_THREADS=1`` (the suite's
    default too, see above; asked for where a result must match such a process bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process once pytest has reported, with pytest's own status.

    Ray's, gradio's and torch's native threads can crash the interpreter's teardown (a segfault
    after the summary line was seen in a full run), which would turn a passing suite into a
    failing exit status. Nothing runs after this hook but that teardown.
    """
    if _exit_status and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
