"""The sample stage (paper Step 2, Eq. 3): events from f(x; ŵ) with their error band."""

from __future__ import annotations

from typing import Any

from genval.conditional import oversample_region
from genval.errors import ArtifactError
from genval.pipeline.artifacts import (
    context_layout,
    load_conditional_fit,
    load_fit,
    load_members,
    save_sampler,
    save_samples,
    split_events,
)
from genval.pipeline.context import ContextLayout
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.products import oversample
from genval.rundir import RunDir

__all__ = ["stage_sample"]


def stage_sample(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """Draw ``sample.n_events`` events from f(x; ŵ) and write them with f̂ and σ_f̂ (Eq. 3).

    The sampler's diagnostics (negative mass of f̂, envelope, violations) go to
    ``samples/sampler.json``; the stage's info keeps the negative mass.
    """
    cfg = run.config()
    layout = context_layout(run)
    if layout is not None:
        return _conditional_sample(run, layout, log)
    members, fit = load_members(run), load_fit(run)
    _, names = split_events(run, "weight_fit")
    seed = stage_seed(cfg, "sample")
    drawn = oversample(members, fit, cfg.sample.n_events, seed)
    path = save_samples(run, cfg.sample.output, drawn.x, names, drawn.density,
                        drawn.density_std, drawn.prior_share)
    save_sampler(run, drawn.sampler)
    run.update_metadata(seeds={"sample": seed})
    flagged = float(drawn.flagged.mean()) if drawn.flagged.size else 0.0
    prior = f", band mostly the ridge prior's at {flagged:.1%} of events" if flagged else ""
    log(f"[sample] {cfg.sample.n_events} events -> {path.name} "
        f"(acceptance {drawn.acceptance_rate:.1%}, "
        f"{drawn.sampler.get('evaluations_per_event', float('nan')):.2f} evaluations per "
        f"event, negative mass {drawn.negative_mass:.2g} ± {drawn.negative_mass_error:.1g}"
        f"{prior})")
    return {"path": str(path.relative_to(run.root)), "n_events": cfg.sample.n_events,
            "acceptance_rate": float(drawn.acceptance_rate),
            "negative_mass": float(drawn.negative_mass),
            "negative_mass_error": float(drawn.negative_mass_error),
            "prior_flagged_fraction": flagged}


def _conditional_sample(run: RunDir, layout: ContextLayout, log: Log) -> dict[str, Any]:
    """``context:`` runs: contexts resampled from the weight-fit split's and one event
    ``x ~ f(x | c; ŵ)`` at each (:func:`genval.conditional.oversample_region`), written with
    their contexts in the features' order, with ``f̂(x | c)`` and its Eq. (3) band."""
    cfg = run.config()
    members, fit = load_members(run), load_conditional_fit(run)
    if fit is None:
        raise ArtifactError(f"{run.root / 'fit'} holds no conditional fit: run the fit stage "
                            f"(`genval fit {run.root}`) again")
    events, names = split_events(run, "weight_fit")
    _, c_fit = layout.split(events)
    seed = stage_seed(cfg, "sample")
    drawn = oversample_region(members, fit, c_fit, {}, cfg.sample.n_events, seed,
                              bins=layout.bins)
    path = save_samples(run, cfg.sample.output, layout.join(drawn.x, drawn.context), names,
                        drawn.density, drawn.density_std)
    save_sampler(run, drawn.sampler)
    run.update_metadata(seeds={"sample": seed})
    negative = float(drawn.sampler.get("negative_mass", float("nan")))
    log(f"[sample] {cfg.sample.n_events} events x | c at the weight-fit split's contexts -> "
        f"{path.name} (negative mass {negative:.2g})")
    return {"path": str(path.relative_to(run.root)), "n_events": cfg.sample.n_events,
            "conditional": True, "negative_mass": negative}
