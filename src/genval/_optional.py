"""Lazy imports of optional dependencies, failing with the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from genval.errors import GenvalError

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(GenvalError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, *, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``genval[extra]``.

    Args:
        module: the importable name, e.g. ``"uproot"``.
        extra: the genval extra that installs it, e.g. ``"root"``.
        purpose: what needs it, for the message (e.g. ``"reading .root files"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"{module} is needed{need} but is not installed: pip install 'genval[{extra}]'"
        ) from exc
