"""The coverage stage (paper Step 3, Eq. 4; App. A, Fig. 3): do the error bars cover a truth?"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from genval import plots
from genval.compute import Executor
from genval.config import Config
from genval.coverage import run_coverage
from genval.paper import PAPER_COVERAGE, is_paper_toy
from genval.pipeline.artifacts import load_members, load_splits, save_coverage, split_events
from genval.pipeline.figures import draw
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir

__all__ = ["stage_coverage"]


def _levels(config: Config) -> tuple[float, ...]:
    """The judged level of ``coverage.z_alpha`` first (Eq. 4); 2σ kept for the record."""
    level = float(2 * stats.norm.cdf(config.coverage.z_alpha) - 1)
    return (level, 0.9545) if abs(level - 0.9545) > 1e-3 else (level,)


def stage_coverage(run: RunDir, *, log: Log = quiet, executor: Executor | None = None
                   ) -> dict[str, Any]:
    """The first-moment coverage study (Eq. 4) on synthetic data sets from the known truth.

    Per data set ``coverage.n_generated`` events are generated from the refitted f(x; ŵ) and
    every member integral is an importance estimate from that one sample (App. A,
    :func:`genval.coverage.run_coverage` with ``oversampling = n_generated / n_events``); on
    the workers of ``executor`` when given (``compute.scheduler``), with the same result.
    """
    cfg = run.config()
    if not cfg.coverage.enabled:
        return {"skipped": "coverage.enabled is false"}
    if cfg.data.path is not None:
        return {"skipped": "the truth is unknown for data read from a file"}
    gen = cfg.data.generate
    mean, std = np.asarray(gen.mean), np.asarray(gen.std)
    truth = np.asarray(cfg.coverage.truth if cfg.coverage.truth is not None else gen.mean)
    members = load_members(run)
    n_events = cfg.coverage.n_events or int(load_splits(run).sizes()["weight_fit"])
    seed = stage_seed(cfg, "coverage")
    levels = _levels(cfg)
    result = run_coverage(members, lambda n, rng: rng.normal(mean, std, size=(n, mean.size)),
                          truth, n_datasets=cfg.coverage.n_datasets, n_events=n_events,
                          oversampling=cfg.coverage.n_generated / n_events, seed=seed,
                          levels=levels, progress=not cfg.quiet, scheduler=executor)
    _, names = split_events(run, "weight_fit")
    save_coverage(run, result, names)
    draw(run, "coverage", plots.plot_coverage, estimates=result.estimates, sigmas=result.stds,
         truth=result.truth, z_alpha=cfg.coverage.z_alpha, names=names,
         reference=PAPER_COVERAGE if is_paper_toy(cfg) else None)
    run.update_metadata(seeds={"coverage": seed})
    log("[coverage] " + ", ".join(f"{n}: {100 * c:.1f} %" for n, c in
                                  zip(names, result.fractions[:, 0], strict=True))
        + f" at nominal {100 * levels[0]:.1f} % over {result.n_datasets} data sets, "
        f"{result.n_generated} events generated from f(x; ŵ) per set")
    return {"coverage": dict(zip(names, result.fractions[:, 0].tolist(), strict=True)),
            "level": levels[0], "n_generated": result.n_generated,
            "integrals": result.integrals}
