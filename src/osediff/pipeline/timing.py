"""Seconds per stage of a call, with CUDA synchronised so that GPU work is counted where it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def timed(sink: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Add the wall seconds of the block to ``sink[name]``, synchronising CUDA so GPU work counts."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    sink[name] = sink.get(name, 0.0) + time.perf_counter() - start
