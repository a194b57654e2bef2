"""The ``osediff demo`` web app: a Gradio page around one loaded :class:`~osediff.pipeline.Upscaler`.

Only :mod:`osediff.demo.page` imports gradio; the upload checks (:mod:`.uploads`), the example list
and the request service are plain Python so they can be tested without a web stack.
"""

from ..limits import DEMO_LIMITS, RequestLimits
from .examples import ExampleLibrary, default_examples_dir
from .service import DemoResult, DemoSettings, UpscaleService
from .uploads import DemoInputError

__all__ = [
    "DEMO_LIMITS",
    "DemoInputError",
    "DemoResult",
    "DemoSettings",
    "ExampleLibrary",
    "RequestLimits",
    "UpscaleService",
    "default_examples_dir",
]
