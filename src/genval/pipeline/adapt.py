"""Defaults that fit the data: ``splits.centres`` and ``gof.n_kernels`` left at ``auto``.

The paper draws K = 100 kernel centres from 1 % of 10^5 events (Sec. 3). At 3,000 events 1 %
is 30 events, fewer than 100 kernels, so the paper's numbers cannot be the defaults of every
data set. Left at ``auto``:

* ``splits.centres`` is 1 % of the events, raised for small data sets so that the split holds
  the kernels it must provide (100, or an explicit ``gof.n_kernels``), at most 5 % when K is
  ``auto`` too. A share the other splits do not leave free is taken from ``splits.train``,
  the largest split (0.6 -> 0.567 at 3,000 events).
* ``gof.n_kernels`` is 100, or the size of the centres split when that is smaller (each
  kernel sits on its own held-out event).

Both resolutions depend only on the configuration and the number of events, so every stage
recomputes the same values; the split stage records them in the run's metadata
(``adapted``) and prints them. Explicit values are used as given; when they cannot work the
error names the key and a value that does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from genval.config import AUTO, SPLIT_NAMES, Config, SplitSpec
from genval.errors import InputError
from genval.splits import share_at_least

__all__ = ["PAPER_KERNELS", "PAPER_CENTRES_SHARE", "MAX_AUTO_CENTRES_SHARE", "SplitPlan",
           "plan_splits", "resolve_n_kernels", "kernels_needed"]

PAPER_KERNELS = 100
"""K of the paper (Sec. 3): the value of ``gof.n_kernels: auto`` when the centres allow it."""
PAPER_CENTRES_SHARE = 0.01
"""The paper's share of the kernel-centre split (1 % of 10^5 events)."""
MAX_AUTO_CENTRES_SHARE = 0.05
"""The largest share ``splits.centres: auto`` takes when K is ``auto`` too (K shrinks below)."""
_TOL = 1e-9


def kernels_needed(config: Config) -> int:
    """The events the centres split must hold: K if explicit, else 100 (auto shrinks K)."""
    k = config.gof.n_kernels
    return PAPER_KERNELS if k == AUTO else int(k)


@dataclass(frozen=True)
class SplitPlan:
    """The split specifications to cut, with every value chosen for an ``auto`` key.

    Attributes:
        specs: split name -> fraction, range or None, as :func:`genval.splits.make_splits`
            takes them.
        choices: dotted key -> ``{"value", "configured", "why"}`` for each key resolved or
            changed here (``splits.centres``, ``splits.train``).
    """

    specs: dict[str, SplitSpec | None]
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan_splits(config: Config, n_events: int) -> SplitPlan:
    """The split specifications for ``n_events`` events, ``splits.centres: auto`` resolved.

    Raises:
        InputError: if ``auto`` needs a larger share than ``splits.train`` can give, naming
            the keys to set instead.
    """
    sp = config.splits
    specs: dict[str, SplitSpec | None] = {n: getattr(sp, n) for n in SPLIT_NAMES}
    if sp.centres != AUTO:
        return SplitPlan(specs)
    need = max(kernels_needed(config), sp.min_events)
    share = max(PAPER_CENTRES_SHARE, need / n_events)
    why = f"holds {need} events for the kernels" if share > PAPER_CENTRES_SHARE else (
        "the paper's 1 %")
    if config.gof.n_kernels == AUTO and share > MAX_AUTO_CENTRES_SHARE:
        share, why = MAX_AUTO_CENTRES_SHARE, "the most auto takes; gof.n_kernels: auto shrinks"
    share = share_at_least(math.floor(share * n_events + _TOL), n_events) if (
        share > PAPER_CENTRES_SHARE) else share
    choices: dict[str, dict[str, Any]] = {"splits.centres": {
        "value": share, "configured": AUTO, "events": math.floor(share * n_events + _TOL),
        "why": why}}
    train = float(sp.train)  # type: ignore[arg-type]  # fractions: ranges refused with auto
    taken = sum(float(specs[n]) for n in SPLIT_NAMES  # type: ignore[arg-type]
                if n != "centres" and specs[n] is not None)
    short = taken + share - 1.0
    if short > _TOL:
        if train - short <= 0:
            raise InputError(f"splits.centres: auto needs a share of {share:.4g} but the other "
                             f"splits take {taken:.4g} and splits.train ({train:.4g}) cannot "
                             "give it; set splits.centres explicitly and lower the others")
        new_train = round(train - short, 12)
        choices["splits.train"] = {"value": new_train, "configured": train,
                                   "why": f"gave splits.centres its share of {share:.4g}"}
        specs["train"] = new_train
    specs["centres"] = share
    return SplitPlan(specs, choices)


def resolve_n_kernels(config: Config, n_centres: int) -> tuple[int, dict[str, Any] | None]:
    """K for a centres split of ``n_centres`` events, and the choice made (None if explicit).

    Raises:
        InputError: if an explicit ``gof.n_kernels`` exceeds the centres split (naming the
            values that work).
    """
    k = config.gof.n_kernels
    if k != AUTO:
        if int(k) > n_centres:
            raise InputError(f"gof.n_kernels = {k} but the centres split holds {n_centres} "
                             f"events; set gof.n_kernels to at most {n_centres} (or auto)")
        return int(k), None
    value = min(PAPER_KERNELS, n_centres)
    why = "the paper's K" if value == PAPER_KERNELS else (
        f"one kernel per event of the centres split ({n_centres} < {PAPER_KERNELS})")
    return value, {"value": value, "configured": AUTO, "why": why}
