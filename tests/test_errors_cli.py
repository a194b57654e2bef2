"""One base for user-facing errors, handled in one place by the CLI; --debug, --version and help texts."""

from __future__ import annotations

import argparse

import pytest

from osediff import __version__
from osediff.checkpoint import CheckpointError, ModelNotFoundError
from osediff.cli import HelpFormatter, build_parser, main
from osediff.cli.flags import flag_for
from osediff.demo.uploads import DemoInputError
from osediff.errors import OSEDiffError
from osediff.evaluation.downloads import DownloadsDisabledError
from osediff.evaluation.metrics import MetricUnavailable
from osediff.evaluation.niqe_params import NiqeParamsError
from osediff.images import ImageLoadError
from osediff.prompts import UnknownPromptExtractorError


@pytest.mark.parametrize("cls, old_base", [
    (ModelNotFoundError, RuntimeError), (CheckpointError, ValueError), (DemoInputError, ValueError),
    (NiqeParamsError, ValueError), (MetricUnavailable, RuntimeError), (DownloadsDisabledError, ConnectionError),
    (ImageLoadError, ValueError), (UnknownPromptExtractorError, ValueError),
])
def test_user_facing_errors_derive_from_osediff_error(cls, old_base):
    assert issubclass(cls, OSEDiffError) and issubclass(cls, old_base)  # old except clauses still catch them


def test_cli_prints_an_osediff_error_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.pkl"
    assert main(["convert", str(missing), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["--debug", "convert", str(missing), str(tmp_path / "out.safetensors")]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["convert", str(missing), str(tmp_path / "out.safetensors"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_names_flags_where_the_library_names_arguments(monkeypatch, capsys):
    def missing_base(*args, **kwargs):
        from osediff.checkpoint import resolve_base

        resolve_base("./no-such-sd21")

    monkeypatch.setattr("osediff.checkpoint.convert_weights", missing_base)
    assert main(["convert", "a.pkl", "b.safetensors"]) == 2
    assert capsys.readouterr().err == ("error: ./no-such-sd21: folder not found; "
                                       "pass --base <diffusers folder or hub id>\n")


def test_other_exceptions_keep_their_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("internal bug")

    monkeypatch.setattr("osediff.checkpoint.convert_weights", bug)
    with pytest.raises(KeyError, match="internal bug"):
        main(["convert", "a.pkl", "b.safetensors"])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"osediff {__version__}"


def test_help_shows_defaults_and_no_markup():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, name
        formatter = HelpFormatter(name)
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action).lower(), (name, action.dest)


@pytest.mark.parametrize("argv, expected", [
    (["eval", "--sr", "a", "b", "--names", "x", "--metrics", "psnr"], "--names gives 1 names for 2 --sr folders"),
    (["eval", "--sr", "a", "--metrics", "nosuchmetric"], "unknown metric 'nosuchmetric'"),
    (["eval", "--sr", "a", "--metrics", "psnr", "--device", "cuda:7"], "CUDA is not available"),
    (["eval", "--sr", "a", "--metrics", "psnr", "--device", "toaster"], "--device 'toaster' is not a device"),
])
def test_sub_commands_leave_user_errors_to_the_one_handler(argv, expected, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err


def test_pipeline_argument_errors_are_user_errors():
    from osediff.device import DeviceError, DtypeError
    from osediff.pipeline import PipelineInputError, PromptNotEncodedError
    from osediff.serve.app import ScalingError, parse_autoscale

    for cls, old_base in [(PipelineInputError, ValueError), (PromptNotEncodedError, RuntimeError),
                          (DeviceError, RuntimeError), (DtypeError, ValueError), (ScalingError, ValueError)]:
        assert issubclass(cls, OSEDiffError) and issubclass(cls, old_base)
    with pytest.raises(ScalingError, match=r"^autoscale MIN:MAX needs") as info:
        parse_autoscale("3:1")
    assert info.value.message(flag_for).startswith("--autoscale MIN:MAX needs")
