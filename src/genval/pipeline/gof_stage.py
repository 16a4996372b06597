"""The GoF stage (paper Step 4, Eq. 5; Figs. 1 and 2): the calibrated learned LRT per variant.

The toys may also run apart from the stage, as ranges in independent jobs
(:func:`run_gof_part`, ``genval gof RUN --toys A:B``) that :func:`merge_gof_parts`
(``genval merge RUN``) completes into the stage's results, exactly as one run would.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval import gof
from genval.compute import Executor
from genval.config import Config, config_hash
from genval.errors import FitError, GenvalWarning, InputError, WeakKernelWarning
from genval.members import Members
from genval.pipeline.artifacts import (
    GofPart,
    context_layout,
    fit_digest,
    load_conditional_fit,
    load_fit,
    load_gof_parts,
    load_members,
    load_transform,
    save_conditional_gof,
    save_gof,
    save_gof_error,
    save_gof_part,
    split_events,
    split_weights,
)
from genval.pipeline.context import ContextLayout
from genval.pipeline.gof_figures import alternative_figures, null_figure
from genval.pipeline.log import Log, quiet
from genval.pipeline.seeds import stage_seed
from genval.rundir import RunDir, RunDirError
from genval.wifi import WeightFit

__all__ = ["stage_gof", "run_gof_part", "merge_gof_parts", "missing_ranges",
           "GofVariantWarning", "one_line", "failed_toys_line"]


class GofVariantWarning(GenvalWarning):
    """A GoF variant could not be computed; the stage records why and runs the others."""


def one_line(message: str) -> str:
    """``message`` on one line (numpy prints long arrays over several)."""
    return " ".join(message.split())


def failed_toys_line(res: gof.GoFResult) -> str:
    """How many toys failed and why, e.g. "3 of 200 toys failed (3 alternative fit hit the
    iteration cap)"."""
    why = ", ".join(f"{n} {reason}" for reason, n in res.failure_reasons.items())
    return f"{res.n_failed} of {res.n_toys} toys failed ({why})"


@dataclass(frozen=True)
class _GofInputs:
    """What every variant's test reads from the run: members, fit, test sets, kernel basis."""

    config: Config
    members: Members
    fit: WeightFit
    chunks: list[NDArray[np.float64]]
    x_test: NDArray[np.float64]
    names: list[str]
    basis: gof.KernelBasis
    seed: int

    @classmethod
    def load(cls, run: RunDir, config: Config | None = None, log: Log = quiet) -> _GofInputs:
        """The inputs of ``run`` (``config``: the run's own with other runtime settings).

        Raises:
            InputError: the test events are weighted (:func:`genval.gof.require_unweighted`).
        """
        cfg = config if config is not None else run.config()
        x_test, names = split_events(run, "test")
        # Before anything is evaluated: the calibration holds for unweighted test events only.
        gof.require_unweighted(split_weights(run, "test"), len(x_test),
                               name=f"test events (data.weight {cfg.data.weight!r})")
        seed = stage_seed(cfg, "gof")
        # a part (config given) loads its members where its own job says, recording nothing
        members = load_members(run, device=None if config is None else cfg.device)
        fit = load_fit(run)
        x_centres, _ = split_events(run, "centres")
        # The kernels are Gaussian in the members' (transformed) coordinates: docs/method.md.
        basis = gof.KernelBasis.from_events(
            x_centres, cfg.gof.n_kernels, cfg.gof.sigma,
            standardize=cfg.gof.kernel_units == "standardised", transform=load_transform(run),
            seed=seed)
        log(f"[gof] kernels: K = {basis.n_kernels}, "
            f"{gof.kernel_basis_text(basis.describe())}")
        # Several test sets: disjoint chunks of the test split, one result each (median Z).
        chunks = np.array_split(x_test, cfg.gof.n_test_sets)
        return cls(cfg, members, fit, chunks, x_test, list(names), basis, seed)


def stage_gof(run: RunDir, *, log: Log = quiet, executor: Executor | None = None
              ) -> dict[str, Any]:
    """The learned likelihood-ratio test (Eq. 5) for every configured variant.

    Writes ``gof/VARIANT.json`` (t_obs, p, Z, χ² extrapolation, t_null), the null figure of
    each variant (Fig. 2) and the marginals of REF / DATA / LRT RECO (Fig. 1). A variant that
    is undefined (FitError) or failed (``GoFResult.failure``: t_obs not finite or its fit
    stopped, too many failed toys) is recorded with its cause in one line, warned about
    (:class:`GofVariantWarning`) and logged; the other variants and the figures go on. Toy
    ranges already computed for this run (``genval gof RUN --toys A:B``) are reused, the rest
    run here (on ``executor`` when given): the result equals a single run's.

    Raises:
        InputError: the test events are weighted (:func:`genval.gof.require_unweighted`).
    """
    cfg = run.config()
    if not cfg.gof.enabled:
        return {"skipped": "gof.enabled is false"}
    layout = context_layout(run)
    if layout is not None:
        return _conditional_gof(run, layout, log)
    inputs = _GofInputs.load(run, log=log)
    parts = _reusable_parts(run, inputs, log)
    missing = missing_ranges([(p.first, p.stop) for p in parts], cfg.gof.n_toys)
    for variant in cfg.gof.variants:
        log(f"[gof] {variant}: {cfg.gof.n_toys} toys x {len(inputs.chunks)} test set(s)")
    if parts:
        log(f"[gof] reusing toys {', '.join(p.label for p in parts)} from gof/parts; running "
            + (", ".join(f"{a}:{b}" for a, b in missing) or "none"))
    outcome = _run_variants(inputs, missing, parts, executor)
    return _record(run, inputs, outcome, log)


def run_gof_part(run: RunDir, first: int, stop: int, *, log: Log = quiet,
                 executor: Executor | None = None, config: Config | None = None) -> Path:
    """Toys ``first .. stop - 1`` of every variant and test set into a part file.

    For array jobs: each job computes one range (same pools, same toy streams as a full run)
    without the run lock and writes nothing else of the run; ``genval merge RUN``
    (:func:`merge_gof_parts`) completes the stage. ``config``: the run's configuration with
    other runtime settings (``quiet``, ``device``), never another configuration.

    Raises:
        RunDirError: the fit has not finished, the range is not within ``gof.n_toys``, or
            ``config`` is another configuration than the run's.
    """
    cfg = config if config is not None else run.config()
    if config_hash(cfg) != config_hash(run.config()):
        raise RunDirError(f"the configuration given is not that of {run.root}")
    if not cfg.gof.enabled:
        raise RunDirError("gof.enabled is false in this run's config: no toys to run")
    run.require("gof")
    _refuse_parts_of_conditional(cfg)
    if not 0 <= first < stop <= cfg.gof.n_toys:
        raise RunDirError(f"toy range {first}:{stop} is not within 0:{cfg.gof.n_toys} "
                          "(gof.n_toys)")
    inputs = _GofInputs.load(run, cfg, log)
    log(f"[gof] toys {first}:{stop} of {cfg.gof.n_toys}, variants "
        f"{', '.join(cfg.gof.variants)}, {len(inputs.chunks)} test set(s)")
    outcome = _run_variants(inputs, [(first, stop)], [], executor)
    results = {v: (one_line(str(r)) if isinstance(r, FitError) else r)
               for v, r in outcome.items()}
    return save_gof_part(run, GofPart(first, stop, config_hash(cfg), fit_digest(inputs.fit),
                                      results))


def merge_gof_parts(run: RunDir, *, log: Log = quiet) -> dict[str, Any]:
    """The gof stage's results from part files that together hold every toy.

    Raises:
        RunDirError: no parts, a part of another config or weight fit, overlapping ranges,
            or missing toys (the message names the missing ranges).
    """
    cfg = run.config()
    if not cfg.gof.enabled:
        raise RunDirError("gof.enabled is false in this run's config: nothing to merge")
    _refuse_parts_of_conditional(cfg)
    inputs = _GofInputs.load(run, log=log)
    parts = load_gof_parts(run)
    if not parts:
        raise RunDirError(f"no toy parts in {run.root / 'gof' / 'parts'}; write them with "
                          f"`genval gof {run.root} --toys A:B`")
    want, digest = config_hash(cfg), fit_digest(inputs.fit)
    for part in parts:
        if part.config_hash != want:
            raise RunDirError(f"{part.path} holds toys of another configuration; delete it")
        if part.fit_digest != digest:
            raise RunDirError(f"{part.path} holds toys of another weight fit (the fit stage ran "
                              "again since); delete it")
    ordered = sorted(parts, key=lambda p: p.first)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.first < a.stop:
            raise RunDirError(f"toy parts {a.label} ({a.path}) and {b.label} ({b.path}) overlap")
    missing = missing_ranges([(p.first, p.stop) for p in parts], cfg.gof.n_toys)
    if missing:
        gaps = ", ".join(f"{a}:{b}" for a, b in missing)
        raise RunDirError(f"toys missing from the parts: {gaps} of 0:{cfg.gof.n_toys}; run "
                          f"`genval gof {run.root} --toys A:B` for each")
    log(f"[gof] merging {len(parts)} part(s): {', '.join(p.label for p in ordered)}")
    return _record(run, inputs, _run_variants(inputs, [], ordered, None), log)


def _refuse_parts_of_conditional(cfg: Config) -> None:
    if cfg.context is not None:
        raise RunDirError("toy ranges (--toys A:B, merge) are not available for conditional "
                          "runs (context:); run the gof stage whole")


def _conditional_gof(run: RunDir, layout: ContextLayout, log: Log) -> dict[str, Any]:
    """``context:`` runs: Eq. (5) within each context bin, the bins' t combined and the
    smallest p corrected for the look elsewhere, from one set of joint toys per variant
    (:func:`genval.gof.conditional_goodness_of_fit`).

    Each bin's kernels have their centres drawn from the centres split's events of that bin
    (:func:`genval.gof.bin_kernel_bases`): fixed Gaussians in the members' coordinates of x,
    or following the conditional mean (``context.kernels: follow``). Writes
    ``gof/VARIANT.json`` (the combined test, read by every reader of a variant) and
    ``gof/VARIANT-context.json`` (Z per bin, combined, look-elsewhere) and the null figure of
    the combined t; an undefined variant is recorded, warned about and the others go on.
    """
    cfg = run.config()
    events, _ = split_events(run, "test")
    gof.require_unweighted(split_weights(run, "test"), len(events),
                           name=f"test events (data.weight {cfg.data.weight!r})")
    x_test, c_test = layout.split(events)
    x_centres, c_centres = layout.split(split_events(run, "centres")[0])
    members = load_members(run)
    fit = load_conditional_fit(run)
    if fit is None:
        raise RunDirError(f"{run.root / 'fit'} holds no conditional fit: run the fit stage "
                          f"(`genval fit {run.root}`) again")
    seed = stage_seed(cfg, "gof")
    t_x, _ = layout.transforms(load_transform(run))
    bases = gof.bin_kernel_bases(
        x_centres, c_centres, layout.bins, cfg.gof.n_kernels, cfg.gof.sigma,
        standardize=cfg.gof.kernel_units == "standardised", follow_context=layout.follow,
        transform=None if layout.follow else t_x, seed=seed)
    log(f"[gof] x | c in {layout.bins.n_bins} context bin(s): "
        f"{', '.join(layout.bins.labels)}; K = {cfg.gof.n_kernels} kernels per bin "
        f"({'following the context' if layout.follow else 'fixed in x'}), "
        f"{cfg.gof.n_toys} joint toys")
    settings = _settings(cfg)
    summary: dict[str, Any] = {}
    for variant in cfg.gof.variants:
        member = cfg.gof.single_member if variant == "single" else None
        try:
            result = gof.conditional_goodness_of_fit(
                members, fit, x_test, c_test, bases, layout.bins, n_toys=cfg.gof.n_toys,
                seed=seed, variant=variant, member=member, settings=settings)
        except FitError as exc:
            summary[variant] = _record_undefined(run, variant, exc, log)
            continue
        save_conditional_gof(run, result)
        for line in repr(result).splitlines()[1:]:
            log(f"[gof] {variant}: {line.strip()}")
        combined = result.combined
        if not combined.ok:
            message = one_line(str(combined.failure))
            warnings.warn(f"GoF variant {variant!r} failed: {message}", GofVariantWarning,
                          stacklevel=3)
            summary[variant] = {"error": message}
            continue
        null_figure(run, variant, [combined], None)
        summary[variant] = {"t_obs": float(combined.t_obs), "z": float(combined.z),
                            "z_per_bin": result.z_per_bin.tolist(),
                            "p_global": float(result.p_global),
                            "n_failed_toys": combined.n_failed}
    run.update_metadata(seeds={"gof": seed})
    return summary


def missing_ranges(ranges: Sequence[tuple[int, int]], n_toys: int) -> list[tuple[int, int]]:
    """The ranges of ``0 .. n_toys - 1`` that ``ranges`` leave uncovered, in order."""
    covered = np.zeros(n_toys, dtype=bool)
    for a, b in ranges:
        covered[max(a, 0):min(b, n_toys)] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[True], covered, [True]]).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _reusable_parts(run: RunDir, inputs: _GofInputs, log: Log) -> list[GofPart]:
    """Saved parts of this config and fit, without overlaps (others are logged and left)."""
    want, digest = config_hash(inputs.config), fit_digest(inputs.fit)
    keep: list[GofPart] = []
    for part in sorted(load_gof_parts(run), key=lambda p: p.first):
        if part.config_hash != want or part.fit_digest != digest:
            log(f"[gof] ignoring {part.path}: toys of another configuration or weight fit")
        elif keep and part.first < keep[-1].stop:
            log(f"[gof] ignoring {part.path}: overlaps toys {keep[-1].label}")
        elif part.stop > inputs.config.gof.n_toys:
            log(f"[gof] ignoring {part.path}: beyond gof.n_toys = {inputs.config.gof.n_toys}")
        else:
            keep.append(part)
    return keep


def _record_undefined(run: RunDir, variant: str, error: FitError, log: Log) -> dict[str, str]:
    """One variant undefined (e.g. a signed mixture <= 0 at test events) must not cost the
    others: record why, warn, and go on. Returns the variant's entry of the stage summary."""
    message = one_line(str(error))
    save_gof_error(run, variant, message)
    warnings.warn(f"GoF variant {variant!r} undefined: {message}", GofVariantWarning,
                  stacklevel=4)
    log(f"[gof] {variant}: UNDEFINED: {message}")
    return {"error": message}


def _record(run: RunDir, inputs: _GofInputs, outcome: dict[str, list[gof.GoFResult] | FitError],
            log: Log) -> dict[str, Any]:
    """Save every variant's results and figures; the stage's summary."""
    cfg = inputs.config
    summary: dict[str, Any] = {}
    observed: dict[str, Any] = {}
    for variant in cfg.gof.variants:
        results = outcome[variant]
        if isinstance(results, FitError):
            summary[variant] = _record_undefined(run, variant, results, log)
            continue
        failed = [(i, r) for i, r in enumerate(results) if not r.ok]
        if failed:
            # A failed t (observed or too many toys) has no p and no Z: record the result with
            # its cause, warn, and go on with the other variants.
            i, res = failed[0]
            where = f" (test set {i + 1} of {len(results)})" if len(results) > 1 else ""
            message = one_line(f"{res.failure}{where}")
            save_gof(run, [res], None)
            warnings.warn(f"GoF variant {variant!r} failed: {message}", GofVariantWarning,
                          stacklevel=3)
            log(f"[gof] {variant}: FAILED: {message}")
            summary[variant] = {"error": message}
            continue
        z_summary = gof.summarize_z(results) if len(results) > 1 else None
        save_gof(run, results, z_summary)
        null_figure(run, variant, results, z_summary)
        res = results[0]
        summary[variant] = {"t_obs": float(res.t_obs), "z": float(res.z),
                            "z_chi2": float(res.z_chi2), "n_sets": len(results),
                            "n_failed_toys": res.n_failed}
        observed[variant] = res.observed
        bound = "≥ " if res.z_is_bound else ""
        lo, hi = res.p_interval_total
        log(f"[gof] {variant}: t_obs = {res.t_obs:.4g}, p = {res.p_value:.3g} "
            f"[{lo:.3g}, {hi:.3g} with the pools' share], Z = {bound}{res.z:.2f} "
            f"({res.n_used} toys), Z(χ² extrapolation) = {res.z_chi2:.2f}")
        if res.n_failed:
            blo, bhi = res.p_bounds
            log(f"[gof] {variant}: {failed_toys_line(res)}; p in [{blo:.3g}, {bhi:.3g}] "
                "counting them below or above t_obs")
    # LRT RECO of Fig. 1 is the alternative profiled for the ensemble with uncertainty.
    reco_stat = observed.get("ensemble", next(iter(observed.values()), None))
    alternative_figures(run, inputs.members, inputs.fit, inputs.basis, inputs.x_test,
                        inputs.names, reco_stat, stage_seed(cfg, "figures"))
    run.update_metadata(seeds={"gof": inputs.seed})
    return summary


def _warn_weak_kernels(prepared: gof.PreparedGoF, fit: WeightFit, test_set: int) -> None:
    """Warn when the kernels' amplitudes rest on a handful of test events each.

    The toys still calibrate such a test (p stays valid), but its null is heavy-tailed and it
    sees little of a smooth deviation: seen on Pythia multijet events with broad kernels,
    whose Gaussian tails reach past the spectra's edges (docs/choosing-kernels.md).
    """
    rows = prepared.test_rows
    events = gof.kernel_effective_events(rows.f, rows.g, fit.weights)
    median = float(np.median(events))
    if median < gof.MIN_KERNEL_EVENTS:
        warnings.warn(
            f"test set {test_set}: each GoF kernel is decided by few test events (median "
            f"{median:.3g} effective events of {rows.f.shape[0]}, smallest {events.min():.3g}; "
            f"below {gof.MIN_KERNEL_EVENTS:g}): the kernels reach where the model has almost no "
            f"density. The toys keep p valid, but the test has little power for smooth "
            f"deviations; try narrower kernels (gof.sigma) or other transforms "
            f"(docs/choosing-kernels.md)", WeakKernelWarning, stacklevel=2)


def _settings(cfg: Config) -> gof.GoFSettings:
    """The :class:`~genval.gof.GoFSettings` of ``cfg.gof``."""
    return gof.GoFSettings(
        centre=cfg.gof.constraint_centre, toy_size=cfg.gof.toy_size, n_pools=cfg.gof.n_pools,
        pool_size=cfg.gof.pool_size, n_jobs=cfg.gof.n_jobs,
        max_negative_mass=cfg.gof.max_negative_mass,
        max_failed_fraction=cfg.gof.max_failed_fraction,
        profile=gof.ProfileSettings(lam=cfg.gof.lambda_net))


def _run_variants(inputs: _GofInputs, ranges: Sequence[tuple[int, int]],
                  parts: Sequence[GofPart], executor: Executor | None
                  ) -> dict[str, list[gof.GoFResult] | FitError]:
    """Every variant on every test set (test set ``i`` seeds its pools and toys ``seed + i``):
    toys ``ranges`` computed here, the others read from ``parts``.

    Per test set, the test events are evaluated once and the frozen and ensemble variants
    share their pools from f(x; ŵ) (:func:`genval.gof.prepare`); the results equal separate
    calls, and a test merged from toy ranges equals one run over all of them. A variant
    undefined on some test set (or in some part) maps to its :class:`FitError`.
    """
    cfg, members, fit, basis = inputs.config, inputs.members, inputs.fit, inputs.basis
    out: dict[str, list[gof.GoFResult] | FitError] = {v: [] for v in cfg.gof.variants}
    settings = _settings(cfg)
    for i, chunk in enumerate(inputs.chunks):
        prepared = gof.prepare(members, chunk, basis, inputs.seed + i, settings=settings)
        _warn_weak_kernels(prepared, fit, i)
        for variant in cfg.gof.variants:
            done = out[variant]
            if isinstance(done, FitError):
                continue
            stored = [p.results.get(variant) for p in parts]
            failed = next((r for r in stored if isinstance(r, str)), None)
            if failed is not None:
                out[variant] = FitError(failed)
                continue
            member = cfg.gof.single_member if variant == "single" else None
            try:
                computed = [gof.goodness_of_fit(
                    members, fit, chunk, basis, n_toys=b - a, seed=inputs.seed + i,
                    variant=variant, settings=settings, prepared=prepared, member=member,
                    first_toy=a, progress=not cfg.quiet, scheduler=executor)
                    for a, b in ranges]
                observed = computed[0].observed if computed else gof.observed_statistic(
                    members, fit, chunk, basis, inputs.seed + i, variant=variant,
                    member=member, settings=settings, prepared=prepared)
            except FitError as exc:
                out[variant] = exc
                continue
            done.append(_combine(computed, stored, i, variant, observed))
        prepared.clear()
    return out


def _combine(computed: list[gof.GoFResult], stored: list[Any], test_set: int, variant: str,
             observed: Any) -> gof.GoFResult:
    """One result from toy ranges computed here and stored in parts (:func:`merge_results`,
    which checks that they agree); with parts alone, the observed fits computed here (for the
    figures) must give their t_obs."""
    pieces = list(computed)
    for results in stored:
        if results is None or len(results) <= test_set:
            raise RunDirError(f"a gof part lacks variant {variant!r} or test set {test_set}")
        pieces.append(results[test_set])
    try:
        merged = gof.merge_results(pieces)
    except InputError as exc:
        raise RunDirError(f"gof parts disagree with this run ({exc}); delete gof/parts") from exc
    if computed:
        return merged  # the observed fits of the first range computed here
    if not np.isclose(merged.t_obs, float(observed), rtol=1e-9, atol=1e-12, equal_nan=True):
        raise RunDirError(f"gof parts hold t_obs = {merged.t_obs} for {variant!r}, this run "
                          f"computes {float(observed)}: toys of other data; delete gof/parts")
    return replace(merged, observed=observed)
