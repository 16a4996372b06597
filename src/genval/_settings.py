"""Keyword overrides of frozen settings dataclasses, nested one level deep.

:func:`~genval.gof.goodness_of_fit`, :func:`~genval.gof.test_statistic` and
:func:`~genval.flows.train` take a settings object
plus keyword overrides of any of its fields, including the fields of a nested settings object
(``lam=`` reaches ``GoFSettings.profile.lam``), so every keyword call written before the
settings objects existed keeps working.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["apply_overrides", "setting_names"]

T = TypeVar("T")


def _nested(settings: Any) -> dict[str, Any]:
    """Fields of ``settings`` that hold settings dataclasses themselves."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if dataclasses.is_dataclass(getattr(settings, f.name))}


def setting_names(settings: Any) -> list[str]:
    """Every keyword :func:`apply_overrides` accepts for ``settings``."""
    names = [f.name for f in dataclasses.fields(settings)]
    for inner in _nested(settings).values():
        names += [f.name for f in dataclasses.fields(inner) if f.name not in names]
    return names


def apply_overrides(settings: T, overrides: dict[str, Any], caller: str) -> T:
    """``settings`` with ``overrides`` applied (to its own fields or a nested settings' fields).

    Raises:
        TypeError: an override names no field; the message lists the valid keywords.
    """
    if not overrides:
        return settings
    own = {f.name for f in dataclasses.fields(settings)}  # type: ignore[arg-type]
    nested = _nested(settings)
    top = {k: v for k, v in overrides.items() if k in own}
    rest = {k: v for k, v in overrides.items() if k not in own}
    for name, inner in nested.items():
        inner_names = {f.name for f in dataclasses.fields(inner)}
        mine = {k: v for k, v in rest.items() if k in inner_names}
        if mine:
            rest = {k: v for k, v in rest.items() if k not in inner_names}
            top[name] = dataclasses.replace(top.get(name, inner), **mine)
    if rest:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {sorted(rest)}; valid "
                        f"settings: {', '.join(setting_names(settings))}")
    return dataclasses.replace(settings, **top)  # type: ignore[type-var]
