"""``osediff compare``: pairing by file name, the grid's geometry, the zoom boxes, and every mismatch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from osediff.cli import main
from osediff.cli.flags import flag_for
from osediff.errors import OSEDiffError
from osediff.evaluation.compare import (
    BOX_COLOUR,
    GAP,
    TITLE_HEIGHT,
    CompareError,
    auto_crop,
    compare_folders,
    pair_images,
    parse_crop,
)
from osediff.evaluation.pairing import EvalInputError, pair_folders

NAMES = ("a", "b")


@pytest.fixture
def folders(tmp_path):
    """lq (16x16), two methods and gt (64x64), flat grey so the red box is the only red there is."""
    dirs = {name: tmp_path / name for name in ("lq", "m1", "m2", "gt")}
    for key, folder in dirs.items():
        folder.mkdir()
        for i, name in enumerate(NAMES):
            size = 16 if key == "lq" else 64
            Image.new("RGB", (size, size), (100 + 20 * i, 100, 100)).save(folder / f"{name}.png")
    return dirs


def test_grid_is_rows_by_columns_of_panels(folders):
    panel, zoom = 64, 2.0
    grid = compare_folders(folders["lq"], [folders["m1"], folders["m2"]], folders["gt"], zoom=zoom,
                           panel_width=panel, row_labels=False)
    cols, rows = 4, len(NAMES)  # bicubic, m1, m2, HQ
    # a panel: the 64x64 full view, a gap, then the auto crop (panel/zoom = 32 px) at 2x = 64 px
    panel_height = 64 + GAP + 64
    assert grid.size == (GAP + cols * (panel + GAP), TITLE_HEIGHT + GAP + rows * (panel_height + GAP))


def test_zoom_box_is_drawn_on_full_view_and_crop(folders):
    grid = compare_folders(folders["lq"], [folders["m1"]], folders["gt"], crop="8,8,16,16", zoom=2,
                           panel_width=64, row_labels=False)
    pixels = np.asarray(grid)
    red = np.all(pixels == BOX_COLOUR, axis=-1)
    x0, y0 = GAP, TITLE_HEIGHT + GAP  # first panel's corner
    assert red[y0 + 8, x0 + 8 : x0 + 24].all()  # top edge of the box on the full view
    assert red[y0 + 8 : y0 + 24, x0 + 8].all()  # its left edge
    assert not red[y0 + 30, x0 + 30]  # nothing red outside the box
    crop_top = y0 + 64 + GAP  # the 16x16 crop at 2x is 32x32, centred in the 64 px panel
    assert red[crop_top, x0 + 16 : x0 + 48].all()
    assert red.sum() > 3 * 4 * 16  # a box in every column


def test_column_titles_and_names(folders):
    with pytest.raises(CompareError, match="2 names for 1 method folders"):
        compare_folders(folders["lq"], [folders["m1"]], names=["x", "y"])
    grid = compare_folders(folders["lq"], [folders["m1"]], names=["Ours"], panel_width=32, limit=1)
    assert grid.height < TITLE_HEIGHT + 2 * (32 + GAP + 32 + GAP)  # --limit 1: one row


def test_unmatched_names_are_errors(folders):
    (folders["m2"] / "b.png").unlink()
    (folders["m2"] / "c.png").write_bytes((folders["m1"] / "a.png").read_bytes())
    with pytest.raises(CompareError, match=r"m2: 1 of 2 images have no match by file name \(missing: b\)"):
        pair_images(folders["lq"], [folders["m1"], folders["m2"]])
    with pytest.raises(CompareError, match="no image named zzz"):
        pair_images(folders["lq"], [folders["m1"]], select=["zzz"])
    rows = pair_images(folders["lq"], [folders["m1"]], folders["gt"], select=["b.png", "a"])
    assert [r.name for r in rows] == ["b", "a"] and rows[0].gt == folders["gt"] / "b.png"


def test_ambiguous_and_wrong_shapes(folders):
    Image.new("RGB", (64, 64)).save(folders["m1"] / "a.jpg")
    with pytest.raises(CompareError, match=r"both a\.jpg and a\.png"):
        pair_images(folders["lq"], [folders["m1"]])
    (folders["m1"] / "a.jpg").unlink()
    Image.new("RGB", (64, 32)).save(folders["m2"] / "a.png")
    with pytest.raises(CompareError, match="64x32 does not match 64x64"):
        compare_folders(folders["lq"], [folders["m1"], folders["m2"]], folders["gt"])
    with pytest.raises(CompareError, match="lies outside"):
        compare_folders(folders["lq"], [folders["m1"]], crop="60,60,16,16")


def test_hidden_temp_files_of_atomic_writes_are_not_paired(folders):
    """A write still running leaves a hidden temp file beside the images: listed, it would be an LQ
    image with no match in the method folders, or a result with no ground truth."""
    for key in ("lq", "m1"):
        Image.new("RGB", (16, 16)).save(folders[key] / ".x.AbCd.png")
    assert [r.name for r in pair_images(folders["lq"], [folders["m1"]], folders["gt"])] == list(NAMES)
    assert [p.name for p in pair_folders(folders["m1"], folders["gt"])] == ["a.png", "b.png"]


def test_folder_errors_are_user_facing_and_name_the_role(folders, tmp_path):
    with pytest.raises(CompareError, match="missing: LQ folder does not exist") as err:
        pair_images(tmp_path / "missing", [folders["m1"]])
    assert isinstance(err.value, OSEDiffError)
    with pytest.raises(OSEDiffError, match="no images in the method folder"):
        pair_images(folders["lq"], [tmp_path])
    with pytest.raises(EvalInputError, match="ground-truth folder does not exist") as err:
        pair_folders(folders["m1"], tmp_path / "missing")
    assert isinstance(err.value, OSEDiffError)


def test_parse_crop_and_auto_crop():
    assert parse_crop("auto") is None
    assert parse_crop("1,2,3,4") == (1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,5"):
        with pytest.raises(CompareError):
            parse_crop(bad)
    image = np.full((64, 64, 3), 128, np.uint8)
    image[40:56, 8:24] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))  # the only texture
    assert auto_crop(Image.fromarray(image), 16) == (8, 40, 16, 16)


@pytest.mark.parametrize(("call", "argument", "python", "cli"), [
    (lambda f: parse_crop("1,2,3"), "crop", "crop must be 'auto' or x,y,w,h in integers, got '1,2,3'",
     "--crop must be 'auto' or x,y,w,h in integers, got '1,2,3'"),
    (lambda f: parse_crop("0,0,0,5"), "crop", "crop '0,0,0,5': needs x, y >= 0 and w, h > 0",
     "--crop '0,0,0,5': needs x, y >= 0 and w, h > 0"),
    (lambda f: compare_folders(f["lq"], [f["m1"]], zoom=0), "zoom", "zoom must be positive, got 0",
     "--zoom must be positive, got 0"),
    (lambda f: compare_folders(f["lq"], [f["m1"]], crop="60,60,16,16"), "crop",
     "crop (60, 60, 16, 16) lies outside a (64x64)", "--crop (60, 60, 16, 16) lies outside a (64x64)"),
    (lambda f: compare_folders(f["lq"], [f["m1"]], names=["x", "y"]), "names",
     "names gives 2 names for 1 method folders", "--names gives 2 names for 1 method folders"),
])
def test_errors_name_the_argument_and_the_cli_its_flag(folders, call, argument, python, cli):
    with pytest.raises(CompareError) as info:
        call(folders)
    err = info.value
    assert err.argument == argument and str(err) == python and err.message(flag_for) == cli
    again = pickle.loads(pickle.dumps(err))  # the fields survive a trip to another process
    assert type(again) is CompareError and (again.argument, again.problem, str(again)) == (argument, err.problem,
                                                                                        python)


def test_cli(folders, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["compare", str(folders["lq"]), str(folders["m1"]), "--gt", str(folders["gt"]), "-o", str(out),
                 "--names", "OSEDiff", "--zoom", "2", "--panel-width", "64"]) == 0
    with Image.open(out) as grid:
        assert grid.width > GAP + 3 * (64 + GAP)  # three columns plus the row names on the left
        assert grid.height == TITLE_HEIGHT + GAP + 2 * (64 + GAP + 64 + GAP)
    (folders["m1"] / "a.png").unlink()
    assert main(["compare", str(folders["lq"]), str(folders["m1"]), "-o", str(out)]) == 2
    assert "no match by file name (missing: a)" in capsys.readouterr().err
    # the command names its flags where the library names arguments
    assert main(["compare", str(folders["lq"]), str(folders["gt"]), "-o", str(out), "--zoom", "0"]) == 2
    assert capsys.readouterr().err == "error: --zoom must be positive, got 0.0\n"
    assert main(["compare", str(folders["lq"]), str(folders["gt"]), "-o", str(out), "--crop", "1,2"]) == 2
    assert "error: --crop must be 'auto' or x,y,w,h" in capsys.readouterr().err
