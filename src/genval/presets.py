"""Demo presets: the paper's toy study at laptop size (``quick``) and at full size (``paper``).

References:
    Badaracco et al., Sec. 3 (10^5 events, M = 60, the paper architecture) and App. A.
"""

from __future__ import annotations

import json
from typing import Any

from genval.config import Config, ConfigError, parse_config
from genval.paper import PAPER_KERNEL_BASIS

__all__ = ["PRESETS", "preset"]

PRESETS: dict[str, dict[str, Any]] = {
    # Sized to run end to end on 2 CPU cores in a few minutes (figures in BENCHMARKS.md):
    # small flows stopped early enough that a single member is visibly imperfect, a test split
    # large enough to see it, the paper's kernel basis (PAPER_KERNEL_BASIS).
    "quick": {
        "run_dir": "genval-demo",
        "data": {"generate": {"n_events": 60_000}},
        "splits": {"train": 0.5, "weight_fit": 0.2, "centres": 0.02, "test": 0.28},
        "members": {"n_members": 20, "flow": {"layers": 2, "hidden": 32, "blocks": 2, "bins": 8,
                                              "learning_rate": 1e-3, "batch_size": 512,
                                              "max_epochs": 40, "patience": 5}},
        "sample": {"n_events": 60_000},
        # App. A's ratio: 2 x the 12,000 weight-fit events of a data set, drawn from f(x; ŵ)
        # (each needs every member's density for the importance ratios: the study's main cost)
        "coverage": {"n_datasets": 100, "n_generated": 24_000},
        "gof": {"n_toys": 300, **PAPER_KERNEL_BASIS},
    },
    # The paper's sizes (Sec. 3): 10^5 events, M = 60, the paper architecture and kernel
    # basis; for a GPU.
    "paper": {
        "run_dir": "genval-paper",
        "data": {"generate": {"n_events": 100_000}},
        "splits": {"train": 0.6, "weight_fit": 0.2, "centres": 0.01, "test": 0.19},
        "members": {"n_members": 60},
        "sample": {"n_events": 200_000},
        "coverage": {"n_datasets": 284, "n_generated": 200_000},
        "gof": {"n_toys": 1000, **PAPER_KERNEL_BASIS},
    },
}


def preset(name: str) -> Config:
    """The demo configuration ``quick`` (laptop, default) or ``paper`` (GPU)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return parse_config(json.loads(json.dumps(PRESETS[name])), source=f"preset {name!r}")
