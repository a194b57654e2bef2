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
REALSR = REPO_ROOT.parent / "shared" / "benchmarks" / "realsr"

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


def missing_shared_data(what: str, folder: Path) -> None:
    """Skip a test whose data is missing, but fail it under CI, where a skip would hide that it never ran."""
    message = f"{what} not found at {folder} (the shared data beside the repository)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def realsr_lr() -> Path:
    folder = REALSR / "lr"
    if not folder.is_dir():
        missing_shared_data("RealSR benchmark data", folder)
    return folder


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
