"""``osediff upscale`` end to end on real RealSR inputs with the tiny model, and every bad input."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from osediff.cli import main
from osediff.pipeline import OSEDiffPipeline


@pytest.fixture
def cli(tiny_base_dir, tiny_pkl):
    def invoke(*args: str) -> int:
        extractor = [] if "--prompt-extractor" in args else ["--prompt-extractor", "text"]
        return main(["upscale", *args, *extractor, "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
                     "--device", "cpu"])

    return invoke


def test_console_script_on_a_realsr_image(realsr_lr, tiny_base_dir, tiny_pkl, tmp_path):
    # one image: the subprocess is here for the installed entry point; batches of many images are
    # covered in-process below (each 128->512 image costs several seconds even with the tiny model)
    names = [path.name for path in sorted(realsr_lr.glob("*.png"))[:1]]
    out = tmp_path / "out"
    exe = shutil.which("osediff", path=os.path.dirname(sys.executable))
    proc = subprocess.run(
        [exe, "upscale", *(str(realsr_lr / n) for n in names), "-o", str(out), "--base", str(tiny_base_dir),
         "--weights", str(tiny_pkl), "--device", "cpu", "--prompt", "a photo", "--save-prompts",
         "--prompt-extractor", "text"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread, as the suite runs torch (see conftest.py)
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 written" in proc.stdout and "0 failed" in proc.stdout
    for name in names:
        with Image.open(out / name) as img:
            assert img.size == (512, 512)
        assert (out / name).with_suffix(".txt").read_text() == "a photo\n"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temp files left


def write_bad_inputs(folder):
    good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8))
    good.save(folder / "good.png")
    (folder / "notimage.png").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    good.resize((64, 64)).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "unreadable.png").symlink_to(folder / "vanished.png")  # dangling link: nothing to read
    return good


def test_bad_files_are_reported_and_the_batch_goes_on(cli, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_bad_inputs(src)
    inputs = [str(src / n) for n in ("notimage.png", "empty.png", "good.png", "truncated.png", "unreadable.png")]
    assert cli(*inputs, "-o", str(out), "-s", "2") == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 4
    assert any("notimage.png" in line and "not an image" in line for line in lines)
    assert any("empty.png" in line and "0 bytes" in line for line in lines)
    assert any("truncated.png" in line for line in lines)
    assert any("unreadable.png" in line for line in lines)
    assert [p.name for p in out.iterdir()] == ["good.png"]
    assert Image.open(out / "good.png").size == (32, 24)


def test_image_modes_orientation_animation_and_pixel_limit(cli, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8))
    rgb.convert("L").save(src / "gray.png")
    rgb.convert("P").save(src / "palette.png")
    rgb.convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(np.arange(140, dtype=np.uint16).reshape(10, 14) * 400).save(src / "deep16.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(src / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rgb.save(src / "rotated.jpg", exif=exif)
    frames = [rgb, rgb.transpose(Image.FLIP_LEFT_RIGHT)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (300, 300)).save(src / "huge.png")
    code = cli(str(src), "-o", str(out), "-s", "2", "--max-pixels", str(200 * 200))
    assert code == 1  # only huge.png fails
    err = capsys.readouterr().err
    assert "huge.png" in err and "pixel limit" in err
    sizes = {p.stem: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"gray": (28, 20), "palette": (28, 20), "cmyk": (28, 20), "deep16": (28, 20),
                     "alpha": (28, 20), "rotated": (20, 28), "anim": (28, 20)}
    alpha = Image.open(out / "alpha.png")
    assert alpha.mode == "RGBA" and alpha.getchannel("A").getextrema() == (128, 128)


def test_skip_existing_formats_globs_and_saved_prompts(cli, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(src / f"im{i}.png")
    assert cli(str(src / "*.png"), "-o", str(out), "-s", "2", "--format", "jpg", "--prompt", "sky",
               "--save-prompts") == 0
    assert sorted(p.name for p in out.iterdir()) == ["im0.jpg", "im0.txt", "im1.jpg", "im1.txt"]
    mtime = (out / "im0.jpg").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(str(src), "-o", str(out), "-s", "2", "--format", "jpg", "--skip-existing") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "im0.jpg").stat().st_mtime_ns == mtime
    (out / "im1.txt").write_text("from file\n")
    out2 = tmp_path / "out2"
    assert cli(str(src), "-o", str(out2), "-s", "2", "--prompts-from", str(out), "--save-prompts") == 0
    assert (out2 / "im1.txt").read_text() == "from file\n"


def test_missing_model_fails_in_one_line(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--base", str(tmp_path / "nobase"),
                 "--offline", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nobase" in err and "--base" in err and len(err.splitlines()) == 1


def test_no_inputs_is_an_error(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "*.png"), "-o", str(tmp_path)]) == 2
    assert "no input images" in capsys.readouterr().err


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if anything tries to load the model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(OSEDiffPipeline, "from_pretrained", refuse)


@pytest.mark.parametrize(("flags", "message"), [
    (["{tmp}/missing_folder"], "missing_folder: no such file or folder"),
    (["{tmp}/in", "-s", "0.5"], "--upscale must be a number >= 1, got 0.5"),
    (["{tmp}/in", "--quality", "0"], "--quality must be an integer 1-100, got 0"),
    (["{tmp}/in", "--latent-tile", "32", "--latent-overlap", "32"],
     "--latent-overlap must be 0..31 (below the latent tile of 32), got 32"),
    (["{tmp}/in", "--tile-batch", "0"], "--tile-batch must be an integer >= 1, got 0"),
    (["{tmp}/in", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["{tmp}/in", "--prompt-batch-size", "0"], "--prompt-batch-size must be an integer >= 1"),
    (["{tmp}/in", "--prompts-from", "{tmp}/nowhere"], "--prompts-from {tmp}/nowhere: no such folder"),
    (["{tmp}/in", "--device", "nonsense"], "--device 'nonsense' is not a device"),
])
def test_inputs_and_options_fail_in_one_line_before_any_model_loads(tmp_path, capsys, no_model_loads, flags,
                                                                    message):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    argv = [flag.format(tmp=tmp_path) for flag in flags]
    assert main(["upscale", *argv, "-o", str(tmp_path / "out"), "--prompt-extractor", "text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1


def test_an_output_folder_that_cannot_be_written_fails_before_any_model_loads(tmp_path, capsys, no_model_loads):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("a file, not a folder")
    for output in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert main(["upscale", str(tmp_path / "a.png"), "-o", str(output), "--prompt-extractor", "text"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output {output}") and len(err.strip().splitlines()) == 1


def test_unknown_choices_are_refused_by_the_parser(tmp_path, capsys, no_model_loads):
    for flag, value in (("--prompt-extractor", "dapee"), ("--align", "wavelets"), ("--vae-maps", "gpu")):
        with pytest.raises(SystemExit) as exit_:
            main(["upscale", str(tmp_path), "-o", str(tmp_path), flag, value])
        assert exit_.value.code == 2
        assert f"invalid choice: '{value}'" in capsys.readouterr().err


def test_help_shows_the_defaults_of_the_tile_config(capsys):
    from osediff.pipeline import TileConfig

    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = TileConfig()
    assert defaults.latent_tile is None and defaults.memory_budget is None  # chosen per image, from the memory
    assert "UNet tile in latent pixels (x8 in pixels; default: the fewest even tiles of at most 144 that " \
           "--memory-budget allows)" in text
    assert "(default: auto, 3/4 of the memory available when each stage starts)" in text
    assert f"UNet tiles per forward pass (default: {defaults.tiles_per_pass})" in text
    assert "colour alignment: adain, wavelet, none (default: the preset's, adain for osediff)" in text
    assert "(default: dape)" in text and "(default: None)" not in text


def test_missing_dape_weights_fail_clearly_unless_a_fallback_is_asked(cli, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "a.png")
    assert cli(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--prompt-extractor", "dape", "--offline") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DAPE prompts: ") and err.count("\n") == 1
    assert "ram_swin_large_14m.pth" in err and "DAPE.pth" in err and "--dape <DAPE.pth>" in err
    assert err.rstrip().endswith("(or --prompt-fallback text to go on without the dape files)")
    code = cli(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--prompt-extractor", "dape", "--offline",
               "--prompt-fallback", "text", "--prompt", "grass", "--save-prompts")
    assert code == 0
    assert "warning: prompt extractor 'dape' unavailable" in capsys.readouterr().err
    assert (tmp_path / "o" / "a.txt").read_text() == "grass\n"


def test_processes_share_the_inputs_without_gaps_or_overlap(cli, tmp_path, monkeypatch):
    """What ``accelerate launch -m osediff upscale`` does: each rank takes every WORLD_SIZE-th input."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (50 * i, 20, 90)).save(src / f"im{i}.png")
    written = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        before = set(out.iterdir()) if out.exists() else set()
        assert cli(str(src), "-o", str(out), "-s", "2") == 0
        written.append(sorted(p.name for p in set(out.iterdir()) - before))
    assert written == [["im0.png", "im2.png", "im4.png"], ["im1.png", "im3.png"]]


def test_inputs_that_would_write_the_same_output_fail_instead_of_overwriting(cli, tmp_path, capsys):
    src, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    src.mkdir()
    other.mkdir()
    Image.new("RGB", (8, 8), (200, 20, 20)).save(src / "a.png")
    Image.new("RGB", (8, 8), (20, 200, 20)).save(src / "a.jpg")
    Image.new("RGB", (8, 8), (20, 20, 200)).save(other / "a.png")
    Image.new("RGB", (8, 8), (20, 20, 200)).save(other / "b.png")
    assert cli(str(src), str(other), "-o", str(out), "-s", "2") == 1
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert err.count("is already that of") == 2 and f"{src / 'a.jpg'}" in err and f"{other / 'a.png'}" in err
    # the first input in order (a.jpg, green) keeps its result; neither red nor blue overwrote it
    assert np.asarray(Image.open(out / "a.png")).mean(axis=(0, 1)).argmax() == 1


def test_prompt_extractor_runs_batched_once_per_image(cli, tmp_path, monkeypatch):
    from osediff.prompts import base

    batches = []

    def factory(**_):
        def extract(images, user_prompt=""):
            batches.append([img.size for img in images])
            return [f"tag{len(batches)}, {user_prompt}," for _ in images]

        return extract

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    base.register_prompt_extractor("counting")(factory)
    from osediff.pipeline import Upscaler

    kept = []
    release = Upscaler.release_prompt_models

    def record(upscaler, prompts):
        kept.append(list(prompts))
        release(upscaler, prompts)
        assert upscaler.pipe.text_encoder is None

    monkeypatch.setattr(Upscaler, "release_prompt_models", record)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8 + i, 8), (60 * i, 10, 10)).save(src / f"im{i}.png")
    (src / "im1b.png").write_text("broken")
    assert cli(str(src), "-o", str(out), "-s", "2", "--prompt-extractor", "counting", "--prompt-batch-size", "2",
               "--prompt", "u", "--save-prompts") == 1
    assert batches == [[(16, 16), (18, 16)], [(20, 16)]]  # the broken file is dropped from its batch
    assert kept == [["tag2, u,"]]  # the prompt models are freed once the last chunk's prompts are known
    assert [(out / f"im{i}.txt").read_text() for i in range(3)] == ["tag1, u,\n", "tag1, u,\n", "tag2, u,\n"]
    (out / "im2.txt").unlink()
    out2 = tmp_path / "out2"
    assert cli(str(src / "im[0-2].png"), "-o", str(out2), "-s", "2", "--prompts-from", str(out),
               "--prompt-extractor", "counting") == 1  # im2 has no saved prompt: only it fails
    assert sorted(p.name for p in out2.iterdir()) == ["im0.png", "im1.png"]
    assert len(batches) == 2  # saved prompts: the extractor is not called again
