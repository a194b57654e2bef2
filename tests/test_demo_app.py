"""The demo's request path without a browser: limits, refused paths, examples, the upscale service, the layout."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from osediff.demo import DEMO_LIMITS, DemoInputError, ExampleLibrary, RequestLimits, UpscaleService
from osediff.demo.service import DemoSettings, safe_stem
from osediff.demo.uploads import check_request, check_upload, resolve_upload
from osediff.images import LoadedImage
from osediff.params import TileConfig
from osediff.pipeline import OSEDiffPipeline, Upscaler
from osediff.prompts.offered import PromptExtractors


@pytest.fixture
def upload_root(tmp_path) -> Path:
    root = tmp_path / "uploads"
    (root / "abc123").mkdir(parents=True)
    return root


def save(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size, (40, 80, 120)).save(path)
    return path


def test_pixel_limit_message_names_size_and_limit(upload_root):
    path = save(upload_root / "abc123" / "big.png", (1100, 1000))
    with pytest.raises(DemoInputError) as err:
        check_upload(path, [upload_root], RequestLimits(max_pixels=1024 * 1024))
    message = str(err.value)
    assert "1100x1000" in message and "1,048,576 pixels" in message and "downscale" in message
    assert str(upload_root) not in message  # no server paths in what the user sees


def test_byte_limit_message(upload_root):
    path = save(upload_root / "abc123" / "photo.png", (64, 64))
    with pytest.raises(DemoInputError, match=r"accepts files up to 0\.0 MB"):
        check_upload(path, [upload_root], RequestLimits(max_bytes=10))


def test_within_limits_loads(upload_root):
    path = save(upload_root / "abc123" / "ok.png", (64, 48))
    loaded = check_upload(path, [upload_root], DEMO_LIMITS)
    assert loaded.rgb.size == (64, 48)


def test_not_an_image_is_refused_without_server_path(upload_root):
    path = upload_root / "abc123" / "fake.png"
    path.write_text("hello")
    with pytest.raises(DemoInputError, match="cannot use this image: not an image file") as err:
        check_upload(path, [upload_root], DEMO_LIMITS)
    assert str(upload_root) not in str(err.value)


@pytest.mark.parametrize("make", [
    lambda root, tmp: "/etc/passwd",
    lambda root, tmp: str(root / "abc123" / ".." / ".." / "outside.png"),
    lambda root, tmp: str(root),
    lambda root, tmp: os.fspath(tmp / "outside.png"),
])
def test_paths_outside_the_upload_folder_are_refused(upload_root, tmp_path, make):
    save(tmp_path / "outside.png", (8, 8))
    with pytest.raises(DemoInputError, match="file-system paths are refused"):
        resolve_upload(make(upload_root, tmp_path), [upload_root])


def test_symlink_in_upload_folder_pointing_out_is_refused(upload_root, tmp_path):
    target = save(tmp_path / "secret.png", (8, 8))
    link = upload_root / "abc123" / "innocent.png"
    link.symlink_to(target)
    with pytest.raises(DemoInputError, match="file-system paths are refused"):
        check_upload(link, [upload_root], DEMO_LIMITS)


def test_request_limits():
    assert check_request(100, 50, 4.0, DEMO_LIMITS) == (400, 200)
    with pytest.raises(DemoInputError, match="between 1 and 8"):
        check_request(100, 50, 9.0, DEMO_LIMITS)
    with pytest.raises(DemoInputError, match=r"would be 4000x4000 = 16,000,000 pixels.*at most 1,000,000"):
        check_request(1000, 1000, 4.0, RequestLimits(max_output_pixels=1_000_000))


def test_examples_are_looked_up_by_name_only(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    library = ExampleLibrary.from_folder(tmp_path)
    assert library.names == ["a.jpg", "b.png"]
    assert library.path("a.jpg") == (tmp_path / "a.jpg").resolve()
    for bad in ("notes.txt", "../a.jpg", str(tmp_path / "a.jpg"), "/etc/passwd", None):
        with pytest.raises(DemoInputError, match="unknown example"):
            library.path(bad)
    assert len(ExampleLibrary.from_folder(None)) == 0


def test_tile_config_and_stem():
    assert not TileConfig.for_output_tile(0).enabled and DemoSettings(tile_px=0).params().tiles == TileConfig(False)
    cfg = DemoSettings(tile_px=768).params().tiles
    assert (cfg.latent_tile, cfg.latent_overlap) == (96, 32)
    assert safe_stem("../../etc/my photo (1).JPG") == "my_photo_1"
    assert safe_stem("") == "image"


@pytest.fixture
def service(fresh_components, tiny_weights, tmp_path):
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(copy.deepcopy(tiny_weights))
    return UpscaleService(pipe, DEMO_LIMITS, output_dir=tmp_path / "out", keep_outputs=2)


def test_service_upscales_writes_png_and_reports(service):
    image = Image.new("RGB", (20, 12), (200, 100, 50))
    result = service.upscale(LoadedImage(image, None), DemoSettings(upscale=4, prompt="a cat", tile_px=0),
                             name="my cat.png")
    assert result.image.size == result.bicubic.size == (80, 48)
    assert result.prompt == "a cat"
    assert result.png_path.name == "my_cat.png"  # named as osediff upscale names it
    with Image.open(result.png_path) as png:
        assert png.size == (80, 48)
    assert {"extract", "vae_encode", "unet", "vae_decode"} <= set(result.timings)
    assert "s total" in result.summary("cpu") and "80x48" in result.summary("cpu")
    for _ in range(3):  # only the newest keep_outputs results stay on disk
        service.upscale(LoadedImage(image, None), DemoSettings(upscale=1, tile_px=0))
    assert len([p for p in service.output_dir.iterdir() if p.is_dir()]) == 2


def test_service_refuses_unknown_extractor_and_alignment(service):
    image = LoadedImage(Image.new("RGB", (8, 8)), None)
    with pytest.raises(DemoInputError, match="unknown prompt extractor"):
        service.upscale(image, DemoSettings(extractor="nonsense"))
    with pytest.raises(DemoInputError, match="align must be one of adain, wavelet, none, got 'sepia'"):
        service.upscale(image, DemoSettings(align="sepia"))


def test_layout_builds_without_launching_and_handler_refuses_paths(service, tmp_path):
    gr = pytest.importorskip("gradio")
    from osediff.demo.page import DemoHandlers, build_demo

    save(tmp_path / "ex.png", (16, 16))
    demo = build_demo(None, examples_dir=tmp_path, service=service)
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"input-image", "example", "run", "slider", "download", "prompt-used", "time-taken"} <= ids
    handlers = DemoHandlers(service, ExampleLibrary.from_folder(tmp_path))
    with pytest.raises(gr.Error, match="file-system paths are refused"):
        handlers.upscale(str(tmp_path / "ex.png"), 4, "", "text", "adain", 768)
    with pytest.raises(gr.Error, match="unknown example"):
        handlers.pick_example("../ex.png")
    staged = handlers.pick_example("ex.png")
    assert Path(staged).parent == service.output_dir / "examples"


def test_cli_refuses_bad_arguments_before_loading_a_model(tmp_path, capsys):
    pytest.importorskip("gradio")
    from osediff.cli import main

    with pytest.raises(SystemExit) as info:
        main(["demo", "--prompt-extractor", "bogus", "--no-examples"])
    assert info.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["demo", "--examples", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares ``width`` x ``height`` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 256)) \
        + chunk(b"IEND", b"")


def test_extractors_without_files_are_not_offered_and_fail_at_once(tmp_path, monkeypatch, fresh_components,
                                                                    tiny_base_dir, tiny_pkl, no_network):
    from huggingface_hub import constants

    from osediff.model_files import ModelOptions, find_model_files

    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    others = ["caption", "dape", "none", "ram"]
    files = find_model_files(ModelOptions(base=str(tiny_base_dir), weights=str(tiny_pkl)), ["text"], optional=others,
                             cached_only=others)
    assert set(files.extractors) == {"none", "text"} and set(files.unavailable) == {"caption", "dape", "ram"}
    assert no_network == []  # extractors nobody chose are looked for in the local cache only
    extractors = PromptExtractors(files.extractors, unavailable=files.unavailable)
    service = UpscaleService(Upscaler(OSEDiffPipeline(fresh_components), extractors), output_dir=tmp_path / "out")
    assert service.extractor_names == ["none", "text"]
    with pytest.raises(DemoInputError) as info:
        service.upscale(LoadedImage(Image.new("RGB", (8, 8)), None), DemoSettings(extractor="dape"))
    message = str(info.value)
    assert "not offered on this server" in message and "--" not in message and "://" not in message


def test_an_extractor_that_failed_to_load_is_not_tried_again(tmp_path, monkeypatch, fresh_components):
    from osediff.checkpoint import ModelNotFoundError

    calls = []

    def broken(name, **kwargs):
        calls.append(name)
        raise ModelNotFoundError("RAM weights: unreadable")

    monkeypatch.setattr("osediff.prompts.offered.create_prompt_extractor", broken)
    extractors = PromptExtractors({"ram": {"ram_path": tmp_path / "ram.pth"}})
    service = UpscaleService(Upscaler(OSEDiffPipeline(fresh_components), extractors), output_dir=tmp_path / "out")
    image = LoadedImage(Image.new("RGB", (8, 8)), None)
    for _ in range(2):
        with pytest.raises(DemoInputError, match=r"could not be loaded on this server \(RAM weights: unreadable\)"):
            service.upscale(image, DemoSettings(extractor="ram", tile_px=0))
    assert calls == ["ram"]


def test_the_temporary_output_folder_is_removed_on_shutdown(tiny_base_dir, tiny_pkl, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    from osediff.cli import main

    seen = {}

    def fake_launch(demo, **kwargs):  # returns at once, as launch does after Ctrl-C
        seen["dirs"] = [p for p in Path(tempfile.gettempdir()).glob("osediff-demo-*") if p.is_dir()]

    before = set(Path(tempfile.gettempdir()).glob("osediff-demo-*"))
    monkeypatch.setattr("osediff.demo.page.launch_demo", fake_launch)
    assert main(["demo", "--no-examples", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
                 "--device", "cpu", "--offline"]) == 0
    created = [p for p in seen["dirs"] if p not in before]
    assert len(created) == 1 and not created[0].exists()
    service = UpscaleService(OSEDiffPipeline.__new__(OSEDiffPipeline), output_dir=tmp_path / "mine")
    service.close()
    assert (tmp_path / "mine").is_dir()  # a folder the caller chose is theirs


@pytest.fixture
def served_demo(service, tmp_path, monkeypatch):
    """The page around the tiny service, served in this process on a free port."""
    gr = pytest.importorskip("gradio")
    import socket

    from osediff.demo.page import build_demo, launch_demo

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(None, service=service)
    launch_demo(demo, host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", gr
    finally:
        demo.close()


def _call_api(url: str, data: list) -> str:
    import json
    import urllib.request

    request = urllib.request.Request(f"{url}gradio_api/call/upscale", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/upscale/{event_id}", timeout=120) as response:
        return response.read().decode()


def test_every_route_checks_the_header_before_decoding(served_demo, monkeypatch):
    import base64

    from PIL import ImageFile

    url, _ = served_demo
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original_load(self))
    bomb = png_declaring(13000, 13000)
    assert len(bomb) < 1000
    data_url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    settings = [4, "", "text", "adain", 768, 1.0, 1.0, ""]  # factor, prompt, extractor, align, tile, S, W, negative
    stream = _call_api(url, [{"url": data_url, "meta": {"_type": "gradio.FileData"}}, *settings])
    assert "event: error" in stream and "13000x13000" in stream and "1,048,576 pixels" in stream
    assert (13000, 13000) not in decoded  # refused from the header: nothing was decoded
    for junk in ("data:image/png;base64,aGVsbG8gd29ybGQ=", "data:image/png;base64,%%%not base64%%%"):
        stream = _call_api(url, [{"url": junk, "meta": {"_type": "gradio.FileData"}}, *settings])
        assert "event: error" in stream and "not an image file" in stream


def test_a_non_image_upload_gets_the_projects_message(served_demo, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = served_demo
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not a picture")
    with pytest.raises(Exception) as info:
        Client(url, verbose=False).predict(handle_file(str(fake)), 4, "", "text", "adain", 768, api_name="/upscale")
    message = str(info.value)
    assert "cannot use this image: not an image file" in message
    assert "preprocess" not in message and "/tmp" not in message and str(tmp_path) not in message


def test_refusals_stay_in_the_status_box(service, tmp_path):
    gr = pytest.importorskip("gradio")
    from types import SimpleNamespace

    from osediff.demo.page import DemoHandlers

    handlers = DemoHandlers(service, ExampleLibrary.from_folder(None))
    session = SimpleNamespace(session_hash="abc")
    with pytest.raises(gr.Error) as info:
        handlers.upscale(None, 4, "", "text", "adain", 768, request=session)
    assert info.value.duration is None  # the toast stays until closed
    assert handlers.last_error(session) == "error: Upload an image (or pick an example) first."
