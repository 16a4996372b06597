"""The stages of a genval run, each reading and writing a :class:`~genval.rundir.RunDir`.

``split → train → fit → sample → coverage → gof → report`` (paper Steps 1–4). Each stage
function takes the run directory, reads what earlier stages wrote and writes its own
artifacts; :func:`run_stage` adds the skip-if-finished bookkeeping and :func:`run_pipeline`
runs them all. Only the split stage sees the full event table: the others read their own
split, so the test events never reach training or the weight fit.

Warnings raised inside a stage are recorded (in the stage's marker and the report) and logged,
not lost: a long unattended run should say what went wrong in its artifacts.

Integration status: ``train`` with ``members.kind: flow`` needs :mod:`genval.flows` and
``gof`` needs :mod:`genval.gof` (issues 3 and 4); without them those stages raise
:class:`StageUnavailableError` naming the missing module.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval._atomic import atomic_write_bytes, atomic_write_json
from genval.config import Config
from genval.errors import GenvalError, InputError
from genval.io import EventTable, read_events, write_events
from genval.members import KDEMembers, Members, log_density_matrix
from genval.rundir import STAGES, RunDir, StageOutcome
from genval.splits import Splits, hash_events, make_splits

__all__ = [
    "StageUnavailableError",
    "STAGE_FUNCTIONS",
    "run_stage",
    "run_pipeline",
    "stage_seed",
    "split_events",
    "load_members",
    "load_fit",
    "stage_split",
    "stage_train",
    "stage_fit",
    "stage_sample",
    "stage_coverage",
    "stage_gof",
    "stage_report",
]

Log = Callable[[str], None]


class StageUnavailableError(GenvalError, RuntimeError):
    """A stage needs a genval module that this build does not include yet."""


def _module(name: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise StageUnavailableError(f"{purpose} needs {name}, which this build of genval does "
                                    "not include yet") from exc


def stage_seed(config: Config, stage: str) -> int:
    """An independent seed per stage derived from ``config.seed`` (recorded in metadata)."""
    index = STAGES.index(stage) if stage in STAGES else len(STAGES)
    return int(np.random.SeedSequence([config.seed, index]).generate_state(1)[0])


def _is_paper_toy(config: Config) -> bool:
    gen = config.data.generate
    return config.data.path is None and gen.mean == [-0.5, 0.6] and gen.std == [0.25, 0.4]


# --- split ------------------------------------------------------------------------------------


def _generate(config: Config) -> EventTable:
    gen = config.data.generate
    rng = np.random.default_rng(stage_seed(config, "data"))
    x = rng.normal(gen.mean, gen.std, size=(gen.n_events, len(gen.mean)))
    names = config.data.features or [f"x{i}" for i in range(len(gen.mean))]
    if len(names) != x.shape[1]:
        raise InputError(f"data.features names {len(names)} features but data.generate has "
                         f"{x.shape[1]}")
    return EventTable(x=x, names=list(names), source="generated")


def stage_split(run: RunDir) -> dict[str, Any]:
    """Read (or generate) the events, cut the disjoint splits and record both in the run."""
    cfg = run.config()
    table = _generate(cfg) if cfg.data.path is None else read_events(cfg.data.path,
                                                                     cfg.data.features)
    specs = {"train": cfg.splits.train, "weight_fit": cfg.splits.weight_fit,
             "centres": cfg.splits.centres, "test": cfg.splits.test}
    minima = {"centres": (cfg.gof.n_kernels, "gof.n_kernels"),
              "weight_fit": (max(cfg.members.n_members + 1, cfg.splits.min_events),
                             "more events than members.n_members")}
    splits = make_splits(table.n_events, specs, seed=stage_seed(cfg, "split"),
                         shuffle=cfg.splits.shuffle, min_events=cfg.splits.min_events,
                         min_sizes=minima)
    data_dir = run.dir("data")
    write_events(data_dir / "events.npz", table.x, table.names)
    info: dict[str, Any] = {"source": table.source, "features": table.names,
                            "n_events": table.n_events, "hash": hash_events(table.x),
                            "splits": splits.summary()}
    if cfg.data.test_path is not None:
        test = read_events(cfg.data.test_path, table.names, n_features=table.n_features,
                           min_events=cfg.splits.min_events)
        write_events(data_dir / "test_events.npz", test.x, test.names)
        info["test"] = {"source": test.source, "n_events": test.n_events,
                        "hash": hash_events(test.x)}
    splits.save(run.splits_path)
    run.update_metadata(data=info, seeds={"data": stage_seed(cfg, "data"),
                                          "split": stage_seed(cfg, "split")})
    return {"sizes": splits.sizes(), "hash": splits.hash}


def split_events(run: RunDir, name: str) -> tuple[NDArray[np.float64], list[str]]:
    """The events of split ``name`` and the feature names, from the run's recorded split."""
    table = read_events(run.root / "data" / "events.npz")
    splits = Splits.load(run.splits_path)
    if name == "test" and "test" not in splits.indices:
        test = read_events(run.root / "data" / "test_events.npz", table.names)
        return test.x, test.names
    return splits.take(table.x, name), table.names


# --- members ----------------------------------------------------------------------------------


def _save_npz(path: Path, **arrays: Any) -> Path:
    """``np.savez`` through memory and an atomic rename: never a truncated ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    torch = _module("torch", "device 'auto'")
    return "cuda" if torch.cuda.is_available() else "cpu"


def stage_train(run: RunDir) -> dict[str, Any]:
    """Train (or build) the M members on the train split and save them under ``models/``."""
    cfg = run.config()
    x_train, _ = split_events(run, "train")
    seed = stage_seed(cfg, "train")
    models = run.dir("models")
    run.update_metadata(seeds={"train": seed})
    if cfg.members.kind == "kde":
        # KDE members are rebuilt deterministically from the train split and the seed.
        KDEMembers(x_train, cfg.members.n_members, bandwidth=cfg.members.kde.bandwidth,
                   seed=seed)
        atomic_write_json(models / "kde.json", {"kind": "kde", "n_members": cfg.members.n_members,
                                                "bandwidth": cfg.members.kde.bandwidth,
                                                "seed": seed})
        return {"kind": "kde", "n_members": cfg.members.n_members}
    flows = _module("genval.flows", "members.kind: flow")
    device = _resolve_device(cfg.device)
    run.update_metadata(device={"resolved": device})
    fc = cfg.members.flow
    ens = flows.FlowEnsemble(x_train.shape[1], cfg.members.n_members, layers=fc.layers,
                             hidden=fc.hidden, blocks=fc.blocks, bins=fc.bins, seed=seed)
    history = flows.train(ens, x_train, val_fraction=fc.validation_fraction,
                          batch_size=fc.batch_size, lr=fc.learning_rate,
                          max_epochs=fc.max_epochs, patience=fc.patience, seed=seed,
                          device=device, progress=not cfg.quiet, bootstrap=fc.bootstrap)
    ens.save(models / "ensemble.safetensors")
    _save_npz(models / "history.npz", train_loss=history.train_loss,
             val_loss=history.val_loss, best_epoch=history.best_epoch)
    _training_figure(run, history)
    return {"kind": "flow", "n_members": cfg.members.n_members, "device": device,
            "epochs": int(history.train_loss.shape[0]),
            "diverged": int(np.sum(history.diverged))}


def _training_figure(run: RunDir, history: Any) -> None:
    from genval import plots

    cfg = run.config()
    # History arrays are (epochs, M) with NaN after a member stopped: one curve per member.
    train = [c[np.isfinite(c)] for c in np.asarray(history.train_loss).T]
    val = [c[np.isfinite(c)] for c in np.asarray(history.val_loss).T]
    plots.plot_training(train_loss=train, val_loss=val,
                        best_epoch=[int(b) + 1 for b in history.best_epoch],
                        save=run.dir("figures") / "training", formats=cfg.report.formats,
                        dpi=cfg.report.dpi)


def load_members(run: RunDir) -> Members:
    """The members saved by the train stage."""
    cfg = run.config()
    models = run.root / "models"
    if cfg.members.kind == "kde":
        spec = json.loads((models / "kde.json").read_text(encoding="utf-8"))
        x_train, _ = split_events(run, "train")
        return KDEMembers(x_train, spec["n_members"], bandwidth=spec["bandwidth"],
                          seed=spec["seed"])
    flows = _module("genval.flows", "members.kind: flow")
    device = run.metadata().get("device", {}).get("resolved", "cpu")
    return flows.FlowEnsemble.load(models / "ensemble.safetensors", device=device)


# --- fit --------------------------------------------------------------------------------------

_FIT_ARRAYS = ("weights", "cov", "cov_reduced")


def stage_fit(run: RunDir) -> dict[str, Any]:
    """Fit ŵ and Cov(ŵ) (Eqs. 1–2) on the weight-fit split; save ``fit/fit.npz`` and JSON."""
    from genval.wifi import fit_weights

    cfg = run.config()
    members = load_members(run)
    x_fit, _ = split_events(run, "weight_fit")
    log_f = log_density_matrix(members, x_fit)
    fit = fit_weights(log_f, log=True, max_iter=cfg.wifi.max_iter, tol=cfg.wifi.tol)
    fields = {f.name: getattr(fit, f.name) for f in dataclasses.fields(fit)}
    out = run.dir("fit")
    _save_npz(out / "fit.npz", **{k: fields[k] for k in _FIT_ARRAYS})
    scalars = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()
               if k not in _FIT_ARRAYS}
    atomic_write_json(out / "fit.json", {**_jsonable(scalars),
                                         "weights": fit.weights.tolist(),
                                         "weight_std": fit.weight_std.tolist()})
    from genval import plots

    plots.plot_weights(weights=fit.weights, cov=fit.cov, save=run.dir("figures") / "weights",
                       formats=cfg.report.formats, dpi=cfg.report.dpi)
    return {"converged": bool(fit.converged), "n_iter": int(fit.n_iter), "nll": float(fit.nll)}


def load_fit(run: RunDir) -> Any:
    """The :class:`genval.wifi.WeightFit` saved by the fit stage."""
    from genval.wifi import WeightFit

    meta = json.loads((run.root / "fit" / "fit.json").read_text(encoding="utf-8"))
    with np.load(run.root / "fit" / "fit.npz", allow_pickle=False) as arrays:
        values = {k: arrays[k] for k in _FIT_ARRAYS}
    names = {f.name for f in dataclasses.fields(WeightFit)}
    values.update({k: (tuple(v) if k == "messages" else v) for k, v in meta.items()
                   if k in names and k not in values})
    return WeightFit(**values)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if np.isfinite(value) else str(value)  # JSON has no inf/NaN
    return obj


# --- products ---------------------------------------------------------------------------------


def stage_sample(run: RunDir) -> dict[str, Any]:
    """Draw ``sample.n_events`` events from f(x; ŵ) and write them with f̂ and σ_f̂ (Eq. 3)."""
    from genval.products import oversample

    cfg = run.config()
    members, fit = load_members(run), load_fit(run)
    _, names = split_events(run, "weight_fit")
    seed = stage_seed(cfg, "sample")
    drawn = oversample(members, fit, cfg.sample.n_events, seed)
    out = run.dir("samples")
    path = write_events(out / cfg.sample.output, drawn.x, names)
    _save_npz(out / "density.npz", density=drawn.density, density_std=drawn.density_std)
    run.update_metadata(seeds={"sample": seed})
    return {"path": str(path.relative_to(run.root)), "n_events": cfg.sample.n_events,
            "acceptance_rate": float(drawn.acceptance_rate)}


def stage_coverage(run: RunDir) -> dict[str, Any]:
    """The first-moment coverage study (Eq. 4) on synthetic data sets from the known truth."""
    cfg = run.config()
    if not cfg.coverage.enabled:
        return {"skipped": "coverage.enabled is false"}
    if cfg.data.path is not None:
        return {"skipped": "the truth is unknown for data read from a file"}
    from genval import plots
    from genval.coverage import run_coverage
    from genval.report import PAPER_COVERAGE

    gen = cfg.data.generate
    mean, std = np.asarray(gen.mean), np.asarray(gen.std)
    truth = np.asarray(cfg.coverage.truth if cfg.coverage.truth is not None else gen.mean)
    members = load_members(run)
    n_events = cfg.coverage.n_events or int(Splits.load(run.splits_path).sizes()["weight_fit"])
    seed = stage_seed(cfg, "coverage")
    result = run_coverage(members, lambda n, rng: rng.normal(mean, std, size=(n, mean.size)),
                          truth, n_datasets=cfg.coverage.n_datasets, n_events=n_events,
                          oversampling=cfg.coverage.n_generated / n_events, seed=seed,
                          levels=(0.6827, 0.9545), progress=not cfg.quiet)
    out = run.dir("coverage")
    _save_npz(out / "coverage.npz", estimates=result.estimates, stds=result.stds,
             stds_weights=result.stds_weights, truth=result.truth,
             converged=result.converged)
    _, names = split_events(run, "weight_fit")
    summary = {"truth": result.truth.tolist(), "levels": result.levels.tolist(),
               "fractions": np.asarray(result.fractions).tolist(), "features": names,
               "n_datasets": result.n_datasets, "n_events": n_events,
               "n_generated": cfg.coverage.n_generated, "messages": list(result.messages)}
    atomic_write_json(out / "coverage.json", _jsonable(summary))
    plots.plot_coverage(estimates=result.estimates, sigmas=result.stds, truth=result.truth,
                        names=names, reference=PAPER_COVERAGE if _is_paper_toy(cfg) else None,
                        save=run.dir("figures") / "coverage", formats=cfg.report.formats,
                        dpi=cfg.report.dpi)
    run.update_metadata(seeds={"coverage": seed})
    return {"fractions_1sigma": np.asarray(result.fractions)[..., 0].tolist()
            if np.ndim(result.fractions) > 1 else np.asarray(result.fractions).tolist()}


# --- goodness of fit ----------------------------------------------------------------------------


def stage_gof(run: RunDir) -> dict[str, Any]:
    """The learned likelihood-ratio test (Eq. 5) for every configured variant.

    Writes ``gof/VARIANT.json`` (t_obs, p, Z, χ² extrapolation, t_null), the null figure of
    each variant (Fig. 2) and the marginals of REF / DATA / LRT RECO (Fig. 1).
    """
    cfg = run.config()
    if not cfg.gof.enabled:
        return {"skipped": "gof.enabled is false"}
    gof = _module("genval.gof", "the gof stage")
    from genval import plots

    seed = stage_seed(cfg, "gof")
    members, fit = load_members(run), load_fit(run)
    x_test, names = split_events(run, "test")
    x_centres, _ = split_events(run, "centres")
    basis = gof.KernelBasis.from_events(x_centres, cfg.gof.n_kernels, cfg.gof.sigma,
                                        standardize=cfg.gof.standardize, seed=seed)
    # Several test sets: disjoint chunks of the test split, one result each (median Z, band).
    chunks = np.array_split(x_test, cfg.gof.n_test_sets)
    out, figures = run.dir("gof"), run.dir("figures")
    summary: dict[str, Any] = {}
    observed: dict[str, Any] = {}
    for variant in cfg.gof.variants:
        results = [gof.goodness_of_fit(
            members, fit, chunk, basis, n_toys=cfg.gof.n_toys, seed=seed + i, variant=variant,
            member=cfg.gof.single_member if variant == "single" else None,
            centre=cfg.gof.constraint_centre, toy_size=cfg.gof.toy_size,
            pool_size=cfg.gof.pool_size, n_jobs=cfg.gof.n_jobs, lam=cfg.gof.lambda_net)
            for i, chunk in enumerate(chunks)]
        record = _jsonable(results[0].to_dict())
        if len(results) > 1:
            z = gof.summarize_z(results)
            record["z_summary"] = {"median": z.median, "lower": z.lower, "upper": z.upper,
                                   "n_sets": z.n_sets}
            record["per_set"] = [_jsonable({k: v for k, v in r.to_dict().items()
                                            if k not in ("t_null", "toy_index")})
                                 for r in results]
        atomic_write_json(out / f"{variant}.json", record)
        res = results[0]
        plots.plot_null(t_null=res.t_null, t_obs=res.t_obs, z=res.z, p_value=res.p_value,
                        chi2_scale=res.chi2_fit.scale, chi2_dof=res.chi2_fit.dof,
                        z_chi2=res.z_chi2, label=_variant_label(variant),
                        save=figures / f"null_{variant}", formats=cfg.report.formats,
                        dpi=cfg.report.dpi)
        summary[variant] = {"t_obs": float(res.t_obs), "z": float(res.z),
                            "z_chi2": float(res.z_chi2)}
        observed[variant] = res.observed
    # LRT RECO of Fig. 1 is the alternative profiled for the ensemble with uncertainty.
    reco_stat = observed.get("ensemble", observed[cfg.gof.variants[-1]])
    _marginals_figure(run, members, fit, basis, x_test, names, reco_stat, seed)
    run.update_metadata(seeds={"gof": seed})
    return summary


def _variant_label(variant: str) -> str:
    from genval.report import VARIANT_LABELS

    return VARIANT_LABELS.get(variant, variant)


def _marginals_figure(run: RunDir, members: Members, fit: Any, basis: Any,
                      x_test: NDArray[np.float64], names: Sequence[str], stat: Any,
                      seed: int) -> None:
    """Paper Fig. 1 from one pool drawn from f(x; ŵ) (see :mod:`genval.binned`)."""
    from genval import plots
    from genval.binned import bin_integrals, binned_reference, histogram_counts
    from genval.sampling import sample_mixture

    cfg = run.config()
    pool = sample_mixture(members, fit.weights, max(20 * len(x_test), 50_000), seed)
    F = np.exp(pool.log_f)
    f = F @ fit.weights
    reco_density = None
    phi, a = getattr(stat, "phi1", None), getattr(stat, "a", None)
    if phi is not None and a is not None and np.shape(phi) == fit.weights.shape:
        # INTEGRATION: assumes H_{φ,a} is the density F·φ + G·a in data units (gof's scaling).
        reco_density = F @ np.asarray(phi) + basis.pdf(pool.x) @ np.asarray(a)
    hists = []
    for j, name in enumerate(names):
        lo, hi = np.quantile(x_test[:, j], [0.001, 0.999])
        edges = np.linspace(lo, hi, cfg.report.bins + 1)
        ref = binned_reference(pool.x[:, j], edges, F, fit.weights, fit.cov)
        reco = None
        if reco_density is not None:
            reco = bin_integrals(pool.x[:, j], edges, reco_density, f)[0][:, 0]
        hists.append(plots.MarginalHistogram(name, edges, ref.fraction, ref.std,
                                             histogram_counts(x_test[:, j], edges), reco))
    plots.plot_marginals(hists, save=run.dir("figures") / "marginals",
                         formats=cfg.report.formats, dpi=cfg.report.dpi)


# --- report -----------------------------------------------------------------------------------

_FIGURE_CAPTIONS = {
    "marginals": "Marginals of REF (ensemble), DATA and LRT RECO with ±1σ/±2σ bands "
                 "(paper Fig. 1)",
    "null_single": "Null distribution, single member (paper Fig. 2)",
    "null_frozen": "Null distribution, ensemble with frozen weights (paper Fig. 2)",
    "null_ensemble": "Null distribution, ensemble with uncertainty (paper Fig. 2)",
    "coverage": "Coverage of the first moment per feature (paper Fig. 3)",
    "weights": "Fitted weights ŵ with ±1σ from Cov(ŵ)",
    "training": "Training curves of the members",
}


def stage_report(run: RunDir) -> dict[str, Any]:
    """Write ``report.html`` from whatever the earlier stages produced."""
    from genval.report import CoverageRow, GofRow, write_report

    cfg = run.config()
    notes: list[str] = []
    gof_rows = []
    for variant in cfg.gof.variants:
        path = run.root / "gof" / f"{variant}.json"
        if not path.is_file():
            continue
        rec = json.loads(path.read_text(encoding="utf-8"))
        band = None
        z = float(rec["z"])
        if "z_summary" in rec:
            z = float(rec["z_summary"]["median"])
            band = (float(rec["z_summary"]["lower"]), float(rec["z_summary"]["upper"]))
        note = ""
        if rec.get("z_is_lower_bound"):
            note = "t_obs beyond every toy: Z (toys) is a lower bound; see the χ² extrapolation"
        if rec.get("n_failed"):
            notes.append(f"{variant}: {rec['n_failed']} toy fits did not converge")
        gof_rows.append(GofRow(variant, float(rec["t_obs"]), float(rec["p_value"]), z,
                               z_chi2=_float_or_none(rec.get("z_chi2_extrapolated")),
                               n_toys=rec.get("n_toys"), z_band=band, note=note))
    coverage_rows = []
    cov_path = run.root / "coverage" / "coverage.json"
    if cov_path.is_file():
        rec = json.loads(cov_path.read_text(encoding="utf-8"))
        fractions = np.asarray(rec["fractions"], dtype=np.float64)
        for j, name in enumerate(rec["features"]):
            frac = fractions[j, 0] if fractions.ndim > 1 else fractions[j]
            coverage_rows.append(CoverageRow(name, rec["truth"][j], float(frac),
                                             int(rec["n_datasets"]), rec["levels"][0]))
    fit_info = None
    fit_path = run.root / "fit" / "fit.json"
    if fit_path.is_file():
        rec = json.loads(fit_path.read_text(encoding="utf-8"))
        notes += [f"w_i f_i fit: {m}" for m in rec.get("messages", [])]
        fit_info = {k: rec[k] for k in ("converged", "n_iter", "nll", "grad_norm",
                                        "hessian_condition", "effective_rank", "n_events",
                                        "n_unidentified") if k in rec}
    for stage in STAGES:
        marker = run.root / ".stages" / f"{stage}.json"
        if marker.is_file():
            info = json.loads(marker.read_text(encoding="utf-8")).get("info", {})
            notes += [f"{stage}: {w}" for w in info.get("warnings", [])]
            if "skipped" in info:
                notes.append(f"{stage} skipped: {info['skipped']}")
    figures = {}
    for stem, caption in _FIGURE_CAPTIONS.items():
        png = run.root / "figures" / f"{stem}.png"
        if png.is_file():
            figures[caption] = png
    meta = run.metadata()
    provenance = {k: meta[k] for k in ("genval_version", "created", "python", "platform",
                                       "seed", "device", "config_hash") if k in meta}
    provenance["stage seconds"] = {s: v.get("seconds") for s, v in meta.get("stages",
                                                                            {}).items()}
    write_report(run.report_path, title=cfg.report.title, gof=gof_rows, coverage=coverage_rows,
                 figures=figures, fit=fit_info, metadata=provenance,
                 config_yaml=run.config_path.read_text(encoding="utf-8"), notes=notes)
    return {"figures": len(figures), "variants": [r.variant for r in gof_rows]}


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# --- running ----------------------------------------------------------------------------------

STAGE_FUNCTIONS: dict[str, Callable[[RunDir], dict[str, Any]]] = {
    "split": stage_split, "train": stage_train, "fit": stage_fit, "sample": stage_sample,
    "coverage": stage_coverage, "gof": stage_gof, "report": stage_report,
}


def run_stage(run: RunDir, stage: str, *, force: bool = False, log: Log | None = None
              ) -> StageOutcome:
    """Run one stage unless finished; warnings it raises are logged and kept in its marker."""
    say = log or (lambda _msg: None)

    def work() -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = STAGE_FUNCTIONS[stage](run)
        messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        for message in messages:
            say(f"[{stage}] warning: {message}")
        return {**info, "warnings": messages} if messages else info

    return run.run_stage(stage, work, force=force, log=log)


def run_pipeline(config: Config, *, run_dir: str | Path | None = None, force: bool = False,
                 stages: Sequence[str] = STAGES, log: Log | None = None) -> RunDir:
    """Run ``stages`` (default all) of ``config`` in ``run_dir`` (default ``config.run_dir``).

    Finished stages are skipped, so calling it again after a crash resumes; ``force`` re-runs
    every stage and lets a run directory of another configuration be overwritten.
    """
    run = RunDir.create(run_dir if run_dir is not None else config.run_dir, config, force=force)
    for stage in stages:
        run_stage(run, stage, force=force, log=log)
    return run
