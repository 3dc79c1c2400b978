"""Errors a user can cause and fix; the CLI prints their message on one line and exits non-zero."""


class RsvaeError(Exception):
    """Base of every error rsvae raises on purpose: a user error, not a bug."""

    exit_code = 1


class InputError(RsvaeError, ValueError):
    """An input file (raster, sample) is missing, unreadable or does not fit."""


class UsageConflict(InputError):
    """Options that do not go together, or one that needs another: exit 2, as click's own usage errors."""

    exit_code = 2


class ConfigError(RsvaeError, ValueError):
    """A configuration key or value is wrong; the message names the key."""

    exit_code = 2


class ModelError(RsvaeError, ValueError):
    """A model folder is missing, corrupted or does not match the data."""


class OutputError(RsvaeError, OSError):
    """An output cannot be written (folder not writable, disk full)."""


class RsvaeWarning(UserWarning):
    """Something the user should know that does not stop the run (no CRS, an all-nodata tile)."""
