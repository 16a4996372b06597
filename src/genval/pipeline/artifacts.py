"""Every artifact of a run directory, each written and read in exactly one place.

A stage never builds a path or a JSON key of another stage's output: it calls the ``save_*``
and ``load_*`` pair here, and the schema of each file is the result object's own
``to_dict`` / ``from_dict`` (:class:`~genval.wifi.WeightFit`,
:class:`~genval.coverage.CoverageResult`, :class:`~genval.gof.GoFResult`), so renaming a field
changes writer and reader together. Arrays go to ``.npz`` (exact), scalars and short lists to
``.json`` (readable); every file is written atomically.

==========================  ============================================  ===============
file                        content                                       written by
==========================  ============================================  ===============
data/events.npz             the event table (:mod:`genval.io`)            split
data/test_events.npz        separate test events, when configured         split
data/splits.npz             split indices and hash (:class:`Splits`)      split
models/kde.json             :class:`KdeSpec` (KDE members are rebuilt)    train
models/ensemble.safetensors the flow ensemble                             train
models/history.npz          :class:`LearningCurves` of the flows          train
fit/fit.npz, fit/fit.json   :class:`~genval.wifi.WeightFit`               fit
samples/OUTPUT, density.npz oversampled events with f̂ and σ_f̂ (Eq. 3)     sample
samples/sampler.json        the sampler's diagnostics, negative mass      sample
coverage/coverage.npz|json  :class:`~genval.coverage.CoverageResult`      coverage
gof/VARIANT.json            :class:`GofRecord` (GoFResult, Z band)        gof
==========================  ============================================  ===============

References:
    Badaracco et al., Eqs. (1)-(5): the quantities each artifact holds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._atomic import atomic_write_bytes, atomic_write_json
from genval.coverage import CoverageResult
from genval.errors import ArtifactError
from genval.gof import GoFResult, ZSummary
from genval.io import EventTable, read_events, write_events
from genval.members import KDEMembers, Members
from genval.rundir import RunDir, to_jsonable
from genval.splits import Splits
from genval.wifi import WeightFit

__all__ = [
    "save_npz", "load_json",
    "save_events", "save_test_events", "split_events", "save_splits", "load_splits",
    "KdeSpec", "save_kde", "load_kde", "save_ensemble", "load_members",
    "LearningCurves", "save_history", "load_history",
    "save_fit", "has_fit", "load_fit", "save_samples", "load_samples", "load_prior_share",
    "save_sampler", "load_sampler",
    "CoverageRecord", "save_coverage", "load_coverage",
    "GofRecord", "save_gof", "save_gof_error", "load_gof",
]


# --- generic writers ------------------------------------------------------------------------

def save_npz(path: Path, **arrays: Any) -> Path:
    """``np.savez`` through memory and an atomic rename: never a truncated ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_json(path: Path) -> dict[str, Any]:
    """A JSON artifact; an unreadable one is an :class:`~genval.errors.ArtifactError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc


def _load_npz(path: Path) -> dict[str, NDArray[Any]]:
    with np.load(path, allow_pickle=False) as arrays:
        return {k: arrays[k] for k in arrays.files}


def _split_arrays(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``record`` as (numpy arrays, everything else): the ``.npz`` and ``.json`` halves."""
    arrays = {k: v for k, v in record.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in record.items() if k not in arrays}


# --- events and splits (split stage) ---------------------------------------------------------

def _events_path(run: RunDir) -> Path:
    return run.root / "data" / "events.npz"


def _test_events_path(run: RunDir) -> Path:
    return run.root / "data" / "test_events.npz"


def save_events(run: RunDir, table: EventTable) -> Path:
    """The full event table the splits index into."""
    run.dir("data")
    return write_events(_events_path(run), table.x, table.names)


def save_test_events(run: RunDir, table: EventTable) -> Path:
    """Test events read from ``data.test_path`` (then the test split is not cut)."""
    run.dir("data")
    return write_events(_test_events_path(run), table.x, table.names)


def save_splits(run: RunDir, splits: Splits) -> Path:
    """The split indices and their hash."""
    run.dir("data")
    splits.save(run.splits_path)
    return run.splits_path


def load_splits(run: RunDir) -> Splits:
    """The splits recorded by the split stage (hash re-checked by :meth:`Splits.load`)."""
    return Splits.load(run.splits_path)


def split_events(run: RunDir, name: str) -> tuple[NDArray[np.float64], list[str]]:
    """The events of split ``name`` and the feature names, from the run's recorded split."""
    table = read_events(_events_path(run))
    splits = load_splits(run)
    if name == "test" and "test" not in splits.indices:
        test = read_events(_test_events_path(run), table.names)
        return test.x, test.names
    return splits.take(table.x, name), table.names


# --- members (train stage) -------------------------------------------------------------------

@dataclass(frozen=True)
class KdeSpec:
    """What rebuilds the KDE members exactly: they are a deterministic function of the train
    split, ``n_members``, ``bandwidth`` and ``seed``."""

    n_members: int
    bandwidth: Any
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "kde", "n_members": self.n_members, "bandwidth": self.bandwidth,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KdeSpec:
        return cls(int(data["n_members"]), data["bandwidth"], int(data["seed"]))

    def build(self, x_train: ArrayLike) -> KDEMembers:
        return KDEMembers(x_train, self.n_members, bandwidth=self.bandwidth, seed=self.seed)


def _kde_path(run: RunDir) -> Path:
    return run.root / "models" / "kde.json"


def _ensemble_path(run: RunDir) -> Path:
    return run.root / "models" / "ensemble.safetensors"


def save_kde(run: RunDir, spec: KdeSpec) -> Path:
    run.dir("models")
    return atomic_write_json(_kde_path(run), spec.to_dict())


def load_kde(run: RunDir) -> KdeSpec:
    return KdeSpec.from_dict(load_json(_kde_path(run)))


def save_ensemble(run: RunDir, ensemble: Any) -> Path:
    """A trained :class:`genval.flows.FlowEnsemble` (safetensors, written by the ensemble)."""
    run.dir("models")
    ensemble.save(_ensemble_path(run))
    return _ensemble_path(run)


def load_members(run: RunDir) -> Members:
    """The members saved by the train stage (KDE rebuilt, flows loaded on the run's device)."""
    if run.config().members.kind == "kde":
        x_train, _ = split_events(run, "train")
        return load_kde(run).build(x_train)
    from genval.flows import FlowEnsemble  # torch loads only for flow members

    device = run.metadata().get("device", {}).get("resolved", "cpu")
    return FlowEnsemble.load(_ensemble_path(run), device=device)


@dataclass(frozen=True)
class LearningCurves:
    """The learning curves kept from :class:`genval.flows.TrainingHistory`.

    Attributes:
        train_loss: (epochs, M) training NLL, NaN after a member stopped.
        val_loss: (epochs, M) validation NLL, NaN after a member stopped.
        best_epoch: (M,) 0-based epoch of the kept parameters.
    """

    train_loss: NDArray[np.float64]
    val_loss: NDArray[np.float64]
    best_epoch: NDArray[np.int64]

    @classmethod
    def from_history(cls, history: Any) -> LearningCurves:
        return cls(np.asarray(history.train_loss), np.asarray(history.val_loss),
                   np.asarray(history.best_epoch))

    def to_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss,
                "best_epoch": self.best_epoch}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearningCurves:
        return cls(np.asarray(data["train_loss"], dtype=np.float64),
                   np.asarray(data["val_loss"], dtype=np.float64),
                   np.asarray(data["best_epoch"], dtype=np.int64))


def _history_path(run: RunDir) -> Path:
    return run.root / "models" / "history.npz"


def save_history(run: RunDir, curves: LearningCurves) -> Path:
    run.dir("models")
    return save_npz(_history_path(run), **curves.to_dict())


def load_history(run: RunDir) -> LearningCurves:
    return LearningCurves.from_dict(_load_npz(_history_path(run)))


# --- weight fit (fit stage) ------------------------------------------------------------------

def _fit_paths(run: RunDir) -> tuple[Path, Path]:
    return run.root / "fit" / "fit.npz", run.root / "fit" / "fit.json"


def save_fit(run: RunDir, fit: WeightFit) -> Path:
    """ŵ, Cov(ŵ), C_r in ``fit.npz``; the diagnostics (and ŵ ± σ, to read) in ``fit.json``."""
    run.dir("fit")
    npz, json_path = _fit_paths(run)
    arrays, scalars = _split_arrays(fit.to_dict())
    save_npz(npz, **arrays)
    atomic_write_json(json_path, {**to_jsonable(scalars), "weights": fit.weights.tolist(),
                                  "weight_std": fit.weight_std.tolist()})
    return json_path


def has_fit(run: RunDir) -> bool:
    """Whether the fit stage has saved a fit."""
    return all(path.is_file() for path in _fit_paths(run))


def load_fit(run: RunDir) -> WeightFit:
    """The :class:`~genval.wifi.WeightFit` saved by the fit stage (arrays exact, from npz)."""
    npz, json_path = _fit_paths(run)
    return WeightFit.from_dict({**load_json(json_path), **_load_npz(npz)})


# --- oversampled events (sample stage) -------------------------------------------------------

def save_samples(run: RunDir, output: str, x: NDArray[np.float64], names: Sequence[str],
                 density: NDArray[np.float64], density_std: NDArray[np.float64],
                 prior_share: NDArray[np.float64] | None = None) -> Path:
    """Events drawn from f(x; ŵ) in ``samples/OUTPUT`` and their f̂, σ_f̂ (Eq. 3), with the
    share of σ_f̂² from the weight fit's ridge prior when given (:func:`load_prior_share`)."""
    out = run.dir("samples")
    path = write_events(out / output, x, names)
    extra = {} if prior_share is None else {"prior_share": prior_share}
    save_npz(out / "density.npz", density=density, density_std=density_std, **extra)
    return path


def load_prior_share(run: RunDir) -> NDArray[np.float64] | None:
    """The share of σ_f̂² that the ridge prior carries at each oversampled event
    (:meth:`genval.wifi.WeightFit.density_band`), or None in runs saved without it."""
    return _load_npz(run.root / "samples" / "density.npz").get("prior_share")


def load_samples(run: RunDir) -> tuple[EventTable, NDArray[np.float64], NDArray[np.float64]]:
    """The oversampled events with their f̂ and σ_f̂."""
    out = run.root / "samples"
    table = read_events(out / run.config().sample.output)
    arrays = _load_npz(out / "density.npz")
    return table, arrays["density"], arrays["density_std"]


def save_sampler(run: RunDir, diagnostics: Mapping[str, Any]) -> Path:
    """The sampler's diagnostics (:meth:`genval.sampling.MixtureSample.diagnostics`): the
    negative mass of f(x; ŵ), the envelope constant, violations, evaluations per event."""
    path = run.dir("samples") / "sampler.json"
    atomic_write_json(path, to_jsonable(dict(diagnostics)))
    return path


def load_sampler(run: RunDir) -> dict[str, Any] | None:
    """The sampler's diagnostics, or ``None`` before the sample stage ran."""
    path = run.root / "samples" / "sampler.json"
    return load_json(path) if path.is_file() else None


# --- coverage study (coverage stage) ---------------------------------------------------------

@dataclass(frozen=True)
class CoverageRecord:
    """A saved coverage study and the feature names of its observables (first moments)."""

    result: CoverageResult
    features: list[str]


def _coverage_paths(run: RunDir) -> tuple[Path, Path]:
    return run.root / "coverage" / "coverage.npz", run.root / "coverage" / "coverage.json"


def save_coverage(run: RunDir, result: CoverageResult, features: Sequence[str]) -> Path:
    """Every array of the study in ``coverage.npz``; the summary to read in ``coverage.json``."""
    run.dir("coverage")
    npz, json_path = _coverage_paths(run)
    arrays, scalars = _split_arrays(result.to_dict())
    save_npz(npz, **arrays)
    summary = {"truth": result.truth, "levels": result.levels, "fractions": result.fractions,
               "features": list(features), "n_datasets": result.n_datasets, **scalars}
    atomic_write_json(json_path, to_jsonable(summary))
    return json_path


def load_coverage(run: RunDir) -> CoverageRecord | None:
    """The coverage study, or None when the stage did not run one (skipped or not yet run)."""
    npz, json_path = _coverage_paths(run)
    if not json_path.is_file():
        return None
    summary = load_json(json_path)
    result = CoverageResult.from_dict({**summary, **_load_npz(npz)})
    return CoverageRecord(result, [str(f) for f in summary["features"]])


# --- goodness of fit (gof stage) -------------------------------------------------------------

@dataclass(frozen=True)
class GofRecord:
    """One GoF variant as saved: its result on the first test set and, with several test sets,
    the median and 16–84 % band of Z; or why the variant could not be computed.

    Attributes:
        variant: "single", "frozen" or "ensemble".
        result: the :class:`~genval.gof.GoFResult` of the first test set (``observed`` is not
            saved: None), or None when ``error`` is set.
        z_summary: Z over every test set when there were several.
        error: why the variant is undefined (e.g. f(x; ŵ) <= 0 at a test event).
    """

    variant: str
    result: GoFResult | None = None
    z_summary: ZSummary | None = None
    error: str | None = None


def _gof_path(run: RunDir, variant: str) -> Path:
    return run.root / "gof" / f"{variant}.json"


def save_gof(run: RunDir, results: Sequence[GoFResult], z_summary: ZSummary | None) -> Path:
    """The first test set's result in full; per-set summaries and Z band with several."""
    run.dir("gof")
    first = results[0]
    record = to_jsonable(first.to_dict())
    if z_summary is not None:
        record["z_summary"] = to_jsonable(vars(z_summary))
        record["per_set"] = [to_jsonable({k: v for k, v in r.to_dict().items()
                                          if k not in ("t_null", "toy_index", "toy_converged",
                                                       "toy_size")})
                             for r in results]
    return atomic_write_json(_gof_path(run, first.variant), record)


def save_gof_error(run: RunDir, variant: str, error: str) -> Path:
    """Record that ``variant`` is undefined, and why."""
    run.dir("gof")
    return atomic_write_json(_gof_path(run, variant), {"variant": variant, "error": error})


def load_gof(run: RunDir, variant: str) -> GofRecord | None:
    """The saved GoF ``variant``, or None when it was not run."""
    path = _gof_path(run, variant)
    if not path.is_file():
        return None
    record = load_json(path)
    if "error" in record:
        return GofRecord(variant, error=str(record["error"]))
    band = record.get("z_summary")
    z_summary = None if band is None else ZSummary(
        float(band["median"]), float(band["lower"]), float(band["upper"]), int(band["n_sets"]))
    return GofRecord(variant, GoFResult.from_dict(record), z_summary)
