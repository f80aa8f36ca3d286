from __future__ import annotations

from dataclasses import dataclass, field

import click
import pytest
from click.testing import CliRunner

from featurestore.options import (config_from_options, config_options, config_values, destination, field_names,
                                  option_names, option_values)


@dataclass
class Model:
    size: int  # no default: no option
    kind: str = field(default="a", metadata={"choices": ("a", "b"), "help": "Which kind."})
    taps: list[int] | None = None
    n_heads: int | None = field(default=None, metadata={"aliases": ["heads"]})
    scale: float = 0.5
    mix: bool = True
    seed: int = 0


@dataclass
class Data:
    seed: int = field(default=1, metadata={"flag": "data-seed"})
    name: str = "train"


def parse(*args, skip=()) -> dict:
    """The keyword arguments a command with the options of Model and Data receives."""
    received = {}

    @click.command()
    @config_options(Model, Data, skip=skip)
    def command(**options):
        received.update(options)

    result = CliRunner().invoke(command, list(args))
    assert result.exit_code == 0, result.output
    return received


def test_every_field_with_a_default_is_an_option_with_the_field_default():
    options = parse()
    assert options == {"kind": "a", "taps": None, "n_heads": None, "scale": 0.5, "mix": True, "seed": 0,
                       "data_seed": 1, "name": "train"}


def test_options_are_typed_by_the_annotations_and_named_by_the_metadata():
    options = parse("--kind", "b", "--taps", "10,20,30", "--heads", "4", "--scale", "2", "--no-mix", "--seed", "3",
                    "--data-seed", "7", "--name", "val")
    assert options == {"kind": "b", "taps": [10, 20, 30], "n_heads": 4, "scale": 2.0, "mix": False, "seed": 3,
                       "data_seed": 7, "name": "val"}
    assert parse("--n-heads", "2")["n_heads"] == 2


@pytest.mark.parametrize("args, message", [(["--kind", "c"], "'c' is not one of 'a', 'b'"),
                                           (["--taps", "1,x"], "comma-separated list of int"),
                                           (["--seed", "x"], "not a valid integer")])
def test_bad_values_are_refused_by_click(args, message):
    @click.command()
    @config_options(Model)
    def command(**options):
        pass

    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2 and message in result.output


def test_help_shows_the_metadata_help_and_the_defaults():
    @click.command()
    @config_options(Model, Data)
    def command(**options):
        pass

    help_text = CliRunner().invoke(command, ["--help"]).output
    assert "--n-heads, --heads INTEGER" in help_text and "--mix / --no-mix" in help_text
    assert "Which kind.  [default: a]" in help_text and "--data-seed" in help_text


def test_skip_leaves_fields_out():
    assert "taps" not in parse(skip={"taps"})


def test_configs_are_built_from_their_own_options_only():
    options = parse("--heads", "2", "--data-seed", "5")
    assert config_from_options(Model, options, size=8) == Model(size=8, n_heads=2)
    assert options == {"data_seed": 5, "name": "train"}  # Model's options were consumed
    assert config_values(Data, options) == {"seed": 5, "name": "train"} and options == {}


def test_two_fields_of_one_destination_are_refused():
    @dataclass
    class Other:
        seed: int = 0

    with pytest.raises(ValueError, match="seed"):
        config_options(Model, Other)(lambda **options: None)


def test_field_names_maps_every_spelling_to_the_field():
    names = field_names(Model, Data)
    assert {names[n] for n in ("heads", "n-heads", "n_heads")} == {"n_heads"}
    assert names["data-seed"] == names["data_seed"] == "seed" and "size" not in names


def test_option_names_keep_two_configs_fields_of_one_name_apart():
    names = option_names(Model, Data)
    assert names["seed"] == (Model, "seed") and names["data-seed"] == names["data_seed"] == (Data, "seed")
    assert {names[n] for n in ("heads", "n-heads", "n_heads")} == {(Model, "n_heads")} and "size" not in names
    assert destination(Data, "seed") == "data_seed" and destination(Model, "n_heads") == "n_heads"


def test_option_values_are_what_the_command_would_receive():
    options = parse("--kind", "b", "--heads", "4", "--no-mix", "--data-seed", "7")
    data = config_from_options(Data, dict(options))
    model = Model(size=3, **config_values(Model, dict(options)))
    assert option_values(model) | option_values(data) == options  # the round trip, by option name
