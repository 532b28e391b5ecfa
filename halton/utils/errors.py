"""How an error reads in the one line a user sees (a message, the app's field, a log line)."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """An error's first non-empty line, or its type's name when it says nothing."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
