"""Errors a user can cause. Each message names what to fix: file, row and column, or the config field."""

from __future__ import annotations


class UserError(Exception):
    """Base class for problems in the user's input. The CLI prints the message and exits 2."""


class DataError(UserError):
    """A preference-data problem, located by file, row (0-based) and column where known."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, column: str | None = None):
        self.file, self.row, self.column = file, row, column
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"column '{column}'" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.detail = message


class ConfigError(UserError):
    """A bad run/eval configuration value, named by its field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


class ModelError(UserError):
    """A model that cannot be resolved or loaded (missing path, Hub unreachable, ...)."""
