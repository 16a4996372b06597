"""The stage wiring on KDE members (no flows): artifacts, resume, isolation, the real GoF."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import genval  # noqa: E402
from genval import gof, pipeline  # noqa: E402
from genval.config import parse_config  # noqa: E402
from genval.coverage import CoverageResult  # noqa: E402
from genval.errors import FitError, InputError  # noqa: E402
from genval.io import read_events, write_events  # noqa: E402
from genval.pipeline import artifacts, gof_figures  # noqa: E402
from genval.rundir import RunDir  # noqa: E402
from genval.splits import Splits  # noqa: E402
from genval.wifi import WeightFit  # noqa: E402

FAST = ["split", "train", "fit", "sample", "coverage", "report"]


def tiny(tmp_path, **extra):
    base = {"run_dir": str(tmp_path / "run"), "quiet": True,
            "data": {"generate": {"n_events": 800}},
            "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
            "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
            "sample": {"n_events": 500, "output": "samples.parquet"},
            "coverage": {"n_datasets": 3, "n_events": 200, "n_generated": 400},
            "gof": {"n_kernels": 10},
            "report": {"formats": ["png"], "dpi": 40, "pool_size": 5000}}
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(base)


def test_stages_write_every_artifact_and_skip_when_rerun(tmp_path):
    cfg = tiny(tmp_path)
    run = pipeline.run_pipeline(cfg, stages=FAST)
    root = run.root
    for rel in ["config.yaml", "metadata.json", "data/splits.npz", "data/events.npz",
                "models/kde.json", "fit/fit.npz", "fit/fit.json", "samples/samples.parquet",
                "samples/density.npz", "coverage/coverage.json", "figures/weights.png",
                "figures/coverage.png", "report.html"]:
        assert (root / rel).is_file(), rel
    assert not list(root.rglob("*.tmp"))
    samples = read_events(root / "samples" / "samples.parquet", ["x1", "x0"])
    assert samples.x.shape == (500, 2)
    fit = pipeline.load_fit(run)
    assert fit.weights.shape == (3,) and abs(fit.weights.sum() - 1) < 1e-9
    meta = run.metadata()
    assert set(meta["stages"]) == set(FAST) and meta["data"]["splits"]["hash"]
    assert {"data", "split", "train", "sample", "coverage"} <= set(meta["seeds"])
    report = (root / "report.html").read_text()
    assert "Coverage of the first moment" in report and "61.3 %" in report
    # Everything finished: a second call runs nothing.
    log = []
    pipeline.run_pipeline(cfg, stages=FAST, log=log.append)
    assert all("already done" in m for m in log) and len(log) == len(FAST)


def test_crash_after_training_resumes_without_retraining(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    real_fit = pipeline.STAGE_FUNCTIONS["fit"]

    def crash(run, **_):
        raise KeyboardInterrupt  # what a Ctrl-C (or a kill) mid-fit leaves behind

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "fit", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(cfg, stages=FAST)
    run = RunDir.open(cfg.run_dir)
    assert run.status()["train"] and not run.status()["fit"]
    trained_at = json.loads((run.root / ".stages" / "train.json").read_text())["finished"]
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "fit", real_fit)
    calls = []
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "train", lambda r, **_: calls.append(r) or {})
    pipeline.run_pipeline(cfg, stages=FAST)
    assert calls == []  # not retrained
    assert json.loads((run.root / ".stages" / "train.json").read_text())["finished"] == \
        trained_at
    assert run.status()["report"]


def test_killed_process_resumes_without_retraining(tmp_path):
    cfg = tiny(tmp_path, coverage={"n_datasets": 40})  # slow enough to be killed in coverage
    script = textwrap.dedent(f"""
        import matplotlib; matplotlib.use("Agg")
        from genval.config import parse_config
        from genval.pipeline import run_pipeline
        run_pipeline(parse_config({cfg.model_dump(mode="json")!r}), stages={FAST!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(genval.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    marker = Path(cfg.run_dir) / ".stages" / "train.json"
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists()
    run = RunDir.open(cfg.run_dir)
    assert not run.status()["report"]  # it really died mid-run
    outcomes = [pipeline.run_stage(run, s) for s in FAST]
    assert not outcomes[1].ran  # train skipped
    assert all(run.status()[s] for s in FAST)


def test_training_and_fit_never_see_the_test_split(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    taken = []
    real_take = Splits.take

    def spy(self, x, name):
        taken.append(name)
        return real_take(self, x, name)

    monkeypatch.setattr(Splits, "take", spy)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit"])
    assert set(taken) == {"train", "weight_fit"}
    # And the rows themselves: no test event is among those the stages were given.
    splits = Splits.load(run.splits_path)
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["weight_fit"]))
    taken.clear()
    pipeline.run_pipeline(cfg, stages=["sample"])
    assert "test" not in taken


def test_file_input_with_separate_test_file_and_skipped_coverage(tmp_path, rng):
    x = rng.normal([0.0, 1.0, 2.0], 0.5, size=(600, 3))
    write_events(tmp_path / "events.csv", x, ["a", "b", "c"])
    write_events(tmp_path / "test.h5:events", x[:150] + 0.01, ["a", "b", "c"])
    cfg = tiny(tmp_path, data={"path": str(tmp_path / "events.csv"), "features": ["c", "a"],
                               "test_path": f"{tmp_path}/test.h5:events"},
               splits={"train": 0.6, "weight_fit": 0.3, "centres": 0.1, "test": None})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "coverage", "report"])
    test, names = pipeline.split_events(run, "test")
    assert names == ["c", "a"] and test.shape == (150, 2)
    np.testing.assert_allclose(test[:, 0], x[:150, 2] + 0.01)
    info = json.loads((run.root / ".stages" / "coverage.json").read_text())["info"]
    assert "truth is unknown" in info["skipped"]
    assert "coverage skipped" in (run.root / "report.html").read_text()


def test_split_stage_refuses_bad_input(tmp_path, rng):
    x = rng.normal(size=(100, 2))
    x[7] = np.nan
    write_events(tmp_path / "ok.npy", rng.normal(size=(100, 2)))
    np.save(tmp_path / "nan.npy", x)
    cases = [({"path": str(tmp_path / "nan.npy")}, r"1 rows with NaN/inf \(first at row 7\)"),
             ({"path": str(tmp_path / "gone.csv")}, "data file not found"),
             ({"path": str(tmp_path / "ok.npy"), "features": ["x0", "x5"]},
              r"feature 'x5' not found .*available: x0, x1"),
             ({"path": str(tmp_path / "ok.npy")}, r"split 'centres' would hold 5 of 100 events, "
                                                  r"fewer than the 20 required "
                                                  r"\(splits.min_events\)")]
    for i, (data, message) in enumerate(cases):
        cfg = tiny(tmp_path, data=data, run_dir=str(tmp_path / f"r{i}"))
        with pytest.raises(InputError, match=message):
            pipeline.run_pipeline(cfg, stages=["split"])


def test_mismatched_test_file_dimensions(tmp_path, rng):
    write_events(tmp_path / "train.npz", rng.normal(size=(400, 2)), ["a", "b"])
    write_events(tmp_path / "test.npz", rng.normal(size=(100, 3)), ["a", "b", "c"])
    write_events(tmp_path / "test2.npz", rng.normal(size=(100, 1)), ["a"])
    for name, message in [("test.npz", None), ("test2.npz", r"feature 'b' not found")]:
        cfg = tiny(tmp_path, run_dir=str(tmp_path / f"run-{name}"),
                   data={"path": str(tmp_path / "train.npz"),
                         "test_path": str(tmp_path / name)},
                   splits={"train": 0.6, "weight_fit": 0.3, "centres": 0.1, "test": None})
        if message is None:  # extra columns are fine: features are selected by name
            run = pipeline.run_pipeline(cfg, stages=["split"])
            assert pipeline.split_events(run, "test")[0].shape == (100, 2)
        else:
            with pytest.raises(InputError, match=message):
                pipeline.run_pipeline(cfg, stages=["split"])


def test_stage_seeds_are_distinct_and_reproducible():
    cfg = parse_config({"seed": 3})
    names = ("data", "split", "train", "gof", "figures", "sample", "coverage")
    seeds = {s: pipeline.stage_seed(cfg, s) for s in names}
    assert len(set(seeds.values())) == len(names)
    assert seeds["gof"] == pipeline.stage_seed(parse_config({"seed": 3}), "gof")
    assert seeds["gof"] != pipeline.stage_seed(parse_config({"seed": 4}), "gof")


def test_missing_matplotlib_skips_figures_with_a_recorded_warning(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "report"])
    assert not (run.root / "figures" / "weights.png").exists()
    info = json.loads((run.root / ".stages" / "fit.json").read_text())["info"]
    assert any("FigureSkippedWarning" in w and "genval[plots]" in w for w in info["warnings"])
    assert "figure &#x27;weights&#x27; skipped" in (run.root / "report.html").read_text()


def _gof_config(tmp_path, **gof):
    return tiny(tmp_path, gof={"n_kernels": 10, "n_toys": 12, "pool_size": 2000, "n_jobs": 1,
                               **gof})


def test_gof_stage_writes_results_figures_and_report(tmp_path, monkeypatch):
    calls = []
    real = gof.goodness_of_fit

    def spy(members, fit, x_test, basis, **kw):
        calls.append((kw["variant"], len(x_test), kw["member"], kw["seed"], kw["prepared"]))
        return real(members, fit, x_test, basis, **kw)

    monkeypatch.setattr(gof, "goodness_of_fit", spy)
    cfg = _gof_config(tmp_path, n_test_sets=2)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof", "report"])
    # per test set, every variant on one preparation (test rows and f(x; ŵ) pools shared)
    assert [c[0] for c in calls] == ["single", "frozen", "ensemble"] * 2
    assert {c[1] for c in calls} == {80}  # two disjoint halves of the 160 test events
    assert calls[0][2] == 0 and calls[1][2] is None and calls[3][3] == calls[0][3] + 1
    assert calls[1][4] is calls[2][4] and calls[3][4] is not calls[0][4]
    for variant in ("single", "frozen", "ensemble"):
        record = artifacts.load_gof(run, variant)
        res = record.result
        # The saved record is the real GoFResult: every field read back by name.
        assert isinstance(res, gof.GoFResult) and res.variant == variant
        assert res.n_toys == 12 and res.toy_converged.shape == res.toy_size.shape == (12,)
        assert res.n_test == 80 and res.n_kernels == 10 and res.pool_size == 2000
        assert record.z_summary.n_sets == 2 and record.error is None
        raw = json.loads((run.root / "gof" / f"{variant}.json").read_text())
        assert len(raw["per_set"]) == 2
        assert (run.root / "figures" / f"null_{variant}.png").is_file()
    assert (run.root / "figures" / "marginals.png").is_file()
    report = (run.root / "report.html").read_text()
    assert report.count("data:image/png") == 6  # marginals, the pair, 3 nulls, weights
    assert "20.29 ± 0.10" in report and "ensemble with uncertainty" in report
    # the p interval beside Clopper-Pearson includes the toy pools' share
    res = artifacts.load_gof(run, "ensemble").result
    lo, hi = res.p_interval_total
    assert "p interval: with the pools&#x27; share" in report or \
        "p interval: with the pools' share" in report
    assert f"[{lo:.3g}, {hi:.3g}]" in report and res.n_pools == 4
    ensemble = artifacts.load_gof(run, "ensemble")
    assert f"<b>{ensemble.z_summary.median:.2f}" in report or \
        f"<b>≥ {ensemble.z_summary.median:.2f}" in report


@pytest.mark.filterwarnings("ignore:the mixture f.* is negative:"
                            "genval.errors.NegativeDensityWarning")  # signed KDE weights
def test_gof_result_round_trips_through_its_artifact(tmp_path):
    cfg = _gof_config(tmp_path, variants=["ensemble"])
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit"])
    members, fit = pipeline.load_members(run), pipeline.load_fit(run)
    x_test, _ = pipeline.split_events(run, "test")
    x_centres, _ = pipeline.split_events(run, "centres")
    basis = gof.KernelBasis.from_events(x_centres, 10, 0.05, seed=1)
    result = gof.goodness_of_fit(members, fit, x_test, basis, n_toys=6, seed=3,
                                 pool_size=2000, n_jobs=1)
    artifacts.save_gof(run, [result], None)
    back = artifacts.load_gof(run, "ensemble").result
    for field in dataclasses.fields(gof.GoFResult):
        if field.name == "observed":
            assert back.observed is None
            continue
        np.testing.assert_equal(getattr(back, field.name), getattr(result, field.name),
                                err_msg=field.name)
    assert back.z == result.z and back.z_chi2 == result.z_chi2
    assert gof.GoFResult.from_dict(result.to_dict()).toy_size.dtype == np.int64


def test_fit_and_coverage_round_trip_through_their_artifacts(tmp_path):
    run = pipeline.run_pipeline(tiny(tmp_path), stages=["split", "train", "fit", "coverage"])
    fit = pipeline.load_fit(run)
    again = WeightFit.from_dict(fit.to_dict())
    for field in dataclasses.fields(WeightFit):
        np.testing.assert_equal(getattr(again, field.name), getattr(fit, field.name))
    record = artifacts.load_coverage(run)
    assert record.features == ["x0", "x1"] and record.result.n_datasets == 3
    again = CoverageResult.from_dict(record.result.to_dict())
    for field in dataclasses.fields(CoverageResult):
        np.testing.assert_equal(getattr(again, field.name), getattr(record.result, field.name))
    with pytest.raises(KeyError):
        WeightFit.from_dict({k: v for k, v in fit.to_dict().items() if k != "nll"})


def test_one_undefined_gof_variant_does_not_stop_the_others(tmp_path, monkeypatch):
    real = gof.goodness_of_fit

    def frozen_fails(members, fit, x_test, basis, **kw):
        if kw["variant"] == "frozen":
            raise FitError("the mixture density f(x; ŵ) is <= 0 on 2 of 40 test events")
        return real(members, fit, x_test, basis, **kw)

    monkeypatch.setattr(gof, "goodness_of_fit", frozen_fails)
    cfg = _gof_config(tmp_path)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof", "report"])
    assert "error" in json.loads((run.root / "gof" / "frozen.json").read_text())
    assert artifacts.load_gof(run, "frozen").result is None
    assert (run.root / "figures" / "null_ensemble.png").is_file()
    info = json.loads((run.root / ".stages" / "gof.json").read_text())["info"]
    assert any("GofVariantWarning" in w and "'frozen' undefined" in w for w in info["warnings"])
    report = (run.root / "report.html").read_text()
    assert "failed: the mixture density" in report


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_marginals_figure_is_immune_to_densities_that_underflow(tmp_path, monkeypatch):
    """Fig. 1 needs only ratios h/f: rows scaled by one factor give the same bins, even when
    every member and kernel density of the pool underflows exp (log-density −1000)."""
    run = pipeline.run_pipeline(_gof_config(tmp_path), stages=["split", "train", "fit"])
    members, fit = pipeline.load_members(run), pipeline.load_fit(run)
    x_test, names = pipeline.split_events(run, "test")
    x_centres, _ = pipeline.split_events(run, "centres")
    basis = gof.KernelBasis.from_events(x_centres, 10, 0.05, seed=1)
    stat = types.SimpleNamespace(phi1=fit.weights + 0.01 * np.array([1.0, -1.0, 0.0]),
                                 a=np.full(10, 0.02))
    drawn = []
    monkeypatch.setattr(gof_figures, "draw", lambda _run, stem, _plot, **kw:
                        drawn.append(kw["hists"]) if stem == "marginals" else None)
    gof_figures.alternative_figures(run, members, fit, basis, x_test, names, stat, 5)
    real_sample = gof_figures.sample_mixture

    def far_in_the_tail(*args, **kwargs):
        pool = real_sample(*args, **kwargs)
        return dataclasses.replace(pool, log_f=pool.log_f - 1000.0)

    monkeypatch.setattr(gof_figures, "sample_mixture", far_in_the_tail)
    tiny_basis = types.SimpleNamespace(log_pdf=lambda x: basis.log_pdf(x) - 1000.0,
                                       n_kernels=basis.n_kernels, centers=basis.centers)
    gof_figures.alternative_figures(run, members, fit, tiny_basis, x_test, names, stat, 5)
    assert np.exp(-1000.0) == 0.0  # unscaled, every density would be 0 here
    for plain, scaled in zip(drawn[0], drawn[1], strict=True):
        assert plain.reco is not None and np.all(np.isfinite(scaled.reco))
        for attr in ("ref", "ref_std", "reco", "data"):
            np.testing.assert_allclose(getattr(scaled, attr), getattr(plain, attr),
                                       rtol=1e-9, err_msg=attr)


def test_negative_mass_and_sampler_diagnostics_reach_the_report(tmp_path):
    run = pipeline.run_pipeline(tiny(tmp_path), stages=["split", "train", "fit", "sample",
                                                        "report"])
    fit_info = run.stage_info("fit")
    sampler = artifacts.load_sampler(run)
    assert 0.0 <= fit_info["negative_mass"] < 1.0 and fit_info["negative_mass_error"] >= 0.0
    assert sampler["n_accepted"] >= tiny(tmp_path).sample.n_events
    assert sampler["evaluations_per_event"] >= 1.0
    report = (run.root / "report.html").read_text(encoding="utf-8")
    assert "negative mass of f (fit, quick)" in report
    assert (f"negative mass of f (samples)</th><td>{sampler['negative_mass']:.3g} ± "
            f"{sampler['negative_mass_error']:.2g}") in report
    assert f"{sampler['evaluations_per_event']:.2f} evaluations per event" in report
