"""One independent random stream per stage (or other purpose) of a run."""

from __future__ import annotations

import zlib

import numpy as np

from genval.config import Config

__all__ = ["stage_seed"]


def stage_seed(config: Config, stage: str) -> int:
    """An independent seed per stage (or other purpose) derived from ``config.seed``.

    Keyed by a CRC of the name, so every purpose ("data", "split", ..., "figures") gets its
    own stream and adding a stage never shifts the others. Recorded in ``metadata.json``.
    """
    key = zlib.crc32(stage.encode("utf-8"))
    return int(np.random.SeedSequence([config.seed, key]).generate_state(1)[0])
