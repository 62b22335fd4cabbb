"""User-facing errors: one line that says what is wrong and what to do, never a traceback."""

from __future__ import annotations


class RecstackError(Exception):
    """An error the user can fix. The CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(RecstackError):
    """A config file or override that does not fit the typed config."""


class DataError(RecstackError):
    """Input data that cannot be read, or a reject under --strict. `report` carries what was
    counted before the failure (rows read, rejects by reason), for the command's JSON report."""

    def __init__(self, message: str, hint: str | None = None, report: dict | None = None):
        super().__init__(message, hint)
        self.report = report


class CheckpointError(RecstackError):
    """A checkpoint that is missing, incomplete or of another format."""
