"""Defaults that fit the data: ``splits.centres: auto``.

The paper draws its kernel centres from 1 % of 10^5 events (Sec. 3). On a small data set 1 %
holds too few events for the kernels (``gof.n_kernels``) or for ``splits.min_events``: 1 % of
3,000 events is 30, fewer than the paper's K = 100; 1 % of 1,500 is 15, fewer than the 20 any
split must hold. Left at ``auto``, ``splits.centres`` is 1 % of the events, raised when that
is too few to hold ``max(gof.n_kernels, splits.min_events)`` events; a share the other splits
do not leave free is taken from ``splits.train``, the largest split (0.6 -> 0.5766 for
K = 100 at 3,000 events).

The resolution depends only on the configuration and the number of events; the split stage
prints it and records it in the run's metadata (``adapted``). Explicit values are used as
given; when they cannot work the error names the key and a value that does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from genval.config import AUTO, SPLIT_NAMES, Config, SplitSpec
from genval.errors import InputError
from genval.splits import share_at_least

__all__ = ["PAPER_CENTRES_SHARE", "SplitPlan", "plan_splits"]

PAPER_CENTRES_SHARE = 0.01
"""The paper's share of the kernel-centre split (1 % of 10^5 events)."""
_TOL = 1e-9


@dataclass(frozen=True)
class SplitPlan:
    """The split specifications to cut, with every value chosen for an ``auto`` key.

    Attributes:
        specs: split name -> fraction, range or None, as :func:`genval.splits.make_splits`
            takes them.
        choices: dotted key -> ``{"value", "configured", "why"}`` (and ``"events"`` for the
            centres) for each key resolved or changed here (``splits.centres``,
            ``splits.train``).
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
    need = max(config.gof.n_kernels, sp.min_events)
    if math.floor(PAPER_CENTRES_SHARE * n_events + _TOL) >= need:
        share, why = PAPER_CENTRES_SHARE, "the paper's 1 %"
    else:
        share = share_at_least(need, n_events)
        why = (f"holds the {need} events of gof.n_kernels" if need == config.gof.n_kernels
               else f"holds the {need} events of splits.min_events")
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
