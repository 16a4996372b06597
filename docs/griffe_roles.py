"""A griffe extension for the API pages: genval's docstrings are Google style with a few
reStructuredText habits (``:func:`x``` roles, a paragraph ending in ``::`` before a code
block) that Markdown would show literally. Roles become code spans, ``::`` a colon."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|obj|exc|const):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _clean(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        text = _ROLE.sub(_code, obj.docstring.value)
        obj.docstring.value = _LITERAL_BLOCK.sub(":", text)
    for member in obj.members.values():
        if not member.is_alias:
            _clean(member)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _clean(pkg)
