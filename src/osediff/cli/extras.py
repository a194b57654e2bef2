"""The optional extras of ``pyproject.toml`` and the one check that a command has the ones it needs.

A command that needs an extra says so in one line, before it imports or loads anything, naming the
missing packages and the extra that installs them (``pip install 'osediff[train]'``), instead of ending
in a ``ModuleNotFoundError`` deep inside a library. (``--engine ray`` keeps its own check,
``osediff.batch.ray_engine.import_ray``, which Python callers of the Ray engine get too.)
"""

from __future__ import annotations

import argparse
import importlib.util

from ..errors import OSEDiffError

# extra -> the modules of its packages that osediff imports (pyproject.toml's optional-dependencies)
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("pyiqa", "cv2", "scipy"),
    "train": ("accelerate", "yaml", "tensorboard", "lpips", "torchvision"),
    "dape": ("timm",),
    "demo": ("gradio",),
    "export": ("onnx", "onnxruntime"),
    "serve": ("ray", "fastapi", "uvicorn"),  # what ray[serve] adds to ray, found without importing ray (slow)
}
# module -> the package that provides it, where the names differ
PACKAGES = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "ray": "ray[serve]", "fastapi": "ray[serve]",
            "uvicorn": "ray[serve]"}
# sub-command -> the extra it cannot run without
COMMAND_EXTRAS = {"eval": "eval", "train": "train", "demo": "demo", "serve": "serve", "export": "export"}
# prompt extractors built on timm (RAM's Swin backbone), which the dape extra installs
TIMM_EXTRACTORS = ("dape", "ram")


class MissingExtraError(OSEDiffError):
    """An optional extra that a command or option needs is not installed; the message says which."""


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here, found without importing it (its parent packages are)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def require_extras(what: str, *extras: str, argument: str | None = None, instead: str = "") -> None:
    """Raise :class:`MissingExtraError` if a module of ``extras`` is missing: "``what`` needs PACKAGES,
    which are not installed: pip install 'osediff[EXTRAS]'" (then ``instead``, another way out).
    ``what`` may say ``{argument}`` where ``argument``'s flag goes."""
    missing = {extra: [m for m in EXTRAS[extra] if not importable(m)] for extra in extras}
    missing = {extra: modules for extra, modules in missing.items() if modules}
    if not missing:
        return
    packages = list(dict.fromkeys(PACKAGES.get(module, module) for modules in missing.values() for module in modules))
    listed = ", ".join(packages[:-1]) + f" and {packages[-1]}" if len(packages) > 1 else packages[0]
    verb = "are" if len(packages) > 1 else "is"
    raise MissingExtraError(f"{what} needs {listed}, which {verb} not installed: "
                            f"pip install 'osediff[{','.join(missing)}]'{instead}", argument=argument)


def check_extras(args: argparse.Namespace) -> None:
    """The extras the parsed command line needs: its sub-command's, and the dape extra for an
    extractor built on timm (unless saved prompts replace it)."""
    command = getattr(args, "command", None)
    if command in COMMAND_EXTRAS:
        require_extras(f"osediff {command}", COMMAND_EXTRAS[command])
    chosen = getattr(args, "prompt_extractor", None)
    chosen = chosen if isinstance(chosen, list) else [chosen]  # serve's flag is repeatable
    if getattr(args, "prompts_from", None) is None:
        for name in chosen:
            if name in TIMM_EXTRACTORS:
                require_extras(f"{{argument}} {name}", "dape", argument="prompt_extractor",
                               instead=" (or use {argument} text)")
