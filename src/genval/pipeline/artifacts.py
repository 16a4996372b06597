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
data/weights.npz            per-event weights of the table, if weighted   split
data/test_events.npz        separate test events, when configured         split
data/test_weights.npz       their weights, if the test file has them      split
data/input_events.npz       events given in memory (``data.path``)        run_pipeline
data/input_test_events.npz  test events given in memory (``test_path``)   run_pipeline
data/splits.npz             split indices and hash (:class:`Splits`)      split
models/transform.json       the :class:`FeatureTransform` of the members  train
models/kde.json             :class:`KdeSpec` (KDE members are rebuilt)    train
models/python.json          :class:`PythonSpec` (factory, fingerprint)    train
models/ensemble.safetensors the flow ensemble                             train
models/history.npz          :class:`LearningCurves` of the flows          train
fit/fit.npz, fit/fit.json   :class:`~genval.wifi.WeightFit`               fit
                            (conditional runs: the shared fit only)
fit/conditional.json        :class:`~genval.conditional.ConditionalWeightFit` fit
                            (conditional runs, ``context:``)
samples/OUTPUT, density.npz oversampled events with f̂ and σ_f̂ (Eq. 3)     sample
samples/sampler.json        the sampler's diagnostics, negative mass      sample
coverage/coverage.npz|json  :class:`~genval.coverage.CoverageResult`      coverage
gof/VARIANT.json            :class:`GofRecord` (GoFResult, Z band)        gof
                            (conditional runs: the combined test)
gof/VARIANT-context.json    :class:`~genval.gof.ConditionalGoFResult`:    gof
                            Z per context bin, combined, look-elsewhere
gof/deviations.json         where the alternative departs from REF        gof
gof/parts/toys-A-B.json     :class:`GofPart`: toys A..B-1 of every        gof --toys A:B
                            variant and test set
==========================  ============================================  ===============

References:
    Badaracco et al., Eqs. (1)-(5): the quantities each artifact holds.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._atomic import atomic_write_bytes, atomic_write_json
from genval._paths import resolve_inside
from genval.conditional import ConditionalWeightFit
from genval.coverage import CoverageResult
from genval.errors import ArtifactError, InputError
from genval.gof import ConditionalGoFResult, GoFResult, ZSummary
from genval.io import EventTable, parse_spec, read_events, write_events
from genval.members import KDEMembers, Members
from genval.pipeline.context import ContextLayout
from genval.pipeline.device import resolve_device
from genval.rundir import RunDir, RunDirError, to_jsonable
from genval.splits import Splits, hash_events
from genval.transforms import FeatureTransform, TransformedMembers
from genval.wifi import WeightFit

__all__ = [
    "save_npz", "load_json",
    "save_events", "save_test_events", "split_events", "split_weights", "save_splits",
    "load_splits", "INPUTS", "input_path", "save_input_events",
    "KdeSpec", "save_kde", "load_kde", "save_ensemble", "load_members",
    "save_transform", "load_transform",
    "PythonSpec", "save_python_members", "load_python_members",
    "LearningCurves", "save_history", "load_history",
    "save_fit", "has_fit", "load_fit", "save_conditional_fit", "load_conditional_fit",
    "save_samples", "load_samples", "load_prior_share", "context_layout",
    "save_sampler", "load_sampler",
    "CoverageRecord", "save_coverage", "load_coverage",
    "GofRecord", "save_gof", "save_gof_error", "load_gof", "load_gof_json",
    "save_conditional_gof", "load_conditional_gof",
    "save_deviations", "load_deviations",
    "GofPart", "save_gof_part", "load_gof_parts", "fit_digest",
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


def _weights_path(run: RunDir, test: bool = False) -> Path:
    return run.root / "data" / ("test_weights.npz" if test else "weights.npz")


def _save_weights(run: RunDir, table: EventTable, test: bool) -> None:
    """The table's per-event weights beside its events; a stale file of an earlier,
    weighted configuration is removed when the table is unweighted."""
    path = _weights_path(run, test)
    if table.weights is None:
        path.unlink(missing_ok=True)
        return
    save_npz(path, weights=table.weights, column=np.str_(table.weight_name or ""))


def save_events(run: RunDir, table: EventTable) -> Path:
    """The full event table the splits index into (and its weights, when weighted)."""
    run.dir("data")
    path = write_events(_events_path(run), table.x, table.names)
    _save_weights(run, table, test=False)
    return path


def save_test_events(run: RunDir, table: EventTable) -> Path:
    """Test events read from ``data.test_path`` (then the test split is not cut)."""
    run.dir("data")
    path = write_events(_test_events_path(run), table.x, table.names)
    _save_weights(run, table, test=True)
    return path


INPUTS = ("events", "test_events")
"""Event tables given in memory (``run_pipeline(events=..., test_events=...)``)."""


def input_path(root: str | Path, which: str) -> Path:
    """Where in-memory ``events`` or ``test_events`` are kept: ``data/input_WHICH.npz``.

    The run's config points ``data.path`` (``data.test_path``) at this file, so the split
    stage reads it like any event file and a resumed run, or ``genval`` on the run directory,
    finds the same events.
    """
    if which not in INPUTS:
        raise ValueError(f"unknown input {which!r}; one of {INPUTS}")
    return Path(root) / "data" / f"input_{which}.npz"


def save_input_events(run: RunDir, which: str, x: NDArray[np.float64], names: Sequence[str],
                      *, replace: bool = False) -> bool:
    """Keep in-memory events in the run directory; True when the file was (re)written.

    Events identical to those already kept (same numbers and names) are not rewritten, so a
    finished split stays finished.

    Raises:
        RunDirError: the run holds other events and ``replace`` is false: its finished
            stages were computed from them.
    """
    path = input_path(run.root, which)
    if path.is_file():
        old = read_events(path)
        if old.names == list(names) and hash_events(old.x) == hash_events(x):
            return False
        if not replace:
            raise RunDirError(f"{run.root} holds a run on other {which.replace('_', ' ')}; "
                              "use force=True to replace them, or choose another run directory")
    run.dir("data")
    write_events(path, x, names)
    return True


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


def split_weights(run: RunDir, name: str) -> NDArray[np.float64] | None:
    """The per-event weights of split ``name`` (aligned with :func:`split_events`), or None
    when its events are unweighted (``data.weight`` unset, or a test file without the column).

    Raises:
        ArtifactError: a weights file that is unreadable or does not match the events.
    """
    splits = load_splits(run)
    separate_test = name == "test" and "test" not in splits.indices
    path = _weights_path(run, test=separate_test)
    if not path.is_file():
        return None
    try:
        weights = _load_npz(path)["weights"]
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"cannot read event weights from {path}: {exc}") from exc
    if separate_test:
        n_test = read_events(_test_events_path(run)).n_events
        if weights.shape != (n_test,):
            raise ArtifactError(f"{path} holds {weights.shape} weights for {n_test} test events")
        return weights.astype(np.float64)
    if weights.shape != (splits.n_events,):
        raise ArtifactError(f"{path} holds {weights.shape} weights for {splits.n_events} events")
    return splits.take(weights[:, None].astype(np.float64), name)[:, 0]


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

    def build(self, x_train: ArrayLike, event_weights: ArrayLike | None = None, *,
              context: ArrayLike | None = None) -> KDEMembers:
        """The members on the train split (with its event weights, when weighted; conditional
        on the train split's contexts when given)."""
        return KDEMembers(x_train, self.n_members, bandwidth=self.bandwidth, seed=self.seed,
                          event_weights=event_weights, context=context)


FINGERPRINT_EVENTS = 32
"""Training events whose member log-densities identify members built by a factory."""

FINGERPRINT_TOLERANCE = 1e-4
"""Largest change of a fingerprint log-density (about 1e-4 relative in the density) that still
counts as the same members: enough for another device's rounding, far below any retraining."""


@dataclass(frozen=True)
class PythonSpec:
    """Members of ``members.kind: python``: the factory that builds them and a fingerprint.

    The factory is called again whenever a stage needs the members (nothing of a user's model
    is pickled); the fingerprint, the log-densities of the members at the first
    :data:`FINGERPRINT_EVENTS` training events, proves that it returned the same members.
    """

    factory: str
    n_members: int
    seed: int
    fingerprint: NDArray[np.float64]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "python", "factory": self.factory, "n_members": self.n_members,
                "seed": self.seed, "fingerprint": self.fingerprint.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PythonSpec:
        return cls(str(data["factory"]), int(data["n_members"]), int(data["seed"]),
                   np.asarray(data["fingerprint"], dtype=np.float64))

    @staticmethod
    def fingerprint_of(members: Members, x_train: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(members.log_prob(x_train[:FINGERPRINT_EVENTS]), dtype=np.float64)

    def build(self, x_train: NDArray[np.float64], device: str,
              event_weights: NDArray[np.float64] | None = None) -> Members:
        """The members from the (transformed) train split, checked against the fingerprint.

        Raises:
            ArtifactError: the factory now returns other members than at training time.
        """
        from genval.adapters import build_members

        members = build_members(self.factory, x_train, n_members=self.n_members,
                                seed=self.seed, device=device, event_weights=event_weights)
        now = self.fingerprint_of(members, x_train)
        if now.shape != self.fingerprint.shape or not np.allclose(
                now, self.fingerprint, rtol=0, atol=FINGERPRINT_TOLERANCE, equal_nan=True):
            diff = np.nanmax(np.abs(now - self.fingerprint)) if now.shape == \
                self.fingerprint.shape else float("nan")
            raise ArtifactError(
                f"members.factory {self.factory!r} returned other members than when the train "
                f"stage ran (log-densities differ by up to {diff:.3g}); it must return the same "
                "members on every call (load saved models, or seed its training); re-run "
                "`genval train --force` if the models changed on purpose")
        return members


def _python_path(run: RunDir) -> Path:
    return run.root / "models" / "python.json"


def save_python_members(run: RunDir, spec: PythonSpec) -> Path:
    run.dir("models")
    return atomic_write_json(_python_path(run), to_jsonable(spec.to_dict()))


def load_python_members(run: RunDir) -> PythonSpec:
    return PythonSpec.from_dict(load_json(_python_path(run)))


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


def _transform_path(run: RunDir) -> Path:
    return run.root / "models" / "transform.json"


def save_transform(run: RunDir, transform: FeatureTransform) -> Path:
    """The feature transform the members were trained under (``data.transforms``)."""
    run.dir("models")
    return atomic_write_json(_transform_path(run), transform.to_dict())


def load_transform(run: RunDir) -> FeatureTransform:
    """The members' feature transform, as the train stage saved it.

    Raises:
        ArtifactError: the file is missing or is not a valid transform.
    """
    path = _transform_path(run)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: run the train stage (`genval train "
                            f"{run.root}`) again")
    try:
        return FeatureTransform.from_dict(load_json(path))
    except InputError as exc:
        raise ArtifactError(f"{path}: {exc}") from None


def load_members(run: RunDir, *, device: str | None = None) -> Members:
    """The members saved by the train stage, in physical units.

    KDE members are rebuilt from the transformed train split, factory members (``kind:
    python``) rebuilt from it and checked, flows loaded on the device of the run's current
    config; with a feature transform they come wrapped in
    :class:`~genval.transforms.TransformedMembers`, so every density carries the Jacobian and
    every sample is in the features' own units. ``device`` overrides the config's device for
    this process alone, without recording it in the run (a toy range of an array job).
    """
    transform = load_transform(run)
    kind = run.config().members.kind
    layout = context_layout(run)
    if layout is not None:
        return _conditional_members(run, layout, transform, device)
    if kind in ("kde", "python"):
        x_train, _ = split_events(run, "train")
        x_train = transform.forward(x_train, name="train events")
    if kind == "kde":
        base: Members = load_kde(run).build(x_train, split_weights(run, "train"))
    elif kind == "python":
        where = _member_device(run, device)
        base = load_python_members(run).build(x_train, where, split_weights(run, "train"))
    else:
        from genval.flows import FlowEnsemble  # torch loads only for flow members

        base = FlowEnsemble.load(_ensemble_path(run), device=_member_device(run, device))
    return base if transform.is_identity else TransformedMembers(base, transform)


def context_layout(run: RunDir) -> ContextLayout | None:
    """The x / context columns of a conditional run (``context:``), None when unconditional."""
    cfg = run.config()
    if cfg.context is None:
        return None
    return ContextLayout.of(cfg, read_events(_events_path(run)).names)


def _conditional_members(run: RunDir, layout: ContextLayout, transform: FeatureTransform,
                         device: str | None) -> Members:
    """Conditional members f(x | c) in physical units of x and c (``context:`` runs)."""
    t_x, t_c = layout.transforms(transform)
    if run.config().members.kind == "kde":
        x_train, c_train = layout.split(split_events(run, "train")[0])
        base: Members = load_kde(run).build(
            t_x.forward(x_train, name="train events"), split_weights(run, "train"),
            context=t_c.forward(c_train, name="train contexts"))
    else:
        from genval.flows import FlowEnsemble  # torch loads only for flow members

        base = FlowEnsemble.load(_ensemble_path(run), device=_member_device(run, device))
    if t_x.is_identity and t_c.is_identity:
        return base
    return TransformedMembers(base, t_x, t_c)


def _member_device(run: RunDir, device: str | None) -> str:
    """``device`` resolved, or the device of this process's config (``--device`` overrides it
    on every run and resume), which is then recorded in the run's metadata."""
    if device is not None:
        return resolve_device(device)
    resolved = resolve_device(run.config().device)
    run.update_metadata(device={"resolved": resolved})
    return resolved


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


def _conditional_fit_path(run: RunDir) -> Path:
    return run.root / "fit" / "conditional.json"


def save_conditional_fit(run: RunDir, fit: ConditionalWeightFit) -> Path:
    """The weights of a conditional run: every fit (shared or per bin) and the bin counts in
    ``fit/conditional.json``; a shared fit also in ``fit/fit.npz`` / ``fit.json``, so every
    reader of the fit (``genval results``, the report) shows it; per-bin fits only there."""
    run.dir("fit")
    if not fit.per_bin:
        save_fit(run, fit.fits[0])
    else:  # no one weight vector describes every context: no fit.npz (nor an earlier one)
        for path in _fit_paths(run):
            path.unlink(missing_ok=True)
    return atomic_write_json(_conditional_fit_path(run), to_jsonable(fit.to_dict()))


def load_conditional_fit(run: RunDir) -> ConditionalWeightFit | None:
    """The :class:`~genval.conditional.ConditionalWeightFit` of a conditional run, or None."""
    path = _conditional_fit_path(run)
    if not path.is_file():
        return None
    try:
        return ConditionalWeightFit.from_dict(load_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc!r}") from exc


# --- oversampled events (sample stage) -------------------------------------------------------

def _samples_spec(run: RunDir, output: str) -> str:
    """``samples/OUTPUT[:key]``, its file checked to resolve inside the run directory."""
    spec = parse_spec(output)
    path = resolve_inside(run.root, Path("samples") / spec.path, "sample.output")
    return f"{path}:{spec.key}" if spec.key else str(path)


def save_samples(run: RunDir, output: str, x: NDArray[np.float64], names: Sequence[str],
                 density: NDArray[np.float64], density_std: NDArray[np.float64],
                 prior_share: NDArray[np.float64] | None = None) -> Path:
    """Events drawn from f(x; ŵ) in ``samples/OUTPUT`` and their f̂, σ_f̂ (Eq. 3), with the
    share of σ_f̂² from the weight fit's ridge prior when given (:func:`load_prior_share`).

    Raises:
        OutputPathError: if ``OUTPUT`` would leave the run directory (through ``..`` or a
            symbolic link); the configuration refuses the first, this the second.
    """
    out = run.dir("samples")
    path = write_events(_samples_spec(run, output), x, names)
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
    table = read_events(_samples_spec(run, run.config().sample.output))
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
            saved: None); for a failed variant, the failed test set's result (its toys and
            their reasons, no p); None when the variant is undefined.
        z_summary: Z over every test set when there were several.
        error: why the variant is undefined (e.g. f(x; ŵ) <= 0 at a test event) or failed
            (``GoFResult.failure``: t_obs not finite or its fit stopped, too many failed
            toys), in one line; None when it has a p-value.
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
    """Record that ``variant`` is undefined, and why (a conditional run's bins of an earlier
    attempt go with it)."""
    run.dir("gof")
    _conditional_gof_path(run, variant).unlink(missing_ok=True)
    return atomic_write_json(_gof_path(run, variant), {"variant": variant, "error": error})


def load_gof_json(run: RunDir, variant: str) -> dict[str, Any] | None:
    """``gof/VARIANT.json`` as written, without building a result: for showing what a record
    holds when :func:`load_gof` cannot read it (a field missing, an older or newer schema)."""
    path = _gof_path(run, variant)
    return load_json(path) if path.is_file() else None


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
    result = GoFResult.from_dict(record)
    failure = result.failure  # recomputed from the toys and t_obs, never trusted from the file
    return GofRecord(variant, result, z_summary, None if failure is None else str(failure))


def _conditional_gof_path(run: RunDir, variant: str) -> Path:
    return run.root / "gof" / f"{variant}-context.json"


def save_conditional_gof(run: RunDir, result: ConditionalGoFResult) -> Path:
    """A conditional run's test of one variant: the combined result in ``gof/VARIANT.json``
    (what every reader of a variant shows), the bins, each bin's result and the
    look-elsewhere numbers in ``gof/VARIANT-context.json``."""
    save_gof(run, [result.combined], None)
    return atomic_write_json(_conditional_gof_path(run, result.combined.variant),
                             to_jsonable(result.to_dict()))


def load_conditional_gof(run: RunDir, variant: str) -> ConditionalGoFResult | None:
    """The saved conditional test of ``variant``, or None (not run, or unconditional)."""
    path = _conditional_gof_path(run, variant)
    if not path.is_file():
        return None
    try:
        return ConditionalGoFResult.from_dict(load_json(path))
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc!r}") from exc


def _deviations_path(run: RunDir) -> Path:
    return run.root / "gof" / "deviations.json"


def save_deviations(run: RunDir, record: Mapping[str, Any]) -> Path:
    """Where the learned alternative departs from the reference (figures of the gof stage).

    ``record``: ``variant`` (whose alternative), ``n_events``, ``kernels`` (the largest |a_k|:
    ``kernel``, ``a``, ``events`` = N a_k, ``centre`` per feature) and ``features`` (per
    feature the largest |LRT RECO / REF − 1|: ``max_abs_deviation``, ``reco_over_ref``,
    ``bin``, ``unit``).
    """
    run.dir("gof")
    return atomic_write_json(_deviations_path(run), to_jsonable(dict(record)))


def load_deviations(run: RunDir) -> dict[str, Any] | None:
    """The record :func:`save_deviations` wrote, or None when there is none."""
    path = _deviations_path(run)
    return load_json(path) if path.is_file() else None


# --- toy ranges of the gof stage (array jobs) -----------------------------------------------

@dataclass(frozen=True)
class GofPart:
    """Toys ``first .. stop - 1`` of every GoF variant and test set, computed apart from the
    stage (``genval gof RUN --toys A:B``, an array job) and merged by ``genval merge RUN``.

    Attributes:
        first, stop: the toy range.
        config_hash: the run's configuration (a part of another config is refused).
        fit_digest: :func:`fit_digest` of the weight fit the toys calibrate.
        results: per variant, the :class:`~genval.gof.GoFResult` of each test set over the
            range, or the message of the error that made the variant undefined.
        path: the file it was read from (None before it is saved).
    """

    first: int
    stop: int
    config_hash: str
    fit_digest: str
    results: dict[str, list[GoFResult] | str]
    path: Path | None = None

    @property
    def label(self) -> str:
        """The range as ``A:B``."""
        return f"{self.first}:{self.stop}"

    def to_dict(self) -> dict[str, Any]:
        return {"format": "genval.gof.part", "toys": [self.first, self.stop],
                "config_hash": self.config_hash, "fit_digest": self.fit_digest,
                "variants": {v: ({"error": r} if isinstance(r, str)
                                 else [to_jsonable(x.to_dict()) for x in r])
                             for v, r in self.results.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> GofPart:
        if data.get("format") != "genval.gof.part":
            raise ArtifactError(f"{path}: not a genval GoF part file")
        try:
            results: dict[str, list[GoFResult] | str] = {
                str(v): (str(r["error"]) if isinstance(r, dict)
                         else [GoFResult.from_dict(x) for x in r])
                for v, r in dict(data["variants"]).items()}
            first, stop = (int(t) for t in data["toys"])
            return cls(first, stop, str(data["config_hash"]), str(data["fit_digest"]),
                       results, path)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: corrupted GoF part file: {exc}") from exc


def _parts_dir(run: RunDir) -> Path:
    return run.root / "gof" / "parts"


def save_gof_part(run: RunDir, part: GofPart) -> Path:
    """Write a toy range (one file per range: parallel jobs never write the same file)."""
    path = _parts_dir(run) / f"toys-{part.first:07d}-{part.stop:07d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, part.to_dict())


def load_gof_parts(run: RunDir) -> list[GofPart]:
    """Every saved toy range of the run, in file-name (toy) order.

    Raises:
        ArtifactError: a part file that cannot be read.
    """
    folder = _parts_dir(run)
    if not folder.is_dir():
        return []
    return [GofPart.from_dict(load_json(path), path)
            for path in sorted(folder.glob("toys-*.json"))]


def fit_digest(fit: WeightFit) -> str:
    """SHA-256 of ŵ and Cov(ŵ): which weight fit a set of toys calibrates."""
    h = hashlib.sha256()
    for array in (fit.weights, fit.cov):
        h.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return h.hexdigest()
