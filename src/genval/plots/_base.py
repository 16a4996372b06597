"""What every figure shares: the style, the Figure, saving, labels, and finite-only limits.

Figures are built on :class:`~matplotlib.figure.Figure` directly, not through pyplot, so no
global figure state accumulates in long runs. Input that cannot be drawn (NaN, ±inf, nothing at
all) is shown as a gap or as a message in the panel: a figure never raises on values, only on
arrays whose shapes do not fit together (:class:`~genval.errors.InputError`).
"""

from __future__ import annotations

import contextlib
import math
import os
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._atomic import atomic_path
from genval._optional import require
from genval.errors import InputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["save_figure", "axis_label"]

# Paper Fig. 1 colours: blue ±1σ, light blue ±2σ.
BAND1, BAND2 = "#4a90d9", "#b9d7f5"
REF, DATA, RECO = "#1f3b73", "black", "#d1495b"


@contextlib.contextmanager
def use_style(name: str | None) -> Iterator[None]:
    """mplhep's style ``name`` (e.g. ``"CMS"``) when installed; matplotlib defaults otherwise."""
    require("matplotlib", "plots", purpose="figures")
    import matplotlib.pyplot as plt

    if name is None:
        yield
        return
    try:
        import mplhep
    except ImportError:
        yield
        return
    with plt.style.context(getattr(mplhep.style, name)):
        yield


def figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Figure, stem: str | os.PathLike[str], *,
                formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``stem.png``, ``stem.pdf`` (each atomically); return the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def finish(fig: Figure, save: str | os.PathLike[str] | None, formats: Sequence[str],
           dpi: int) -> Figure:
    if save is not None:
        save_figure(fig, save, formats=formats, dpi=dpi)
    return fig


def vec(name: str, a: ArrayLike, n: int | None = None) -> NDArray[np.float64]:
    """``a`` as a flat float64 array of ``n`` entries (non-finite values kept)."""
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if n is not None and arr.size != n:
        raise InputError(f"{name} has {arr.size} entries, expected {n}")
    return arr


def finite(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """The finite entries of ``values`` (flattened)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    return flat[np.isfinite(flat)]


def num(value: float | None, fmt: str = ".3g") -> str:
    """A number for a label, with NaN, ±inf and None spelled out (never ``nan``)."""
    if value is None or math.isnan(value):
        return "undefined"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return format(value, fmt)


def safe_text(text: str) -> str:
    """``text`` as matplotlib can draw it: mathtext kept when it parses, else ``$`` escaped.

    A user's label with broken mathtext (``"$p_T"`` is fine, ``"$\\frac{a$"`` is not) would
    otherwise raise only when the figure is saved, at the end of a long stage.
    """
    if text.count("$") - text.count(r"\$") < 2:
        return text  # not mathtext: drawn as it is
    from matplotlib.mathtext import MathTextParser

    try:
        MathTextParser("path").parse(text)
    except ValueError:
        return text.replace(r"\$", "$").replace("$", r"\$")
    return text


def axis_label(label: str, unit: str = "") -> str:
    """``label [unit]`` (the HEP convention), or ``label`` alone without a unit."""
    return safe_text(f"{label} [{unit}]" if unit else label)


def message_panel(ax: Axes, text: str, *, width: int = 48) -> None:
    """Write ``text`` across an empty panel (what could not be drawn, and why)."""
    wrapped = "\n".join(textwrap.fill(line, width) for line in text.splitlines())
    ax.text(0.5, 0.5, safe_text(wrapped), transform=ax.transAxes, ha="center", va="center",
            fontsize="x-small", color=RECO)
    ax.set_xticks([])
    ax.set_yticks([])


def grid_shape(n: int, max_columns: int) -> tuple[int, int]:
    """Rows and columns of a grid of ``n`` panels, at most ``max_columns`` wide."""
    if max_columns < 1:
        raise InputError(f"max_columns must be at least 1, got {max_columns}")
    cols = max(1, min(n, max_columns))
    return -(-max(n, 1) // cols), cols
