"""The Python entry point: gv.run on arrays or files, gv.load_run, the Run's display."""

import json

import click
import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

matplotlib.use("Agg")

import genval as gv  # noqa: E402
from genval.cli import register  # noqa: E402
from genval.coverage import CoverageResult  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.gof import GoFResult  # noqa: E402
from genval.pipeline import artifacts  # noqa: E402
from genval.rundir import RunDirError  # noqa: E402
from genval.wifi import WeightFit  # noqa: E402

TINY = {"quiet": True,
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
        "sample": {"n_events": 300},
        "coverage": {"n_datasets": 3, "n_events": 100, "n_generated": 200},
        "gof": {"n_kernels": 10, "n_toys": 6, "pool_size": 2000, "n_pools": 2},
        "report": {"formats": ["png"], "dpi": 30, "pool_size": 2000}}


def _events(rng, n=800, shift=0.0):
    return rng.normal([-0.5 + shift, 0.6], [0.25, 0.4], size=(n, 2))


def test_run_on_arrays_returns_typed_results_and_loads_back(tmp_path, rng):
    x = _events(rng)
    run = gv.run(x, config=TINY, run_dir=tmp_path / "run", features=["pt", "eta"])
    assert isinstance(run, gv.Run)
    assert {s: st.state for s, st in run.status.items()} == {
        "split": "done", "train": "done", "fit": "done", "sample": "done",
        "coverage": "skipped", "gof": "done", "report": "done"}
    assert run.status["coverage"].skipped.startswith(
        "the truth is unknown for data read from a file")
    assert isinstance(run.fit, WeightFit) and run.fit.converged
    assert set(run.gof) == {"single", "frozen", "ensemble"}
    assert all(isinstance(r, GoFResult) for r in run.gof.values())
    assert run.coverage is None
    # The arrays live in the run directory, and the config points at them.
    kept = artifacts.input_path(run.root, "events")
    assert run.config.data.path == str(kept.resolve())
    np.testing.assert_array_equal(run.events("train").shape[1], 2)
    assert run.report_path.is_file() and "marginals" in run.figures
    x_s, density, density_std = run.samples()
    assert x_s.shape == (300, 2) and density.shape == density_std.shape == (300,)
    # Loaded back from disk: the same objects and numbers.
    again = gv.load_run(run.root)
    np.testing.assert_array_equal(again.fit.weights, run.fit.weights)
    for variant, res in run.gof.items():
        assert again.gof[variant].t_obs == res.t_obs and again.gof[variant].z == res.z
    summary = json.loads(json.dumps(again.summary()))
    assert summary["gof"]["ensemble"]["z"] == pytest.approx(run.gof["ensemble"].z)
    assert summary["gof"]["ensemble"]["p_interval"] == list(run.gof["ensemble"].p_interval)
    assert summary["status"]["coverage"] == "skipped" and "coverage" not in summary
    # The notebook display: stage states, the variants' numbers, the figures.
    page = run._repr_html_()
    assert "genval run" in page and "✔ done" in page and "⚠ skipped" in page
    assert "ensemble with uncertainty" in page
    assert page.count("<img") == len(run.figures) > 0
    lo, hi = run.gof["frozen"].p_interval
    assert gv.display.format_interval(run.gof["frozen"].p_value, lo, hi, html=True) in page
    # The command line works on a run started from Python.
    cli = register(click.Group("genval"))
    result = CliRunner().invoke(cli, ["report", str(run.root), "--force"],
                                catch_exceptions=False)
    assert result.exit_code == 0


def test_run_resumes_and_refuses_other_events(tmp_path, rng):
    x = _events(rng)
    root = tmp_path / "run"
    stages = ["split", "train", "fit"]
    first = gv.run(x, config=TINY, run_dir=root, stages=stages)
    finished = {s: first.status[s].finished for s in stages}
    again = gv.run(x.copy(), config=TINY, run_dir=root, stages=stages)
    assert {s: again.status[s].finished for s in stages} == finished  # nothing re-ran
    with pytest.raises(RunDirError, match="other events"):
        gv.run(x + 0.01, config=TINY, run_dir=root, stages=stages)
    replaced = gv.run(x + 0.01, config=TINY, run_dir=root, stages=stages, force=True)
    np.testing.assert_allclose(replaced.events("train").mean(),
                               first.events("train").mean() + 0.01, atol=0.02)


def test_run_from_a_file_with_test_events_and_a_generated_default(tmp_path, rng):
    from genval.io import write_events

    path = write_events(tmp_path / "ev.csv", _events(rng), ["a", "b"])
    x_test = _events(rng, 300)
    run = gv.run(path, test_events=x_test, config={**TINY, "splits": {
        "train": 0.6, "weight_fit": 0.3, "centres": 0.05, "test": None}},
        run_dir=tmp_path / "run", stages=["split", "train", "fit"])
    assert run.config.data.path == str(path)
    assert run.config.data.test_path == str(artifacts.input_path(run.root, "test_events")
                                            .resolve())
    np.testing.assert_array_equal(run.events("test"), x_test)
    # No events: the config's own source (the generated toy) and the coverage study.
    toy = gv.run(config=TINY, run_dir=tmp_path / "toy", overrides={"data.generate.n_events":
                                                                   800, "gof.enabled": False})
    assert isinstance(toy.coverage, CoverageResult) and toy.coverage_features == ["x0", "x1"]
    assert toy.summary()["coverage"]["features"]["x0"]["truth"] == -0.5


def test_bad_arrays_are_refused(tmp_path, rng):
    with pytest.raises(InputError, match="NaN"):
        gv.run(np.full((10, 2), np.nan), config=TINY, run_dir=tmp_path / "a")
    with pytest.raises(InputError, match="features names 3 features"):
        gv.run(_events(rng), features=["a", "b", "c"], config=TINY, run_dir=tmp_path / "b")
    with pytest.raises(RunDirError, match="not a genval run directory"):
        gv.load_run(tmp_path)


def _sampler(shift):
    """A generator that can only sample (a GAN): the paper's toy, shifted by ``shift``."""
    def sample(n, rng):
        return rng.normal([-0.5 + shift, 0.6], [0.25, 0.4], size=(n, 2))
    return sample


@pytest.mark.parametrize(("shift", "rejected"), [(0.0, False), (0.1, True)])
def test_sample_only_generator_recipe(tmp_path, shift, rejected):
    """docs/pipeline.md, "A generator that only samples": density members (here scikit-learn
    mixtures through members.factory) trained on the generator's output, tested against
    held-out real data. A shift of 0.4 sigma in x0 is rejected at the toys' reach; the right
    generator is not (one seed: a check of the recipe's wiring; the test's calibration is
    studied in studies/)."""
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(12)
    real = _events(rng, 1000)
    generated = _sampler(shift)(6000, rng)
    config = {**TINY, "splits": {"train": 0.5, "weight_fit": 0.45, "centres": 0.05},
              "members": {"kind": "python", "n_members": 4,
                          "factory": "byo_support:gaussian_mixtures"},
              "gof": {"n_kernels": 20, "n_toys": 40, "pool_size": 5000, "n_pools": 2,
                      "variants": ["ensemble"], "sigma": 0.1}}
    run = gv.run(generated, test_events=real, config=config, run_dir=tmp_path / "run",
                 stages=["split", "train", "fit", "gof"])
    res = run.gof["ensemble"]
    assert res.n_test == 1000 and res.n_failed == 0
    if rejected:
        assert res.z_is_bound and res.p_value == pytest.approx(1 / 41)
    else:
        assert res.p_value > 0.05
