"""The README's Python example runs as printed (a user copies it first)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from genval.errors import GenvalWarning

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_a_python_example():
    assert _python_blocks(), "README.md lost its Python example"


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(index, capsys):
    code = _python_blocks()[index]
    namespace: dict[str, object] = {"__name__": "__readme__"}
    with warnings.catch_warnings(record=True) as caught:
        # genval's own caveats (e.g. a negative-mass warning for signed KDE weights) are what a
        # user sees printed; any other warning is still an error.
        warnings.simplefilter("error")
        warnings.simplefilter("always", GenvalWarning)
        exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    assert all(issubclass(w.category, GenvalWarning) for w in caught)
    assert capsys.readouterr().out.strip(), "the example prints its results"
