"""The Python entry point: run the pipeline on arrays or files, and load a run's results back.

::

    import genval as gv

    run = gv.run(x, config={"members": {"kind": "kde", "n_members": 10}})  # every stage
    run.gof["ensemble"].z, run.gof["ensemble"].p_interval                 # typed results
    run.fit, run.coverage, run.status                                     # WeightFit, ...
    run                                                                   # notebook: HTML

    run = gv.load_run("genval-run")   # a finished (or partial) run directory, same objects

:func:`run` writes a run directory like ``genval run`` (arrays are kept in it, so it resumes
and the command line works on it); :class:`Run` reads one through
:mod:`genval.pipeline.artifacts` into the result objects the stages wrote:
:class:`~genval.wifi.WeightFit` (Eqs. 1–2), :class:`~genval.gof.GoFResult` per variant
(Eq. 5), :class:`~genval.coverage.CoverageResult` (Eq. 4).

References:
    Badaracco et al., Steps 1–4.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._logging import handlers_configured, messages_to
from genval.config import Config, load_config, parse_config, with_overrides
from genval.errors import InputError
from genval.rundir import STAGES, RunDir, to_jsonable

__all__ = ["Run", "StageStatus", "run", "load_run"]


@dataclass(frozen=True)
class StageStatus:
    """Where one stage of a run stands.

    Attributes:
        stage: its name.
        done: finished under the run's current configuration.
        finished: when it finished (ISO time), or None.
        seconds: how long it took, or None.
        warnings: the warnings it recorded.
        skipped: why it did nothing (e.g. coverage on data from a file), or None.
        stale: a marker exists but from another configuration (the stage will re-run).
    """

    stage: str
    done: bool
    finished: str | None = None
    seconds: float | None = None
    warnings: tuple[str, ...] = field(default=())
    skipped: str | None = None
    stale: bool = False

    @property
    def state(self) -> str:
        """``done``, ``skipped``, ``stale`` or ``not run``, for tables."""
        if self.done:
            return "skipped" if self.skipped else "done"
        return "stale" if self.stale else "not run"


class Run:
    """A run directory's results as genval's result objects (read when first asked for).

    Only the results of stages that finished under the run's configuration are given (their
    marker, :meth:`RunDir.is_done`): files left by a killed stage, or by one made stale by
    re-running a stage it reads, are not results.

    Args:
        root: the run directory.

    Raises:
        RunDirError: ``root`` is not a run directory.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._run = RunDir.open(root)

    def __repr__(self) -> str:
        done = [s for s, st in self.status.items() if st.done]
        return f"Run({str(self.root)!r}, done: {', '.join(done) or 'nothing'})"

    def _repr_html_(self) -> str:  # notebook display, genval.display
        from genval.coverage import COVERAGE_CL
        from genval.display import run_html
        from genval.gof.statistic import VARIANT_LABELS

        return run_html(self, coverage_cl=COVERAGE_CL, labels=VARIANT_LABELS)

    @property
    def root(self) -> Path:
        return self._run.root

    @property
    def run_dir(self) -> RunDir:
        """The underlying :class:`~genval.rundir.RunDir` (layout, markers, metadata)."""
        return self._run

    @cached_property
    def config(self) -> Config:
        """The run's resolved configuration."""
        return self._run.config()

    @property
    def metadata(self) -> dict[str, Any]:
        """``metadata.json``: versions, seeds, device, data hashes, stage timings."""
        return self._run.metadata()

    @property
    def status(self) -> dict[str, StageStatus]:
        """Every stage's :class:`StageStatus`, in pipeline order (read afresh each time)."""
        out = {}
        for stage in STAGES:
            record = self._run.stage_record(stage)
            done = self._run.is_done(stage)
            info = dict(record.get("info", {})) if record else {}
            out[stage] = StageStatus(
                stage, done,
                finished=record.get("finished") if record else None,
                seconds=record.get("seconds") if record else None,
                warnings=tuple(str(w) for w in info.get("warnings", ())),
                skipped=str(info["skipped"]) if "skipped" in info else None,
                stale=record is not None and not done)
        return out

    @cached_property
    def fit(self) -> Any:
        """The :class:`~genval.wifi.WeightFit` of the fit stage, or None until it finished."""
        from genval.pipeline import artifacts

        # Files of a fit that is not finished (killed, or stale after a re-run) are no result.
        done = self._run.is_done("fit") and artifacts.has_fit(self._run)
        return artifacts.load_fit(self._run) if done else None

    @cached_property
    def gof_records(self) -> dict[str, Any]:
        """Per configured variant that ran, its :class:`~genval.pipeline.artifacts.GofRecord`
        (the result, the Z band over several test sets, or why it is undefined)."""
        from genval.pipeline import artifacts

        if not self._run.has_results("gof"):
            return {}
        records = {v: artifacts.load_gof(self._run, v) for v in self.config.gof.variants}
        return {v: r for v, r in records.items() if r is not None}

    @cached_property
    def conditional_gof(self) -> dict[str, Any]:
        """Conditional runs (``context:``): per variant that ran, its
        :class:`~genval.gof.ConditionalGoFResult` (Z per context bin, the combined Z, the
        look-elsewhere-corrected smallest p); empty for unconditional runs."""
        from genval.pipeline import artifacts

        if self.config.context is None:
            return {}
        records = {v: artifacts.load_conditional_gof(self._run, v)
                   for v in self.config.gof.variants}
        return {v: r for v, r in records.items() if r is not None}

    @cached_property
    def conditional_fit(self) -> Any:
        """Conditional runs: the :class:`~genval.conditional.ConditionalWeightFit` (shared or
        per-bin weights), None otherwise or before the fit stage ran."""
        from genval.pipeline import artifacts

        return artifacts.load_conditional_fit(self._run)

    @property
    def gof(self) -> dict[str, Any]:
        """Per variant, its :class:`~genval.gof.GoFResult` (first test set); undefined
        variants are left out (see :attr:`gof_records` for why). A failed variant's result
        carries its cause (``GoFResult.failure``); its p and Z raise ``FitError``."""
        return {v: r.result for v, r in self.gof_records.items() if r.result is not None}

    @cached_property
    def _coverage_record(self) -> Any:
        from genval.pipeline import artifacts

        return artifacts.load_coverage(self._run) if self._run.has_results("coverage") else None

    @property
    def coverage(self) -> Any:
        """The :class:`~genval.coverage.CoverageResult`, or None (not run, or skipped)."""
        record = self._coverage_record
        return None if record is None else record.result

    @property
    def coverage_features(self) -> list[str]:
        """The feature names of the coverage study's observables (first moments)."""
        record = self._coverage_record
        return [] if record is None else list(record.features)

    def members(self) -> Any:
        """The members the train stage built (flows loaded on the config's device)."""
        from genval.pipeline import artifacts

        return artifacts.load_members(self._run)

    def samples(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """The oversampled events with f̂ and σ_f̂ (Eq. 3): ``(x, density, density_std)``.

        Raises:
            RunDirError: the sample stage has not finished.
        """
        from genval.pipeline import artifacts

        self._run.require_done("sample")

        table, density, density_std = artifacts.load_samples(self._run)
        return table.x, density, density_std

    def events(self, split: str) -> NDArray[np.float64]:
        """The events of ``split`` (``train``, ``weight_fit``, ``centres``, ``test``)."""
        from genval.pipeline import artifacts

        return artifacts.split_events(self._run, split)[0]

    @property
    def figures(self) -> dict[str, Path]:
        """The PNG figures drawn so far, by name (``marginals``, ``null_ensemble``, ...)."""
        folder = self.root / "figures"
        return {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}

    @property
    def report_path(self) -> Path:
        return self._run.report_path

    def summary(self) -> dict[str, Any]:
        """The run's numbers as plain JSON-able values (``genval results --json``).

        ``gof``: per variant t_obs, p with its Clopper–Pearson interval (and the one widened
        by the pools' share), Z with its interval, whether Z is only a lower bound, the
        scaled-χ² extrapolation, toys and failed toys, the Z band over several test sets, or
        the error that made it undefined. ``coverage``: per feature the covered fraction at
        each level with its interval. ``fit``: convergence and the fit's diagnostics.
        """
        from genval.coverage import COVERAGE_CL

        out: dict[str, Any] = {"run": str(self.root),
                               "status": {s: st.state for s, st in self.status.items()}}
        fit = self.fit
        if fit is not None:
            out["fit"] = {"converged": fit.converged, "n_iter": fit.n_iter, "nll": fit.nll,
                          "n_members": fit.n_members, "n_events": fit.n_events,
                          "hessian_condition": fit.hessian_condition,
                          "effective_rank": fit.effective_rank,
                          "abs_weight_sum": fit.abs_weight_sum, "warnings": list(fit.messages)}
        gof: dict[str, Any] = {}
        for variant, record in self.gof_records.items():
            res = record.result
            if record.error is not None or res is None:
                # undefined (no result) or failed (no p, no Z): the cause, in one line
                gof[variant] = {"error": record.error, "failed": res is not None}
                continue
            entry = {"t_obs": res.t_obs, "p_value": res.p_value, "cl": res.cl,
                     "p_interval": list(res.p_interval),
                     "p_interval_total": list(res.p_interval_total),
                     "z": res.z, "z_interval": list(res.z_interval),
                     "z_is_lower_bound": res.z_is_bound, "z_chi2_extrapolated": None,
                     "n_toys": res.n_toys, "n_failed": res.n_failed,
                     "p_bounds": list(res.p_bounds),
                     "observed_converged": bool(getattr(res.observed, "converged", True)),
                     "z_summary": None if record.z_summary is None else vars(record.z_summary)}
            try:
                entry["z_chi2_extrapolated"] = res.z_chi2
            except InputError:  # too few positive toy statistics to fit the scaled χ²
                pass
            gof[variant] = entry
        for variant, result in self.conditional_gof.items():
            if variant in gof:
                gof[variant]["context"] = _context_summary(result)
        if gof:
            out["gof"] = gof
        cfit = self.conditional_fit
        if cfit is not None and cfit.per_bin and self.config.context is not None:
            labels = self.config.context.context_bins().labels
            out["fit_per_bin"] = [{"bin": label, "converged": f.converged, "n_iter": f.n_iter,
                                   "n_events": f.n_events, "abs_weight_sum": f.abs_weight_sum,
                                   "effective_rank": f.effective_rank}
                                  for label, f in zip(labels, cfit.fits, strict=True)]
        cov = self.coverage
        if cov is not None:
            bounds = cov.intervals(COVERAGE_CL)
            names = self.coverage_features or [f"observable {p}" for p in range(len(cov.truth))]
            out["coverage"] = {
                "cl": COVERAGE_CL, "levels": list(cov.levels), "n_datasets": cov.n_datasets,
                "n_not_converged": int(np.sum(~cov.converged)),
                "features": {name: {"truth": float(cov.truth[p]),
                                    "fractions": list(cov.fractions[p]),
                                    "intervals": [list(b) for b in bounds[p]]}
                             for p, name in enumerate(names)}}
        return to_jsonable(out)


def _context_summary(result: Any) -> dict[str, Any]:
    """Z per context bin beside the combined Z and the look-elsewhere numbers (JSON-able)."""
    bins = []
    for label, res in zip(result.bins.labels, result.per_bin, strict=True):
        entry: dict[str, Any] = {"bin": label, "n_test": res.n_test, "t_obs": res.t_obs}
        if res.ok:
            entry.update(p_value=res.p_value, z=res.z, z_is_lower_bound=res.z_is_bound)
        else:
            entry["error"] = str(res.failure)
        bins.append(entry)
    return {"bins": bins, "z_combined": result.z_combined,
            "z_combined_is_lower_bound": bool(result.combined.ok and result.combined.z_is_bound),
            "p_min": result.p_min,
            "bin_min": None if result.bin_min < 0 else result.bins.labels[result.bin_min],
            "p_global": result.p_global, "z_global": result.z_global,
            "per_bin_weights": result.per_bin_weights}


def load_run(path: str | os.PathLike[str]) -> Run:
    """A run directory (finished or not) as a :class:`Run`.

    Raises:
        RunDirError: ``path`` is not a run directory.
    """
    return Run(path)


_TEST_EVENTS_PENDING = "(the test_events given to genval.run).npz"
"""``data.test_path`` while a mapping config is validated: ``run_pipeline`` sets the real one.
It names a format, as every ``data.test_path`` must."""


def _as_config(config: Config | Mapping[str, Any] | str | os.PathLike[str] | None, *,
               test_events_given: bool) -> Config:
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        tree = copy.deepcopy(dict(config))
        if test_events_given:
            # Validated as it will run: the test split comes from test_events, not the cuts.
            tree["splits"] = {**tree.get("splits", {}), "test": None}
            tree["data"] = {**tree.get("data", {}), "test_path": _TEST_EVENTS_PENDING}
        return parse_config(tree, source="config")
    return load_config(config)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run(events: ArrayLike | str | os.PathLike[str] | None = None, *,
        config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        test_events: ArrayLike | str | os.PathLike[str] | None = None,
        features: Sequence[str] | None = None, run_dir: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None, force: bool = False,
        stages: Sequence[str] = STAGES) -> Run:
    """Run the pipeline (Steps 1–4) and return its results as a :class:`Run`.

    Args:
        events: the events: an array (N, D) or table (e.g. a pandas DataFrame), or an event
            file ``FILE[:KEY]``; None: ``data.path`` of the config (or its generated toy).
        config: a :class:`~genval.config.Config`, a mapping of sections (as in YAML), a YAML
            file, or None for the defaults (the paper's sizes: 60 flows, 200 toys).
        test_events: held-out test events (array or file); the test split is then not cut
            from ``events`` (``splits.test`` is null; give the other splits' fractions).
        features: the array's feature names (default: its columns, else ``x0, x1, ...``).
        run_dir: the run directory (default ``config.run_dir``).
        overrides: dotted keys on top of ``config``, e.g. ``{"gof.n_toys": 50}``.
        force: re-run finished stages; replace a run of another config or other events.
        stages: the stages to run.

    Calling it again with the same inputs resumes (finished stages are skipped). Stage
    messages go to the ``genval`` logger; unless ``quiet``, they are also printed on stderr
    while the application has configured no logging handler of its own.
    """
    from genval.pipeline import run_pipeline

    cfg = _as_config(config, test_events_given=test_events is not None)
    if overrides:
        cfg = with_overrides(cfg, dict(overrides))
    show = not cfg.quiet and not handlers_configured()
    with messages_to(_stderr) if show else contextlib.nullcontext():
        result = run_pipeline(cfg, run_dir=run_dir, force=force, stages=stages, log=None,
                              events=events, test_events=test_events, features=features)
    return Run(result.root)
