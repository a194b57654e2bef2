"""The output folder is checked before anything loads but made only by the first output: a run that
fails before writing an image leaves no empty folder behind."""

from __future__ import annotations

import pytest
from PIL import Image

from osediff.batch import BatchConfig, BatchConfigError, validate
from osediff.batch.config import check_writable_folder
from osediff.cli import main
from osediff.cli.flags import flag_for
from osediff.params import UpscaleParams


@pytest.fixture
def image(tmp_path):
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "a.png")
    return tmp_path / "a.png"


def test_a_run_that_fails_before_any_output_leaves_no_folder(image, tmp_path, capsys):
    out = tmp_path / "out" / "deeper"
    assert main(["upscale", str(image), "-o", str(out), "--base", str(tmp_path / "nobase"), "--offline",
                 "--device", "cpu", "--prompt-extractor", "text"]) == 2
    assert "nobase" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_input_unreadable_leaves_no_folder_and_a_good_run_makes_it(tiny_base_dir, tiny_pkl, image, tmp_path,
                                                                          capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not an image")
    model = ["--base", str(tiny_base_dir), "--weights", str(tiny_pkl), "--device", "cpu", "--prompt-extractor", "text",
             "-s", "2"]
    out = tmp_path / "out" / "deeper"
    assert main(["upscale", str(broken), "-o", str(out), *model]) == 1
    assert "not an image file" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["upscale", str(image), "-o", str(out), *model]) == 0
    assert [p.name for p in out.iterdir()] == ["a.png"]


def test_the_check_makes_nothing_and_refuses_what_cannot_be_a_folder(tmp_path):
    check_writable_folder(tmp_path / "new" / "sub")
    check_writable_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("a file")
    for folder, problem in [(tmp_path / "file", "exists and is not a folder"),
                            (tmp_path / "file" / "sub" / "deeper", f"{tmp_path / 'file'} exists and is not a folder")]:
        with pytest.raises(BatchConfigError) as info:
            check_writable_folder(folder)
        assert info.value.message(flag_for) == f"--output {folder}: {problem}"


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    def refuse(*args, dir=None, **kwargs):  # as on a read-only mount, or for a user without write access
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("osediff.batch.config.tempfile.TemporaryFile", refuse)
    with pytest.raises(BatchConfigError) as info:
        check_writable_folder(tmp_path / "new")
    assert info.value.message(flag_for) == f"--output {tmp_path / 'new'}: cannot write there ({tmp_path}: " \
                                           "Permission denied)"
    assert not (tmp_path / "new").exists()


def test_the_ray_engine_checks_local_and_file_uri_outputs_the_same_way(image, tmp_path):
    def config(output) -> BatchConfig:
        return BatchConfig(inputs=[str(image)], output=output, params=UpscaleParams(upscale=2))

    validate(config(f"file://{tmp_path}/ray-out"), remote_ok=True)
    validate(config(tmp_path / "local-out"), remote_ok=True)
    validate(config("s3://bucket/out"), remote_ok=True)  # remote: each writer checks its own
    assert not (tmp_path / "ray-out").exists() and not (tmp_path / "local-out").exists()
    image.with_name("file").write_text("a file")
    with pytest.raises(BatchConfigError, match="exists and is not a folder"):
        validate(config(f"file://{tmp_path}/file/sub"), remote_ok=True)
