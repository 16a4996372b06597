"""Progress messages of the pipeline stages."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Log", "quiet"]

Log = Callable[[str], None]
"""Receives one-line progress messages (the CLI prints them on stderr unless --quiet)."""


def quiet(_message: str) -> None:
    """A :data:`Log` that discards messages."""
