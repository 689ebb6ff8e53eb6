"""User-facing errors: one clear line, no traceback, non-zero exit."""


class UserError(Exception):
    """A mistake in the user's input (file, column, label, encoding, config)."""


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format a location as 'file, row N, column C' for error messages."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)
