"""The CLI's shared options: help defaults read from the one schema, choice lists from the schema or the library."""

import copy
import re

import click
from click.testing import CliRunner

from pipeline import config
from pipeline.cli import cli
from pipeline.cli_options import LazyChoice, SchemaOption, default_text


def _options():
    for name, command in cli.commands.items():
        ctx = click.Context(command, info_name=name)
        for param in command.params:
            if isinstance(param, click.Option):
                yield name, ctx, param


def test_every_schema_option_shows_the_schemas_default():
    props = config.schema()["properties"]
    seen = 0
    for _, ctx, param in _options():
        if isinstance(param, SchemaOption):
            default = props[param.section]["properties"][param.key]["default"]
            assert param.get_help_record(ctx)[1].endswith(f"  [default: {default_text(default)}]")
            seen += 1
    assert seen >= 35


def test_no_help_copies_a_schema_default_by_hand():
    defaults = {(key, default_text(spec["default"]))
                for section in config.schema()["properties"].values() if isinstance(section, dict)
                for key, spec in section.get("properties", {}).items() if "default" in spec}
    for name, _ctx, param in _options():
        if isinstance(param, SchemaOption):
            continue
        m = re.search(r"\[default: ([^\]]*)\]", param.help or "")
        assert not (m and (param.name, m.group(1)) in defaults), f"rsvae {name} {param.opts[-1]}: use cli_options.option"


def test_help_follows_the_schema(monkeypatch):
    changed = copy.deepcopy(config.schema())
    changed["properties"]["train"]["properties"]["epochs"]["default"] = 77
    monkeypatch.setattr(config, "schema", lambda: changed)
    out = CliRunner().invoke(cli, ["train", "-h"], terminal_width=200).output
    assert "Most training epochs.  [default: 77]" in out


def test_choices_come_from_the_schema_and_the_library():
    from pipeline.detections import DRIVERS
    from pipeline.stack import RESAMPLING

    types = {(name, p.name): p.type for name, _, p in _options() if isinstance(p.type, LazyChoice)}
    assert types["stack", "resampling"].choices == RESAMPLING
    assert list(config.schema()["properties"]["stack"]["properties"]["resampling"]["enum"]) == list(RESAMPLING)
    assert types["detect", "suffix"].choices == tuple(DRIVERS)
    assert types["train", "method"].choices == ("vae", "rx", "lrx")
    assert types["score", "device"].choices == types["train", "device"].choices == ("auto", "cpu", "cuda")
    from pipeline.detectors.vae_inference import CHOICES

    assert types["score", "scoring_path"].choices == CHOICES == ("auto", "folded", "layered")
    res = CliRunner().invoke(cli, ["train", "x.nc", "-o", "m", "--method", "nope"])
    assert res.exit_code == 2 and "'nope' is not one of 'vae', 'rx', 'lrx'" in res.output
