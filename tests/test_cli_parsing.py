"""How the command line reads what it is given: whole option names only, typos answered with a suggestion
by the sub-command they were given to, messages that name flags, and the same ``--names`` everywhere."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from PIL import Image

from osediff.cli import build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


@pytest.fixture
def no_model_loads(monkeypatch):
    from osediff.pipeline import OSEDiffPipeline

    monkeypatch.setattr(OSEDiffPipeline, "from_pretrained", pytest.fail)


@pytest.fixture
def image_dir(tmp_path) -> Path:
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    return tmp_path / "in"


def parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# -- no abbreviations -------------------------------------------------------------------------------

def test_no_parser_accepts_abbreviations():
    parsers = list(all_parsers(build_parser()))
    from osediff.cli import COMMANDS

    # the top level, one per command, and the nested ones of `osediff models` (download, list)
    assert len(parsers) == 1 + len(COMMANDS) + 2 and all(p.allow_abbrev is False for p in parsers)


def test_every_parser_in_the_sources_says_allow_abbrev_false():
    # the text itself, so that a parser made outside build_parser (eval's for --upscale-args) counts too
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        made = len(re.findall(r"ArgumentParser\(|add_parser\(", text))
        assert text.count("allow_abbrev=False") >= made, path


@pytest.mark.parametrize("argv, unknown, meant", [
    (["--tile", "3"], "--tile", "--tile-batch"),  # was taken as --tile-batch 3
    (["--upscal", "2"], "--upscal", "--upscale"),  # was taken as --upscale 2
])
def test_a_prefix_of_an_option_is_not_that_option(argv, unknown, meant, tmp_path, capsys, no_model_loads):
    err = parse_error(["upscale", str(tmp_path), "-o", str(tmp_path / "out"), *argv], capsys)
    assert err.startswith("usage: osediff upscale ")
    assert f"error: unrecognized arguments: {unknown} (did you mean {meant}?)" in err
    assert not (tmp_path / "out").exists()


def test_upscale_args_of_eval_take_no_abbreviations_either(tmp_path, capsys, no_model_loads):
    (tmp_path / "lr").mkdir()
    (tmp_path / "gt").mkdir()
    status = main(["eval", "--lr", str(tmp_path / "lr"), "--gt", str(tmp_path / "gt"), "--out", str(tmp_path / "out"),
                   "--metrics", "psnr", "--device", "cpu", "--upscale-args", "--tile 3"])
    err = capsys.readouterr().err
    assert status == 2 and "unrecognized arguments: --tile (did you mean --tile-batch?) 3" in err, err


# -- typos: the sub-command's usage and a suggestion --------------------------------------------------

def test_a_misspelt_option_gets_the_sub_commands_usage_and_a_suggestion(capsys):
    err = parse_error(["upscale", "in", "-o", "out", "--promt-extractor", "text"], capsys)
    assert err.startswith("usage: osediff upscale [-h] -o OUTPUT")
    assert "osediff upscale: error: unrecognized arguments: --promt-extractor (did you mean --prompt-extractor?)" \
        in err
    err = parse_error(["eval", "--sr", "a", "--metircs", "psnr"], capsys)
    assert err.startswith("usage: osediff eval ") and "--metircs (did you mean --metrics?)" in err
    err = parse_error(["demo", "--sahre"], capsys)  # an option with no value, and the --name=value form
    assert "unrecognized arguments: --sahre (did you mean --share?)" in err
    err = parse_error(["upscale", "in", "-o", "out", "--formatt=png"], capsys)
    assert "unrecognized arguments: --formatt=png (did you mean --format?)" in err
    err = parse_error(["upscale", "in", "-o", "out", "--zzzzzz"], capsys)  # nothing near: no suggestion
    assert err.rstrip().endswith("error: unrecognized arguments: --zzzzzz")


def test_a_misspelt_sub_command_or_choice_gets_a_suggestion(capsys):
    err = parse_error(["upscal", "in"], capsys)
    assert err.startswith("usage: osediff [-h]")
    assert "error: argument COMMAND: invalid choice: 'upscal' (did you mean 'upscale'?)" in err
    err = parse_error(["upscale", "in", "-o", "out", "--prompt-extractor", "dapee"], capsys)
    assert err.startswith("usage: osediff upscale ") and "invalid choice: 'dapee' (did you mean 'dape'?)" in err
    err = parse_error(["nothing-like-it"], capsys)
    assert "invalid choice: 'nothing-like-it' (choose from 'upscale'," in err


# -- messages name flags -----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--tile-batch", "0"], "--tile-batch must be an integer >= 1, got 0"),
    (["--latent-tile", "3"], "--latent-tile must be above the --latent-overlap of 32 (or pass a smaller "
                             "--latent-overlap), got 3"),
    (["--latent-tile", "32", "--latent-overlap", "40"], "--latent-overlap must be 0..31 (below the latent tile of "
                                                         "32), got 40"),
    (["--latent-overlap", "100"], "--latent-overlap must be 0..71 (below half the largest automatic tile, 144; or "
                                  "pass a latent tile), got 100"),
    (["--latent-tile", "0"], "--latent-tile must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--quality", "0"], "--quality must be an integer 1-100, got 0"),
    (["--prompt-batch-size", "0"], "--prompt-batch-size must be an integer >= 1, got 0"),
])
def test_upscale_messages_name_the_flags(flags, message, image_dir, tmp_path, capsys, no_model_loads):
    assert main(["upscale", str(image_dir), "-o", str(tmp_path / "out"), "--prompt-extractor", "text", *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_other_commands_name_their_flags_and_positionals(tmp_path, capsys, no_model_loads):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    grid = str(tmp_path / "grid.png")
    cases = [
        (["convert", str(tmp_path / "osediff.pkl"), str(tmp_path / "w.bin")],
         f"DST {tmp_path / 'w.bin'}: must end in .safetensors (ours) or .pkl (the authors' format), which picks "
         "the format"),
        (["compare", str(folder), str(folder), "-o", grid, "--panel-width", "0"],
         "--panel-width must be at least 16 (pixels), got 0"),
        (["compare", str(folder), str(folder), "-o", grid, "--limit", "-1"], "--limit must be at least 1, got -1"),
        (["compare", str(folder), str(folder), "-o", str(tmp_path / "grid.bin")],
         f"--output {tmp_path / 'grid.bin'}: not an image file name; end it in .png, .jpg or .webp"),
    ]
    pytest.importorskip("gradio")  # the demo's own flags are checked once its extra is there
    cases += [(["demo", "--concurrency", "0"], "--concurrency must be at least 1, got 0"),
              (["demo", "--queue-size", "0"], "--queue-size must be at least 1, got 0"),
              (["demo", "--port", "0"], "--port must be 1-65535, got 0")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "grid.bin").exists()


# -- --names and the prompt extractors' help --------------------------------------------------------

@pytest.mark.parametrize("names", [["A", "B"], ["A,B"]])
def test_eval_and_compare_take_names_as_separate_words_or_one_comma_separated_value(names, monkeypatch):
    from osediff.cli import eval as eval_cli

    args = build_parser().parse_args(["eval", "--sr", "a", "b", "--names", *names])
    assert eval_cli._methods(args) == {"A": Path("a"), "B": Path("b")}
    seen = {}

    def fake_compare(lq, methods, gt, *, names, **kwargs):
        seen["names"] = names
        return Image.new("RGB", (4, 4))

    monkeypatch.setattr("osediff.evaluation.compare.compare_folders", fake_compare)
    monkeypatch.setattr("osediff.images.save_image_atomic", lambda *args, **kwargs: None)
    assert main(["compare", "lq", "a", "b", "-o", "grid.png", "--names", *names]) == 0
    assert seen["names"] == ["A", "B"]


def test_each_prompt_extractor_default_says_why(capsys):
    texts = {}
    for command in ("upscale", "demo", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        texts[command] = " ".join(capsys.readouterr().out.split())
    assert "the prompts its published results were made with (hence the choice here; needs the 'dape' extra)" \
        in texts["upscale"]
    assert "RAM + DAPE weights are downloaded once" in texts["upscale"] and "(default: dape)" in texts["upscale"]
    for command in ("demo", "serve"):
        assert "without extra downloads" in texts[command] and "--prompt-extractor dape" in texts[command]
        assert "downloads RAM + DAPE once" in texts[command]
    assert "(default: text)" in texts["demo"] and "default: text" in texts["serve"]


def test_weights_are_written_only_under_an_extension_that_names_their_format(tiny_weights, tmp_path, capsys):
    from osediff.checkpoint import CheckpointError, OSEDiffWeights, convert_weights
    from osediff.cli.flags import flag_for

    with pytest.raises(CheckpointError) as info:
        tiny_weights.save(tmp_path / "w.bin")
    assert info.value.argument == "path" and not (tmp_path / "w.bin").exists()
    with pytest.raises(CheckpointError) as info:  # refused before the (missing) source is read
        convert_weights(tmp_path / "missing.pkl", tmp_path / "w.bin")
    assert info.value.argument == "dst" and info.value.message(flag_for).startswith(f"DST {tmp_path / 'w.bin'}: ")
    pkl = tiny_weights.save(tmp_path / "w.pkl")
    assert main(["convert", str(pkl), str(tmp_path / "w.bin")]) == 2 and not (tmp_path / "w.bin").exists()
    assert capsys.readouterr().err.startswith("error: DST ")
    assert main(["convert", str(pkl), str(tmp_path / "W.SafeTensors")]) == 0
    assert OSEDiffWeights.load(tmp_path / "W.SafeTensors").unet_state.keys() == tiny_weights.unet_state.keys()
