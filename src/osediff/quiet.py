"""Keeping the libraries' loading chatter (progress bars, dtype notes, kernel banners) off the console.

:func:`quiet_loading` silences it for one block and restores each library's settings afterwards,
so a Python user's own logging is left as it was; the CLI silences it for the whole process.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

_STDLIB_LOGGERS = ("peft", "bitsandbytes", "accelerate")
_HF_LIBRARIES = ("diffusers", "transformers")


def _hf_logging(name: str):
    try:
        return importlib.import_module(f"{name}.utils.logging")
    except ImportError:
        return None


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Errors only from diffusers, transformers, peft and bitsandbytes, and no load bars, inside the block."""
    saved_levels = {name: logging.getLogger(name).level for name in _STDLIB_LOGGERS}
    saved_hf = []
    for name in _HF_LIBRARIES:
        module = _hf_logging(name)
        if module is not None:
            saved_hf.append((module, module.get_verbosity(), module.is_progress_bar_enabled()))
    quiet_libraries()
    try:
        yield
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for module, verbosity, bars in saved_hf:
            module.set_verbosity(verbosity)
            if bars:
                module.enable_progress_bar()


def quiet_libraries() -> None:
    """Silence the libraries' chatter for the rest of the process (what the command line does)."""
    for name in _STDLIB_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in _HF_LIBRARIES:
        module = _hf_logging(name)
        if module is not None:
            module.set_verbosity_error()
            module.disable_progress_bar()
