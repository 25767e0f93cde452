"""The one error type users see.

Everything a user can get wrong (a file, a row, a config key, a model name) raises
`LmtuneError` with a single line that says what is wrong, where, and how to fix it. The CLI
prints that line and exits with code 2; it never shows a traceback for these.
"""

from __future__ import annotations


class LmtuneError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} -- {self.hint}"
        return self.message


def where(file: str | None = None, row: int | None = None, field: str | None = None) -> str:
    """Format a location such as `train.csv, row 12, column 'label'`."""
    parts = []
    if file is not None:
        parts.append(str(file))
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"column '{field}'")
    return ", ".join(parts)
