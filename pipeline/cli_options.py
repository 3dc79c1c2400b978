"""The command line's shared options, declared once: --config/--quiet, and the schema-backed options whose help
shows the one schema's default (``configs/schema.yaml``) rather than a copy of it."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import click

#: -q/--quiet, the one declaration every command uses.
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")


def common(func: Callable) -> Callable:
    """--config and --quiet, shared by every command that reads a config."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="YAML config (same file as the workflow's); command-line options override it.")
    @quiet_option
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def schema_default(section: str, key: str) -> Any:
    """The default of ``section.key`` in the one schema (KeyError when the schema has none)."""
    from pipeline.config import schema

    return schema()["properties"][section]["properties"][key]["default"]


def default_text(value: Any) -> str:
    """A schema default as help shows it: lists comma-separated, everything else as Python prints it."""
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


class SchemaOption(click.Option):
    """An option whose help ends with ``[default: …]`` read from the schema's ``section.key`` when help is shown, so
    the schema stays the one place that holds defaults (the option itself defaults to None: the config's value, then
    the schema's, apply)."""

    def __init__(self, *decls: Any, section: str, key: str | None = None, **kwargs: Any):
        super().__init__(*decls, **kwargs)
        self.section, self.key = section, key or self.name

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names, text = record
        extra = f"[default: {default_text(schema_default(self.section, self.key))}]"
        return names, f"{text}  {extra}" if text else extra


def option(*decls: Any, section: str, key: str | None = None, **kwargs: Any) -> Callable:
    """``click.option`` for a setting of the schema's ``section`` (``key``: the option's name unless given)."""
    return click.option(*decls, cls=SchemaOption, section=section, key=key, **kwargs)


class LazyChoice(click.Choice):
    """A choice among values found when first needed (a schema enum, a library's table), so the CLI starts without
    loading the schema or the library."""

    def __init__(self, source: Callable[[], Any]):  # click.Choice's own init wants the values now
        self.source, self.case_sensitive = source, True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.source())


def schema_choice(section: str, key: str) -> LazyChoice:
    """The values the schema's enum of ``section.key`` lists (None, "no value", left out)."""

    def values() -> list[str]:
        from pipeline.config import schema

        return [v for v in schema()["properties"][section]["properties"][key]["enum"] if v is not None]

    return LazyChoice(values)


def library_choice(module: str, name: str) -> LazyChoice:
    """The values of a library table (``module.name``: a tuple, or a dict's keys)."""
    return LazyChoice(lambda: getattr(importlib.import_module(module), name))


def seed_option(section: str, help: str) -> Callable:
    """--seed of a step whose randomness it fixes."""
    return option("--seed", type=int, section=section, help=help)


def device_option(section: str, verb: str) -> Callable:
    """--device: where torch runs the step (``verb``: train, score, encode)."""
    return option("--device", type=schema_choice("train", "device"), section=section, key="device",
                  help=f"Where to {verb}.")


def threads_option(section: str) -> Callable:
    """--threads: torch's threads."""
    return option("--threads", type=int, section=section, help="Torch threads (0 = all cores).")


def chunk_option(section: str) -> Callable:
    """--chunk: pixels per model batch."""
    return option("--chunk", type=int, section=section, help="Pixels per model batch.")


def renamed(old: str, new: str, value: str, new_given: Any) -> str:
    """``value``, the one an old option ``old`` stands for under its new name ``new``, after a one-line deprecation
    warning; a usage error (exit 2) when the new option is given too."""
    if new_given is not None:
        raise click.UsageError(f"{old} is the deprecated form of {new}; give only {new}")
    click.echo(f"Warning: {old} is deprecated; use {new} {value}", err=True)
    return value
