"""Configuration: YAML loading, defaults and validation against the one schema (``pipeline/schema.yaml``).

The Snakefile validates against the same file (``configs/schema.yaml`` links to it), so a key means the same
thing on the command line and in the workflow.
"""

from __future__ import annotations

import copy
import warnings
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline.errors import ConfigError, RsvaeWarning

#: Old names still accepted, with a warning: (section, old key) -> (new key, {old value: new value}).
DEPRECATED = {("score", "fast"): ("scoring_path", {True: "folded", False: "layered"})}


@cache
def schema() -> dict[str, Any]:
    """The configuration schema as a dict (loaded once)."""
    text = resources.files("pipeline").joinpath("schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(node: dict[str, Any], value: dict[str, Any]) -> None:
    """Fill missing keys of ``value`` with the schema's defaults, recursing into objects."""
    for key, sub in node.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and isinstance(value.get(key), dict):
            _fill_defaults(sub, value[key])
        if isinstance(value.get(key), list) and "properties" in sub.get("items", {}):  # lists of objects
            for item in value[key]:
                if isinstance(item, dict):
                    _fill_defaults(sub["items"], item)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with every default filled in.

    Raises ConfigError naming the offending key; unknown keys are errors, not silently ignored.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections, got {type(config).__name__}")
    value = copy.deepcopy(config)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            where = _key_path(err)
            prefix = "" if where == "(top level)" else where + "."
            raise ConfigError(
                f"{source}: unknown key '{prefix}{extra[0]}' (allowed here: {', '.join(allowed)})"
            )
        raise ConfigError(f"{source}: {_key_path(err)}: {err.message}")
    _replace_deprecated(value, source)
    _fill_defaults(schema(), value)
    return value


def _replace_deprecated(value: dict[str, Any], source: str) -> None:
    """Map the old keys of ``DEPRECATED`` in ``value`` to their new ones, in place, with a one-line warning; an old
    key given beside its new one set to anything but its default is a ConfigError (which one is meant?)."""
    for (name, old), (new, mapping) in DEPRECATED.items():
        part = value.get(name)
        if not isinstance(part, dict) or old not in part:
            continue
        given = part.pop(old)
        if given is None:  # the old default: nothing asked
            continue
        default = schema()["properties"][name]["properties"][new]["default"]
        if part.get(new, default) != default:
            raise ConfigError(f"{source}: {name}.{old} is the deprecated name of {name}.{new}; give only {name}.{new}")
        part[new] = mapping[given]
        warnings.warn(f"{name}.{old} is deprecated; use {name}.{new}: {mapping[given]}", RsvaeWarning, stacklevel=2)


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML config file (or none: all defaults), validate it and fill in defaults."""
    if path is None:
        return validate({}, "defaults")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return validate(data or {}, str(path))


def section(config: dict[str, Any], name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One step's settings: the config's section with command-line ``overrides`` (None = not given) on top.

    The merged result is validated again, so a bad command-line value is reported like a bad config value.
    """
    merged = copy.deepcopy(config)
    for key, val in (overrides or {}).items():
        if val is not None:
            merged.setdefault(name, {})[key] = val
    return validate(merged, "command line")[name]
