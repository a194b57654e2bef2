"""``osediff eval`` on tiny images made in the test: bad inputs, reports, several methods, metric
selection, metrics that need downloads while offline, NIQE parameters from an sdist, and --lr."""

from __future__ import annotations

import csv
import io
import json
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osediff.cli import main
from osediff.cli.flags import flag_for
from osediff.evaluation import metrics as metrics_module
from osediff.evaluation import runner
from osediff.evaluation.metrics import PAPER_METRICS, MetricUnavailable, resolve_metrics
from osediff.evaluation.niqe_params import NiqeParamsError, find_niqe_params, read_params
from osediff.evaluation.pairing import EvalInputError, UnmatchedNamesError, pair_folders

SIZE = 32


def make_images(folder: Path, names: list[str], seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder


def noisy_copy(src: Path, dst: Path, sigma: float, seed: int) -> Path:
    """A "method" whose results are the ground truth plus noise: less noise, better scores."""
    dst.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for path in sorted(src.iterdir()):
        pixels = np.asarray(Image.open(path), dtype=np.float64) + rng.normal(0, sigma, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8)).save(dst / path.name)
    return dst


@pytest.fixture
def gt(tmp_path) -> Path:
    return make_images(tmp_path / "gt", ["a.png", "b.png", "c.png"], seed=0)


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["eval", *args, "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def psnr_y(sr: Path, gt: Path) -> float:
    """PSNR on BT.601 Y, written out independently of pyiqa (which rounds Y for SSIM, not for PSNR)."""
    def y(path: Path) -> np.ndarray:
        rgb = np.asarray(Image.open(path), dtype=np.float64) / 255
        return 16 + rgb @ np.array([65.481, 128.553, 24.966])

    return float(10 * np.log10(255**2 / np.mean((y(sr) - y(gt)) ** 2)))


# ---------------------------------------------------------------- bad input

def test_unmatched_names_are_listed_in_one_line(tmp_path, gt, capsys):
    sr = make_images(tmp_path / "sr", ["a.png", "b.png", "x.png"], seed=1)
    status, out, err = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "psnr")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {sr}: unmatched file names")
    assert "x.png" in err and "c.png" in err
    assert err.endswith("(pass --ignore-unmatched to evaluate the common names only)\n")
    status, out, err = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "psnr", "--ignore-unmatched")
    assert status == 0 and "sr " in out


def test_size_mismatch_names_the_image_and_both_sizes(tmp_path, gt, capsys):
    sr = make_images(tmp_path / "sr", ["a.png", "c.png"], seed=1)
    make_images(sr, ["b.png"], seed=2, size=(SIZE, SIZE - 2))
    status, _, err = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "psnr")
    assert status == 2 and err.count("\n") == 1
    assert "1 image(s) differ in size" in err and "b.png (32x30 vs 32x32)" in err


@pytest.mark.parametrize("which", ["sr", "gt"])
def test_missing_folder(tmp_path, gt, capsys, which):
    sr = make_images(tmp_path / "sr", ["a.png"], seed=1)
    missing = tmp_path / "nowhere"
    args = ["--sr", str(missing if which == "sr" else sr), "--gt", str(missing if which == "gt" else gt)]
    status, _, err = run_eval(capsys, *args, "--metrics", "psnr")
    role = "result" if which == "sr" else "ground-truth"
    assert status == 2 and err == f"error: {missing}: {role} folder does not exist\n"


def test_undecodable_image_and_duplicate_names(tmp_path, gt, capsys):
    sr = make_images(tmp_path / "sr", ["a.png", "b.png"], seed=1)
    (sr / "c.png").write_text("not an image")
    status, _, err = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "psnr")
    assert status == 2 and err.startswith(f"error: {sr / 'c.png'}: not a readable image")
    (sr / "c.png").unlink()
    make_images(sr, ["c.png", "c.jpg"], seed=3)
    status, _, err = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "psnr")
    assert status == 2 and "c.jpg and c.png have the same name" in err


def test_bad_metric_names_and_missing_ground_truth(tmp_path, gt, capsys):
    status, _, err = run_eval(capsys, "--sr", str(gt), "--gt", str(gt), "--metrics", "psnr,nosuch")
    assert status == 2 and "unknown metric 'nosuch'" in err
    status, _, err = run_eval(capsys, "--sr", str(gt), "--metrics", "psnr,ssim")
    assert status == 2 and err == "error: PSNR, SSIM compare against ground truth: pass --gt DIR\n"
    status, _, err = run_eval(capsys, "--gt", str(gt))
    assert status == 2 and "nothing to evaluate" in err


# ---------------------------------------------------------------- reports

def test_several_methods_one_table_and_all_report_files(tmp_path, gt, capsys):
    good = noisy_copy(gt, tmp_path / "good", sigma=2, seed=1)
    bad = noisy_copy(gt, tmp_path / "bad", sigma=20, seed=2)
    out = tmp_path / "report"
    status, stdout, err = run_eval(capsys, "--sr", str(bad), str(good), "--gt", str(gt), "--metrics", "psnr,ssim",
                                   "--out", str(out))
    assert status == 0, err
    lines = stdout.splitlines()
    assert lines[0].split() == ["Method", "PSNR↑", "SSIM↑"] and [ln.split()[0] for ln in lines[2:4]] == ["bad", "good"]
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "summary.json", "table.md"]  # no temp files

    with (out / "per_image.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = ("a.png", "b.png", "c.png")
    assert [(r["method"], r["image"]) for r in rows] == [(m, n) for m in ("bad", "good") for n in names]
    for row in rows:
        expected = psnr_y(tmp_path / row["method"] / row["image"], gt / row["image"])
        # pyiqa computes Y in float32: at 47 dB that moves PSNR by ~2e-3 dB; RGB PSNR would be ~1 dB off
        assert float(row["psnr"]) == pytest.approx(expected, abs=0.01)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["bad", "good"] and summary["skipped"] == {}
    assert summary["metrics"]["psnr"]["options"] == {"test_y_channel": True, "color_space": "ycbcr"}
    good_mean = summary["methods"]["good"]["mean"]
    assert good_mean["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows if r["method"] == "good"]))
    assert good_mean["psnr"] > summary["methods"]["bad"]["mean"]["psnr"] + 10
    assert 0.9 < good_mean["ssim"] <= 1

    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| Method | PSNR↑ | SSIM↑ |"
    assert table[3] == f"| good | **{good_mean['psnr']:.4f}** | **{good_mean['ssim']:.4f}** |"  # best in bold
    assert "**" not in table[2]


def test_metrics_flag_selects_and_orders_columns(tmp_path, gt, capsys):
    sr = noisy_copy(gt, tmp_path / "sr", sigma=5, seed=1)
    out = tmp_path / "report"
    status, stdout, _ = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "ssim,psnr", "--out", str(out))
    assert status == 0 and stdout.splitlines()[0].split() == ["Method", "SSIM↑", "PSNR↑"]
    assert (out / "per_image.csv").read_text().splitlines()[0] == "method,image,ssim,psnr"
    assert [s.name for s in resolve_metrics("paper")] == list(PAPER_METRICS)
    assert [s.name for s in resolve_metrics("PSNR, psnr,niqe")] == ["psnr", "niqe"]


def test_no_reference_metric_without_ground_truth(tmp_path, gt, capsys):
    # pyiqa's entropy is computed from code alone, so this needs no download
    status, stdout, err = run_eval(capsys, "--sr", str(gt), "--metrics", "entropy")
    assert status == 0, err
    heading, _, row = stdout.splitlines()
    assert heading.split() == ["Method", "ENTROPY↑"] and 7 < float(row.split()[1]) <= 8


# ---------------------------------------------------------------- offline

@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached metric weights anywhere, whatever this machine has downloaded before."""
    import pyiqa.utils.download_util as pyiqa_download

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pyiqa_download, "DEFAULT_CACHE_DIR", str(tmp_path / "torch" / "hub" / "pyiqa"))
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "osediff-cache"))
    monkeypatch.delenv("OSEDIFF_NIQE_PARAMS", raising=False)


def test_metrics_needing_downloads_are_skipped_offline(tmp_path, gt, capsys, monkeypatch, empty_caches):
    lookups: list[str] = []

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    sr = noisy_copy(gt, tmp_path / "sr", sigma=5, seed=1)
    out = tmp_path / "report"
    status, stdout, err = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "lpips,psnr,niqe",
                                   "--out", str(out))
    assert status == 0 and lookups  # it did try, and failed like an offline machine does
    assert stdout.splitlines()[0].split() == ["Method", "PSNR↑"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == ["skipped LPIPS", "skipped NIQE"]
    assert "weights not cached here" in skipped[0] and "pip download --no-deps basicsr==1.4.2" in skipped[1]
    assert skipped[1].endswith("or pass the .tar.gz as --niqe-params / $OSEDIFF_NIQE_PARAMS")
    reasons = json.loads((out / "summary.json").read_text())["skipped"]
    assert set(reasons) == {"lpips", "niqe"} and f"skipped {reasons['niqe']}" == skipped[1]


def test_offline_flag_never_touches_the_network(tmp_path, gt, capsys, monkeypatch, empty_caches):
    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: lookups.append(host))
    status, _, err = run_eval(capsys, "--sr", str(gt), "--gt", str(gt), "--metrics", "lpips", "--offline")
    assert status == 1 and lookups == []
    assert "skipped LPIPS: weights not cached here and downloads are off" in err
    assert err.splitlines()[-1] == "error: no metric could be computed (reasons above)"


def test_one_failed_download_switches_the_rest_offline(monkeypatch):
    """The hub client retries for about a minute per file; after one failure we don't wait again."""
    calls: list[tuple[str, bool]] = []

    def fake_load(spec, device, *, offline=False, niqe_params=None):
        calls.append((spec.name, offline))
        try:
            raise OSError("[Errno -2] Name or service not known") from socket.gaierror(-2, "no DNS")
        except OSError as err:
            raise MetricUnavailable(f"{spec.label}: download failed") from err

    monkeypatch.setattr(runner, "load_metric", fake_load)
    loaded, skipped = runner._load_all(resolve_metrics("lpips,musiq,maniqa"), True, runner.EvalOptions(),
                                       note=lambda line: None)
    assert loaded == [] and list(skipped) == ["lpips", "musiq", "maniqa"]
    assert calls == [("lpips", False), ("musiq", True), ("maniqa", True)]


# ---------------------------------------------------------------- arguments, not flags

def test_library_messages_name_arguments_and_the_cli_flags(tmp_path, gt):
    """Python callers read the argument's name; osediff eval words the same error with its flag."""
    sr = make_images(tmp_path / "sr", ["a.png", "x.png"], seed=1)
    with pytest.raises(UnmatchedNamesError) as info:
        pair_folders(sr, gt)
    err = info.value
    assert isinstance(err, EvalInputError) and err.argument == "ignore_unmatched"
    assert str(err).startswith(f"{sr}: unmatched file names: ")
    assert str(err).endswith("(pass ignore_unmatched to evaluate the common names only)")
    assert err.message(flag_for).endswith("(pass --ignore-unmatched to evaluate the common names only)")
    again = pickle.loads(pickle.dumps(err))  # the fields, and the hint's place, survive another process
    assert type(again) is UnmatchedNamesError and str(again) == str(err)
    assert again.message(flag_for) == err.message(flag_for)
    assert [p.name for p in pair_folders(sr, gt, ignore_unmatched=True)] == ["a.png"]

    niqe = MetricUnavailable("NIQE: download failed", argument="niqe_params")
    assert str(niqe).startswith("NIQE: download failed; or pip download --no-deps basicsr==1.4.2 -d ")
    assert str(niqe).endswith("or pass the .tar.gz as niqe_params / $OSEDIFF_NIQE_PARAMS")
    assert niqe.message(flag_for).endswith("or pass the .tar.gz as --niqe-params / $OSEDIFF_NIQE_PARAMS")
    assert pickle.loads(pickle.dumps(niqe)).message(flag_for) == niqe.message(flag_for)
    assert str(MetricUnavailable("LPIPS: download failed")) == "LPIPS: download failed"

    psnr = resolve_metrics("psnr")
    _, skipped = runner._load_all(psnr, False, runner.EvalOptions(), note=lambda line: None)
    assert skipped == {"psnr": "PSNR: needs ground truth (gt)"}
    _, skipped = runner._load_all(psnr, False, runner.EvalOptions(name_of=flag_for), note=lambda line: None)
    assert skipped == {"psnr": "PSNR: needs ground truth (--gt)"}


# ---------------------------------------------------------------- NIQE parameters

def fake_sdist(path: Path, mu: np.ndarray, cov: np.ndarray, member="basicsr/metrics/niqe_pris_params.npz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, mu_pris_param=mu, cov_pris_param=cov, gaussian_window=np.ones((7, 7)))
    data = buffer.getvalue()
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(f"basicsr-9.9/{member}")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_niqe_parameters_from_an_sdist_in_the_cache(tmp_path, empty_caches):
    import scipy.io

    rng = np.random.default_rng(0)
    mu, basis = rng.normal(size=(1, 36)), rng.normal(size=(36, 36))
    cov = basis @ basis.T
    assert find_niqe_params() == (None, "pyiqa download")
    fake_sdist(tmp_path / "osediff-cache" / "basicsr-9.9.tar.gz", mu, cov)
    path, source = find_niqe_params()
    assert path == tmp_path / "osediff-cache" / "niqe" / "niqe_modelparameters.mat" and "converted from" in source
    mat = scipy.io.loadmat(path)
    np.testing.assert_array_equal(mat["mu_prisparam"].ravel(), mu.ravel())
    np.testing.assert_array_equal(mat["cov_prisparam"], cov)
    assert find_niqe_params()[1].startswith("osediff cache")  # converted once, then reused


def test_bad_niqe_parameter_files_are_refused(tmp_path, gt, capsys, empty_caches):
    wrong_shape = fake_sdist(tmp_path / "a.tar.gz", np.zeros((1, 18)), np.eye(18))
    with pytest.raises(NiqeParamsError, match="expected a 36-vector"):
        read_params(wrong_shape)
    with pytest.raises(NiqeParamsError, match=r"no basicsr/metrics/niqe_pris_params\.npz inside"):
        read_params(fake_sdist(tmp_path / "b.tar.gz", np.zeros(36), np.eye(36), member="other.npz"))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu_pris_param=np.array([object()], dtype=object), cov_pris_param=np.eye(36))
    with pytest.raises(NiqeParamsError, match=r"not a readable \.npz"):
        read_params(pickled)  # object arrays need pickle, which we never load
    # through the command: NIQE is skipped with the reason, PSNR still runs
    status, stdout, err = run_eval(capsys, "--sr", str(gt), "--gt", str(gt), "--metrics", "psnr,niqe",
                                   "--niqe-params", str(wrong_shape))
    assert status == 0 and stdout.splitlines()[0].split() == ["Method", "PSNR↑"]
    assert f"skipped NIQE: {wrong_shape}: expected a 36-vector" in err


def test_metric_metadata_matches_pyiqa():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    for spec in PAPER_METRICS.values():
        config = DEFAULT_CONFIGS[spec.pyiqa_name]
        assert spec.lower_better == bool(config.get("lower_better", False)), spec.name
        assert spec.needs_reference == (config["metric_mode"] == "FR") or spec.per_folder, spec.name
    assert metrics_module.spec_for("topiq_nr").needs_reference is False


# ---------------------------------------------------------------- --lr: run the model first

def test_lr_folder_is_upscaled_then_scored_next_to_other_methods(tmp_path, gt, capsys, tiny_base_dir, tiny_pkl):
    lr = make_images(tmp_path / "lr", ["a.png", "b.png", "c.png"], seed=5, size=(SIZE // 4, SIZE // 4))
    other = noisy_copy(gt, tmp_path / "bicubic", sigma=10, seed=1)
    out = tmp_path / "report"
    status, stdout, err = run_eval(capsys, "--lr", str(lr), "--sr", str(other), "--gt", str(gt), "--metrics", "psnr",
                                   "--base", str(tiny_base_dir), "--weights", str(tiny_pkl), "--out", str(out),
                                   "--upscale-args", "--prompt 'a photo' --prompt-extractor text")
    assert status == 0, err
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["a.png", "b.png", "c.png"]
    table = stdout[stdout.index("Method"):].splitlines()  # after the upscale command's own summary line
    assert [ln.split()[0] for ln in table[2:4]] == ["osediff", "bicubic"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["osediff"]["folder"] == str(out / "sr") and summary["methods"]["osediff"]["images"] == 3
    expected = np.mean([psnr_y(out / "sr" / n, gt / n) for n in ("a.png", "b.png", "c.png")])
    assert summary["methods"]["osediff"]["mean"]["psnr"] == pytest.approx(expected, abs=0.01)


def test_lr_needs_somewhere_to_put_results_and_reports_upscale_failures(tmp_path, gt, capsys, tiny_base_dir):
    lr = make_images(tmp_path / "lr", ["a.png"], seed=5, size=(8, 8))
    status, _, err = run_eval(capsys, "--lr", str(lr), "--gt", str(gt), "--metrics", "psnr")
    assert status == 2 and "--lr needs --sr-out DIR or --out DIR" in err
    status, _, err = run_eval(capsys, "--lr", str(lr), "--gt", str(gt), "--metrics", "psnr", "--sr-out",
                              str(tmp_path / "sr"), "--base", str(tiny_base_dir), "--weights",
                              str(tmp_path / "missing.pkl"), "--offline")
    assert status != 0 and err.strip().splitlines()[-1].startswith("error:")


def test_folder_level_metric_goes_in_the_table_not_the_csv(tmp_path, gt, capsys, monkeypatch):
    """FID's weights can't be fetched here, so a stand-in exercises the folder-vs-folder path."""
    real_load = runner.load_metric
    seen: list[tuple[Path, Path]] = []

    def load(spec, device, **kwargs):
        if spec.name != "fid":
            return real_load(spec, device, **kwargs)
        return metrics_module.LoadedMetric(spec, lambda sr, ref: seen.append((sr, ref)) or 12.5, "stand-in")

    monkeypatch.setattr(runner, "load_metric", load)
    sr = noisy_copy(gt, tmp_path / "sr", sigma=5, seed=1)
    out = tmp_path / "report"
    status, stdout, _ = run_eval(capsys, "--sr", str(sr), "--gt", str(gt), "--metrics", "psnr,fid", "--out", str(out))
    assert status == 0 and seen == [(sr, gt)]
    assert stdout.splitlines()[0].split() == ["Method", "PSNR↑", "FID↓"] and stdout.splitlines()[2].endswith("12.5000")
    assert (out / "per_image.csv").read_text().splitlines()[0] == "method,image,psnr"
    assert json.loads((out / "summary.json").read_text())["methods"]["sr"]["mean"]["fid"] == 12.5


def test_same_folder_names_get_their_parent_s_name(tmp_path, gt, capsys):
    first = noisy_copy(gt, tmp_path / "a" / "results", sigma=5, seed=1)
    second = noisy_copy(gt, tmp_path / "b" / "results", sigma=5, seed=2)
    status, stdout, _ = run_eval(capsys, "--sr", str(first), str(second), "--gt", str(gt), "--metrics", "psnr")
    assert status == 0 and [ln.split()[0] for ln in stdout.splitlines()[2:]] == ["a/results", "b/results"]
    status, _, err = run_eval(capsys, "--sr", str(first), str(second), "--gt", str(gt), "--names", "x")
    assert status == 2 and "--names gives 1 names for 2 --sr folders" in err
