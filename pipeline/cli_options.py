"""The command line's shared options, declared once: --config/--quiet, and the schema-backed options whose help
shows the one schema's default (``configs/schema.yaml``) rather than a copy of it."""

from __future__ import annotations

import functools
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
