"""A command whose optional extra is missing says in one line which extra to install, before it starts.

Each test hides one module (``sys.modules[name] = None`` makes its import fail, as if not installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from osediff.cli import main
from osediff.cli.extras import EXTRAS, MissingExtraError, importable, require_extras


@pytest.fixture
def nothing_loads(monkeypatch):
    from osediff.pipeline import OSEDiffPipeline

    monkeypatch.setattr(OSEDiffPipeline, "from_pretrained", pytest.fail)


@pytest.fixture
def folders(tmp_path):
    for name in ("sr", "gt"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (16, 16), (90, 120, 150)).save(tmp_path / name / "a.png")
    return tmp_path


@pytest.mark.parametrize("hidden, argv, message", [
    ("torchvision", ["train", "--config", "{tmp}/train.yaml"],
     "osediff train needs torchvision, which is not installed: pip install 'osediff[train]'"),
    ("yaml", ["train", "--config", "{tmp}/train.yaml"],
     "osediff train needs pyyaml, which is not installed: pip install 'osediff[train]'"),
    ("scipy", ["eval", "--sr", "{tmp}/sr", "--metrics", "niqe"],
     "osediff eval needs scipy, which is not installed: pip install 'osediff[eval]'"),
    ("pyiqa", ["eval", "--sr", "{tmp}/sr", "--gt", "{tmp}/gt", "--metrics", "psnr"],
     "osediff eval needs pyiqa, which is not installed: pip install 'osediff[eval]'"),
    ("cv2", ["eval", "--sr", "{tmp}/sr", "--gt", "{tmp}/gt", "--metrics", "ssim"],
     "osediff eval needs opencv-python-headless, which is not installed: pip install 'osediff[eval]'"),
    ("gradio", ["demo"], "osediff demo needs gradio, which is not installed: pip install 'osediff[demo]'"),
    ("ray", ["serve"], "osediff serve needs ray[serve], which is not installed: pip install 'osediff[serve]'"),
    ("timm", ["upscale", "{tmp}/sr", "-o", "{tmp}/out"],
     "--prompt-extractor dape needs timm, which is not installed: pip install 'osediff[dape]' "
     "(or use --prompt-extractor text)"),
    ("timm", ["upscale", "{tmp}/sr", "-o", "{tmp}/out", "--prompt-extractor", "ram"],
     "--prompt-extractor ram needs timm, which is not installed: pip install 'osediff[dape]' "
     "(or use --prompt-extractor text)"),
    ("timm", ["serve", "--prompt-extractor", "text", "--prompt-extractor", "dape"],
     "--prompt-extractor dape needs timm, which is not installed: pip install 'osediff[dape]' "
     "(or use --prompt-extractor text)"),
])
def test_a_missing_extra_is_named_in_one_line(hidden, argv, message, folders, monkeypatch, capsys, nothing_loads):
    monkeypatch.setitem(sys.modules, hidden, None)
    assert main([arg.format(tmp=folders) for arg in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n" and captured.out == ""
    assert not (folders / "out").exists()


def test_eval_names_the_dape_extra_for_its_upscale_args(folders, monkeypatch, capsys, nothing_loads):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["eval", "--lr", str(folders / "sr"), "--gt", str(folders / "gt"), "--out", str(folders / "report"),
                 "--metrics", "psnr", "--device", "cpu", "--upscale-args", "--prompt-extractor dape"]) == 2
    assert capsys.readouterr().err.endswith("error: --prompt-extractor dape needs timm, which is not installed: "
                                            "pip install 'osediff[dape]' (or use --prompt-extractor text)\n")


def test_saved_prompts_need_no_extractor_extra(folders, monkeypatch, capsys, nothing_loads):
    monkeypatch.setitem(sys.modules, "timm", None)
    # gets past the extras to the model files, which are not there
    main(["upscale", str(folders / "sr"), "-o", str(folders / "out"), "--prompts-from", str(folders / "gt"),
          "--base", str(folders / "nobase"), "--offline", "--device", "cpu"])
    assert "timm" not in capsys.readouterr().err


def test_require_extras_lists_every_missing_package(monkeypatch):
    for module in ("pyiqa", "scipy", "timm"):
        monkeypatch.setitem(sys.modules, module, None)
    assert not importable("pyiqa") and importable("json") and not importable("no_such_module_here")
    with pytest.raises(MissingExtraError) as info:
        require_extras("this", "eval", "dape")
    assert str(info.value) == ("this needs pyiqa, scipy and timm, which are not installed: "
                               "pip install 'osediff[eval,dape]'")
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for extra in EXTRAS:  # the extras named are the package's own
        assert f"\n{extra} = [" in pyproject, extra
