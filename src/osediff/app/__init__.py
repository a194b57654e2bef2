"""The ``osediff demo`` web app: a Gradio page around one loaded :class:`~osediff.pipeline.OSEDiffPipeline`.

Only :mod:`osediff.app.demo` imports gradio; the limits, example list and upscale service are
plain Python so they can be tested (and reused) without a web stack.
"""

from .examples import ExampleLibrary, default_examples_dir
from .limits import DemoInputError, UploadLimits
from .service import DemoResult, UpscaleService

__all__ = [
    "DemoInputError",
    "DemoResult",
    "ExampleLibrary",
    "UploadLimits",
    "UpscaleService",
    "default_examples_dir",
]
