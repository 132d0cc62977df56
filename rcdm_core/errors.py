"""The one exception type a user can meet.

Anything raised as :class:`RcdmError` is a user mistake or an environment problem that the CLI prints as a
single line (``rcdm: error: ...``) with a non-zero exit code; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RcdmError(Exception):
    """A problem the user can fix: the message names the file, key or option and says what to do."""


class ConfigError(RcdmError):
    """A run configuration, flag or option value is wrong."""


class CheckpointError(RcdmError):
    """A checkpoint cannot be read safely or does not match what it is loaded into."""


class DataError(RcdmError):
    """A data source is empty, missing or unreadable."""
