"""The coverage stage (paper Step 3, Eq. 4; App. A, Fig. 3): do the error bars cover a truth?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from genval import plots
from genval.compute import Executor
from genval.config import Config, ConfigError
from genval.coverage import run_coverage
from genval.paper import PAPER_COVERAGE, is_paper_toy
from genval.pipeline.artifacts import (
    load_members,
    load_splits,
    save_coverage,
    split_events,
    split_weights,
)
from genval.pipeline.figures import draw
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir

__all__ = ["file_datasets", "stage_coverage"]


def _levels(config: Config) -> tuple[float, ...]:
    """The judged level of ``coverage.z_alpha`` first (Eq. 4); 2σ kept for the record."""
    level = float(2 * stats.norm.cdf(config.coverage.z_alpha) - 1)
    return (level, 0.9545) if abs(level - 0.9545) > 1e-3 else (level,)


def stage_coverage(run: RunDir, *, log: Log = quiet, executor: Executor | None = None
                   ) -> dict[str, Any]:
    """The coverage study (Eq. 4): do the error bars cover a known truth?

    Generated data: synthetic data sets from the generator, first moments of every feature.
    File data: the configured ``coverage.observables`` on disjoint subsets of the events that
    trained no member, against ``coverage.truth`` from an independent sample
    (:func:`file_datasets`). Per data set ``coverage.n_generated`` events are generated from
    the refitted f(x; ŵ) and every member integral is an importance estimate from that one
    sample (App. A, :func:`genval.coverage.run_coverage`); the data sets run on the workers
    of ``executor`` when given (``compute.scheduler``), with the same result.
    """
    cfg = run.config()
    cov = cfg.coverage
    if not cov.enabled:
        return {"skipped": "coverage.enabled is false"}
    if cfg.data.path is not None and cov.observables is None:
        return {"skipped": "the truth is unknown for data read from a file: set "
                           "coverage.observables and coverage.truth (from an independent, "
                           "larger sample) to run the study"}
    members = load_members(run)
    _, features = split_events(run, "weight_fit")
    seed = stage_seed(cfg, "coverage")
    levels = _levels(cfg)
    g, names, truth, truth_stds = _observables(cfg, features)
    if cfg.data.path is None:
        gen = cfg.data.generate
        mean, std = np.asarray(gen.mean), np.asarray(gen.std)
        n_events = cov.n_events or int(load_splits(run).sizes()["weight_fit"])
        datasets = None
        sample_truth = lambda n, rng: rng.normal(mean, std, size=(n, mean.size))  # noqa: E731
    else:
        datasets = file_datasets(run, cov.n_datasets, cov.n_events, seed)
        n_events = len(datasets[0])
        sample_truth = None
    result = run_coverage(members, sample_truth, truth, n_datasets=cov.n_datasets,
                          n_events=n_events, g=g, oversampling=cov.n_generated / n_events,
                          seed=seed, levels=levels, progress=not cfg.quiet, datasets=datasets,
                          truth_stds=truth_stds, scheduler=executor)
    save_coverage(run, result, names)
    sigmas = result.stds if truth_stds is None else np.hypot(result.stds, result.truth_stds)
    draw(run, "coverage", plots.plot_coverage, estimates=result.estimates, sigmas=sigmas,
         truth=result.truth, z_alpha=cov.z_alpha, names=names,
         reference=PAPER_COVERAGE if is_paper_toy(cfg) else None)
    run.update_metadata(seeds={"coverage": seed})
    log("[coverage] " + ", ".join(f"{n}: {100 * c:.1f} %" for n, c in
                                  zip(names, result.fractions[:, 0], strict=True))
        + f" at nominal {100 * levels[0]:.1f} % over {result.n_datasets} data sets of "
        f"{n_events} events, {result.n_generated} events generated from f(x; ŵ) per set")
    return {"coverage": dict(zip(names, result.fractions[:, 0].tolist(), strict=True)),
            "level": levels[0], "n_generated": result.n_generated,
            "n_events": n_events, "integrals": result.integrals}


def _observables(cfg: Config, features: list[str]
                 ) -> tuple[Callable[[NDArray[np.float64]], NDArray[np.float64]] | None,
                            list[str], NDArray[np.float64], NDArray[np.float64] | None]:
    """The observable function g (None: first moments), names, O* and its error."""
    cov = cfg.coverage
    if cov.observables is None:
        truth = cov.truth if cov.truth is not None else cfg.data.generate.mean
        return None, list(features), np.asarray(truth, dtype=np.float64), None
    columns, thresholds = [], []
    for name, obs in cov.observables.items():
        if obs.feature not in features:
            raise ConfigError(f"coverage.observables.{name}: feature {obs.feature!r} is not "
                              f"one of the features {features}")
        columns.append(features.index(obs.feature))
        thresholds.append(np.nan if obs.above is None else obs.above)
    index, above = np.asarray(columns), np.asarray(thresholds)
    is_fraction = ~np.isnan(above)

    def g(x: NDArray[np.float64]) -> NDArray[np.float64]:
        # The mean of a feature, or the expectation of the indicator "feature > above".
        values = x[:, index]
        return np.where(is_fraction, values > np.where(is_fraction, above, 0.0), values
                        ).astype(np.float64)

    names = list(cov.observables)
    assert isinstance(cov.truth, dict)  # the config's validator guarantees it
    truth = np.array([cov.truth[n] for n in names])
    stds = None if cov.truth_std is None else np.array([cov.truth_std.get(n, 0.0) for n in names])
    return g, names, truth, stds


def file_datasets(run: RunDir, n_datasets: int, n_events: int | None, seed: int
                  ) -> list[NDArray[np.float64]]:
    """``n_datasets`` disjoint data sets of ``n_events`` events that trained no member.

    The weight-fit, centre and test splits are independent draws of the process the truth
    describes and no member has seen them: shuffled once with the stage's seed and cut into
    disjoint subsets, they are independent data sets, so the covered fraction is an honest
    binomial count. (The study refits only the weights; the GoF's use of the test split is
    untouched.) Weighted events are refused: the refit is unweighted.
    """
    held_out = []
    for split in ("weight_fit", "centres", "test"):
        if split_weights(run, split) is not None:
            raise ConfigError("the coverage study on file data needs unweighted events; "
                              f"the {split} split carries event weights (set "
                              "coverage.enabled: false)")
        held_out.append(split_events(run, split)[0])
    events = np.concatenate(held_out)
    size = n_events if n_events is not None else len(events) // n_datasets
    if size < 1 or size * n_datasets > len(events):
        raise ConfigError(
            f"coverage: {n_datasets} disjoint data sets of {n_events} events need "
            f"{n_datasets * (n_events or 1)} held-out events, but the weight-fit, centre and "
            f"test splits hold {len(events)}; lower coverage.n_datasets or coverage.n_events "
            f"(at most {len(events) // n_datasets} events for {n_datasets} data sets)")
    order = np.random.default_rng([seed, 2**31]).permutation(len(events))
    return [events[order[r * size:(r + 1) * size]] for r in range(n_datasets)]
