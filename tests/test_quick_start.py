"""The offline quick start: benchmarks/random_model.py writes a random model where its --size says and
prints commands that work with it as they are (no network, --prompt-extractor text)."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
from pathlib import Path

import pytest

from osediff.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_model():
    spec = importlib.util.spec_from_file_location("random_model", ROOT / "benchmarks" / "random_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_have_help_and_the_folder_follows_the_size(random_model):
    parser = random_model.build_parser()
    assert parser.allow_abbrev is False
    for action in parser._actions:
        assert action.help and action.help is not argparse.SUPPRESS, action.dest
    tiny, full = random_model.default_out("tiny"), random_model.default_out("full")
    assert tiny != full and tiny.name == "osediff-sd21-tiny" and full.name == "osediff-sd21-full"
    assert parser.parse_args(["--size", "tiny"]).out is None  # main() then takes default_out(size)


def test_the_printed_commands_work_offline(random_model, tmp_path, no_network):
    base, weights = random_model.make_random_model(tmp_path / "model", "tiny")
    with pytest.raises(SystemExit, match="holds a tiny random model, not a full one"):
        random_model.make_random_model(tmp_path / "model", "full")
    commands = [shlex.split(line) for line in random_model.try_commands(base, weights, "tiny")]
    assert [argv[:2] for argv in commands] == [["osediff", "upscale"], ["osediff", "demo"], ["osediff", "serve"]]
    for argv in commands:
        args = build_parser().parse_args(argv[1:])
        assert (args.base, args.weights, args.offline) == (str(base), str(weights), True)
        assert args.prompt_extractor in ("text", ["text"])
    upscale = commands[0]
    assert upscale[2:5] == ["examples", "-o", "outputs/tiny"]
    example = sorted((ROOT / "examples").glob("*.png"))[0]  # one of the checkout's examples, into tmp_path
    assert main(["upscale", str(example), "-o", str(tmp_path / "out"), *upscale[5:], "--device", "cpu"]) == 0
    assert (tmp_path / "out" / example.name).is_file() and no_network == []  # not even a probe
