"""The ``osediff demo`` web app: a Gradio page around one loaded :class:`~osediff.pipeline.OSEDiffPipeline`.

Only :mod:`osediff.app.demo` imports gradio; the limits, example list and upscale service are
plain Python so they can be tested (and reused) without a web stack.
"""

from ..limits import DEMO_LIMITS, RequestLimits
from .examples import ExampleLibrary, default_examples_dir
from .limits import DemoInputError
from .service import DemoResult, UpscaleService

__all__ = [
    "DEMO_LIMITS",
    "DemoInputError",
    "DemoResult",
    "ExampleLibrary",
    "RequestLimits",
    "UpscaleService",
    "default_examples_dir",
]
