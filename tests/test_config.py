"""Config loading: defaults from the one schema, unknown keys and bad values named."""

import pytest

from pipeline.config import load_config, section, validate
from pipeline.errors import ConfigError


def test_defaults_fill_every_section():
    cfg = load_config()
    assert cfg["train"]["latent"] == 8
    assert cfg["ingest"]["max_pixels"] == 200_000
    assert cfg["score"]["fpr"] == 0.001


def test_old_score_fast_maps_to_scoring_path_with_a_warning():
    """score.fast (true/false), the old name of score.scoring_path, is mapped (folded/layered) with a one-line
    warning and gone from the result; null asks nothing; beside a scoring_path other than auto it is an error."""
    from pipeline.errors import RsvaeWarning

    assert validate({})["score"]["scoring_path"] == "auto" and "fast" not in validate({})["score"]
    for fast, path in ((True, "folded"), (False, "layered")):
        with pytest.warns(RsvaeWarning, match=f"^score.fast is deprecated; use score.scoring_path: {path}$"):
            got = validate({"score": {"fast": fast}})["score"]
        assert got["scoring_path"] == path and "fast" not in got
        with pytest.warns(RsvaeWarning):  # auto, as Snakemake's own check fills it in, is no conflict
            assert validate({"score": {"fast": fast, "scoring_path": "auto"}})["score"]["scoring_path"] == path
    assert validate({"score": {"fast": None}})["score"] == validate({})["score"]
    with pytest.raises(ConfigError, match=r"^my.yaml: score.fast is the deprecated name of score.scoring_path"):
        validate({"score": {"fast": True, "scoring_path": "folded"}}, "my.yaml")
    with pytest.raises(ConfigError, match="score.scoring_path"):
        validate({"score": {"scoring_path": "exact"}})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'"):
        validate({"train": {"epoch": 3}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        validate({"train": {"epochs": -1}})


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 7\n  latent: 4\n")
    cfg = load_config(p)
    s = section(cfg, "train", {"epochs": 3, "latent": None})
    assert (s["epochs"], s["latent"]) == (3, 4)


def test_command_line_value_checked_too():
    with pytest.raises(ConfigError, match=r"ingest\.max_pixels"):
        section(load_config(), "ingest", {"max_pixels": 0})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_workflow_config_repeats_only_the_schemas_defaults():
    """configs/config.yaml shows the settings a user may change; every value it sets is the schema's default,
    so the workflow trains and scores the same model as the rsvae commands with no --config."""
    from pathlib import Path

    import yaml

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    repeated = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "config.yaml").read_text())
    defaults = dict(leaves(validate({})))
    differs = {key: (value, defaults.get(key)) for key, value in leaves(repeated) if defaults.get(key) != value}
    assert not differs, f"configs/config.yaml differs from pipeline/schema.yaml's defaults: {differs}"
