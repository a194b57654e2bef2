"""The Gradio page: input and settings on the left, a bicubic | OSEDiff slider and the results on the right.

Handlers receive only what gradio has put in its upload folder (checked again here) or an
example *name* from the server-side list; every refusal reaches the page as a ``gr.Error`` that
stays until closed, and in the status box under the result.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import OSEDiffError
from ..fileio import first_line
from ..limits import DEMO_LIMITS, RequestLimits
from ..params import ALIGN_METHODS
from ..pipeline import OSEDiffPipeline, Upscaler
from .examples import ExampleLibrary
from .service import DemoSettings, UpscaleService
from .uploads import DemoInputError, check_upload, open_limited

TITLE = "OSEDiff: one-step diffusion super-resolution"
INTRO = (
    "Upload a low-quality photo (or pick an example), choose the factor and press **Upscale**. "
    "Drag the slider to compare the bicubic enlargement (left) with OSEDiff (right)."
)
TILE_CHOICES = (0, 512, 768, 1024)


def uploaded_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` input whose handler gets the received file itself, not decoded.

    gradio's own preprocessing opens the image (and fully decodes one sent as a ``data:`` URL)
    before any handler runs: a small PNG declaring 13000x13000 pixels cost seconds and a gigabyte
    before the pixel limit was checked, and a non-image failed with gradio's message and the
    server's path. Here every route (upload, clipboard, API path, ``data:`` URL) arrives as a file
    in the upload folder, and the handler checks it from its header before decoding. (The method is
    replaced on the instance: a subclass would make gradio write a ``.pyi`` stub beside this module.)
    """
    image = gr.Image(type="filepath", **kwargs)

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return _save_data_url(payload.url, Path(image.GRADIO_CACHE))
        return payload.path

    image.preprocess = preprocess
    return image


def _save_data_url(url: str, cache: Path) -> str:
    """The bytes of a ``data:`` URL as a file in the upload folder (text that is not base64 is kept
    as is, so that it is refused as "not an image" like any other non-image)."""
    header, _, payload = url.partition(",")
    try:
        data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else payload.encode()
    except (binascii.Error, ValueError):
        data = payload.encode()
    path = cache / uuid.uuid4().hex / "upload"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def upload_roots() -> list[Path]:
    """Where gradio keeps files it received from browsers (and copies of files it served)."""
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder())]


def image_slider(**kwargs: Any) -> gr.components.Component:
    """gradio's own ImageSlider (gradio >= 5.?), else the ``gradio_imageslider`` custom component."""
    if hasattr(gr, "ImageSlider"):
        return gr.ImageSlider(**kwargs)
    try:
        from gradio_imageslider import ImageSlider
    except ImportError as err:
        raise RuntimeError("this gradio has no ImageSlider; pip install gradio_imageslider "
                           "(or a newer gradio)") from err
    kwargs.pop("format", None)
    return ImageSlider(**kwargs)


def _theme() -> gr.themes.Base:
    # system fonts: the page makes no requests to font CDNs, so it loads fast offline and leaks nothing
    system = [gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")]
    return gr.themes.Default(font=system, font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")])


def _style_kwargs(target: Callable[..., Any]) -> dict[str, Any]:
    """gradio 6 takes theme/css in launch(), earlier versions in Blocks(); pass them where accepted."""
    params = inspect.signature(target).parameters
    return {"theme": _theme()} if "theme" in params else {}


def build_demo(model: Upscaler | OSEDiffPipeline | Callable[[], Upscaler | OSEDiffPipeline] | None,
               examples_dir: str | os.PathLike | None = None, *,
               limits: RequestLimits = DEMO_LIMITS, service: UpscaleService | None = None,
               defaults: DemoSettings | None = None) -> gr.Blocks:
    """The page around one model, loaded here once if a factory is given. Call ``.queue()``/``.launch()`` on it.

    ``limits`` caps each request; ``service`` (which has its own limits) replaces the whole
    request path (tests use it to count calls). ``defaults`` are the controls' first values (the
    CLI passes the preset's factor and alignment).
    """
    defaults = defaults or DemoSettings()
    if service is None:
        if model is None:
            raise ValueError("build_demo needs an Upscaler, a pipeline, a factory of either, or a service")
        loaded = model if isinstance(model, Upscaler | OSEDiffPipeline) else model()
        service = UpscaleService(loaded, limits)
    limits = service.limits
    examples = ExampleLibrary.from_folder(examples_dir)
    handlers = DemoHandlers(service, examples)
    extractors = service.extractor_names
    if defaults.extractor not in extractors:
        raise ValueError(f"unknown prompt extractor {defaults.extractor!r}; available: {', '.join(extractors)}")

    with gr.Blocks(title="OSEDiff demo", analytics_enabled=False, delete_cache=(3600, 3600),
                   **_style_kwargs(gr.Blocks.__init__)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=2):
                source = uploaded_image(label="Low-quality input", image_mode=None, format="png",
                                        sources=["upload", "clipboard"], elem_id="input-image")
                if len(examples):
                    example = gr.Dropdown(examples.names, value=None, label=f"…or an example ({len(examples)})",
                                          elem_id="example", allow_custom_value=False)
                    example.input(handlers.pick_example, inputs=example, outputs=source, api_name=False)
                upscale = gr.Slider(1, limits.max_upscale, value=defaults.upscale, step=0.5, label="Upscale factor",
                                    elem_id="upscale")
                prompt = gr.Textbox(label="Prompt", placeholder="optional, e.g. 'a sharp photo of a building'",
                                    elem_id="prompt")
                missing = f"; not available here: {', '.join(sorted(service.unavailable))}" if service.unavailable \
                    else ""
                extractor = gr.Dropdown(extractors, value=defaults.extractor, label="Prompt extractor",
                                        info=f"text = the prompt above only; dape/ram tag the image{missing}",
                                        elem_id="extractor")
                align = gr.Radio(list(ALIGN_METHODS), value=defaults.align, label="Colour alignment", elem_id="align")
                tile = gr.Dropdown([("off", 0), *((f"{t} px", t) for t in TILE_CHOICES[1:])], value=defaults.tile_px,
                                   label="UNet tile size", info="smaller tiles use less memory", elem_id="tile")
                strength = gr.Slider(0, 1, value=defaults.strength, step=0.05, label="Strength", elem_id="strength",
                                     info="1 = the model's full detail; lower stays closer to the input (0: only "
                                          "the input, re-encoded)")
                guidance = gr.Slider(0, 5, value=defaults.guidance, step=0.25, label="Prompt guidance",
                                     elem_id="guidance", info="1 = the prompt as trained; higher pushes away from "
                                                              "the negative prompt below (one extra UNet pass)")
                negative = gr.Textbox(label="Negative prompt", value=defaults.negative_prompt, elem_id="negative",
                                      placeholder="used when guidance is not 1, e.g. 'oversaturated, painting'")
                run = gr.Button("Upscale", variant="primary", elem_id="run")
                gr.Markdown(f"Limits: {limits.max_bytes // (1024 * 1024)} MB and {limits.max_pixels:,} pixels per "
                            f"upload, {limits.max_output_pixels:,} output pixels.")
            with gr.Column(scale=3):
                slider = image_slider(label="Bicubic  ◀ ▶  OSEDiff", type="pil", format="png", interactive=False,
                                      elem_id="slider")
                download = gr.DownloadButton("Download full-resolution PNG", value=None, interactive=False,
                                             elem_id="download")
                used = gr.Textbox(label="Prompt used", interactive=False, elem_id="prompt-used")
                took = gr.Textbox(label="Time taken", interactive=False, elem_id="time-taken")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        event = run.click(handlers.upscale, inputs=[source, upscale, prompt, extractor, align, tile, strength,
                                                    guidance, negative],
                          outputs=[slider, download, used, took, status], api_name="upscale")
        # a failed run updates no output; the follow-up puts its message where it stays readable
        event.failure(handlers.last_error, inputs=None, outputs=status, api_name=False)
    return demo


class DemoHandlers:
    """The event handlers, separate from the layout so tests can call them without a browser."""

    def __init__(self, service: UpscaleService, examples: ExampleLibrary) -> None:
        self.service = service
        self.examples = examples
        self._errors: dict[str, str] = {}  # the last refusal of each browser session, for the status box
        self._errors_lock = threading.Lock()

    def _refuse(self, message: str, request: gr.Request | None) -> gr.Error:
        if request is not None and getattr(request, "session_hash", None):
            with self._errors_lock:
                self._errors[request.session_hash] = message
        return gr.Error(message, duration=None, print_exception=False)  # stays until the user closes it

    def last_error(self, request: gr.Request) -> str:
        with self._errors_lock:
            return "error: " + self._errors.pop(request.session_hash, "the request failed")

    def pick_example(self, name: str | None) -> str | None:
        """Copy the chosen example to the app's temp folder; gradio serves it from there."""
        if not name:
            return None
        try:
            path = self.examples.path(name)
            open_limited(path, self.service.limits)  # same limits as an upload, before showing it
        except DemoInputError as err:
            raise gr.Error(str(err), duration=None, print_exception=False) from None
        staged = self.service.output_dir / "examples" / path.name
        if not staged.exists():
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staged)
        return str(staged)

    def upscale(self, image_path: str | None, upscale: float, prompt: str, extractor: str, align: str,
                tile_px: int, strength: float = 1.0, guidance: float = 1.0, negative_prompt: str = "",
                request: gr.Request = None) -> tuple[Any, Any, str, str, str]:
        if not image_path:
            raise self._refuse("Upload an image (or pick an example) first.", request)
        try:
            loaded = check_upload(image_path, upload_roots(), self.service.limits)
            settings = DemoSettings(float(upscale), prompt or "", extractor, align, int(tile_px or 0),
                                    float(strength), float(guidance), negative_prompt or "")
            result = self.service.upscale(loaded, settings, name=Path(image_path).name)
        except DemoInputError as err:
            raise self._refuse(str(err), request) from None
        except (OSEDiffError, RuntimeError, ValueError, TypeError) as err:  # e.g. out of memory: keep the server up
            raise self._refuse(f"upscaling failed: {first_line(err)}", request) from None
        button = gr.DownloadButton(value=str(result.png_path), interactive=True)
        return (result.bicubic, result.image), button, result.prompt, result.summary(self.service.device), ""


def launch_demo(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
                concurrency: int = 1, queue_size: int = 16, max_file_size: int | None = None,
                block: bool = True, announce: Callable[[str, str | None], None] | None = None) -> Any:
    """Queue with bounded concurrency and serve; ``block=False`` returns once the server is up.

    gradio's own start-up lines are left out (they say to set ``share=True`` in ``launch()``, which
    someone running a front end cannot do): once the server is up, ``announce(local_url, share_url)``
    says where the page is (by default one printed line; the CLI's names its ``--share`` flag).
    """
    demo.queue(default_concurrency_limit=max(1, concurrency), max_size=queue_size)
    kwargs: dict[str, Any] = {"server_name": host, "server_port": port, "share": share, "show_error": True,
                              "max_file_size": max_file_size, "prevent_thread_lock": True, "quiet": True}
    kwargs.update(_style_kwargs(demo.launch))
    params = inspect.signature(demo.launch).parameters
    launched = demo.launch(**{k: v for k, v in kwargs.items() if k in params})
    (announce or _announce)(demo.local_url, demo.share_url)
    if block:
        demo.block_thread()  # until Ctrl-C (or a SystemExit from a signal handler)
    return launched


def _announce(local_url: str, share_url: str | None) -> None:
    print(f"running on {local_url}" + (f" and {share_url}" if share_url else ""), flush=True)
