"""The pipeline and CLI with conditional members (``context:`` in the config, issue 14)."""

import hashlib
import json

import click
import matplotlib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

matplotlib.use("Agg")

import genval as gv  # noqa: E402
from genval import gof  # noqa: E402
from genval.cli import register  # noqa: E402
from genval.config import (  # noqa: E402
    RUNTIME_KEYS,
    Config,
    ConfigError,
    config_hash,
    dump_config,
    parse_config,
)
from genval.members import ConditionalGaussianMembers, n_context_of  # noqa: E402
from genval.pipeline import artifacts  # noqa: E402
from genval.pipeline.context import ContextLayout  # noqa: E402
from genval.rundir import RunDir  # noqa: E402
from genval.transforms import FeatureTransform, TransformedMembers  # noqa: E402

# x0 > 0 (mean 5, sd 1) is the context, log-transformed as the members see it; x1 the event.
CONDITIONAL = {
    "quiet": True,
    "seed": 3,  # the three KDE members' shared weights are all positive (no LP fallback)
    "data": {"generate": {"mean": [5.0, 3.0], "std": [1.0, 0.5], "n_events": 1200},
             "transforms": {"x0": "log"}},
    "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
    "members": {"kind": "kde", "n_members": 3},
    "sample": {"n_events": 200},
    "coverage": {"enabled": False},
    "gof": {"n_kernels": 5, "n_toys": 20, "n_jobs": 1, "pool_size": 1200,
            "variants": ["frozen", "ensemble"]},
    "report": {"formats": ["png"], "dpi": 30},
    "context": {"features": ["x0"], "bins": {"x0": ["-inf", 5.0, "inf"]}},
}


@pytest.fixture
def cli():
    return register(click.Group("genval"))


def invoke(cli, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --- configuration ---------------------------------------------------------------------------

def test_no_context_keeps_the_hash_of_existing_configs():
    cfg = Config()
    assert cfg.context is None
    dumped = {k: v for k, v in cfg.model_dump(mode="json").items()
              if k not in RUNTIME_KEYS and k != "context"}
    expected = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()
    assert config_hash(cfg) == expected
    with_context = parse_config({"coverage": {"enabled": False},
                                 "context": {"features": ["x0"]}})
    assert config_hash(with_context) != expected


def test_context_section_round_trips_with_infinite_edges():
    cfg = parse_config({"coverage": {"enabled": False},
                        "context": {"features": ["x0"], "bins": {"x0": [float("-inf"), 0, "inf"]},
                                    "weights": "per_bin", "kernels": "follow"}})
    assert cfg.context.bins == {"x0": ["-inf", 0.0, "inf"]}
    assert cfg.context.edges("x0") == [-np.inf, 0.0, np.inf]
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    bins = cfg.context.context_bins()
    assert bins.n_bins == 2 and bins.labels == ["x0 in [-inf, 0)", "x0 in [0, inf)"]
    one = parse_config({"coverage": {"enabled": False}, "context": {"features": ["x1"]}})
    assert one.context.context_bins().n_bins == 1


@pytest.mark.parametrize(("context", "extra", "match"), [
    ({"features": ["pt"]}, {}, "not features"),
    ({"features": ["x0", "x1"]}, {}, "x needs at least one"),
    ({"features": ["x0"], "bins": {"x1": [0, 1]}}, {}, "not context features"),
    ({"features": ["x0"], "bins": {"x0": [1, 0]}}, {}, "strictly increasing"),
    ({"features": ["x0"], "bins": {"x0": [0, "a"]}}, {}, "must be numbers"),
    ({"features": ["x0", "x0"]}, {}, "repeats"),
    ({"features": ["x0"], "weights": "each"}, {}, "shared"),
    ({"features": ["x0"]}, {"coverage": {"enabled": True}}, "coverage.enabled: false"),
    ({"features": ["x0"]}, {"gof": {"n_test_sets": 2}}, "n_test_sets: 1"),
    ({"features": ["x0"]}, {"members": {"kind": "python", "factory": "m:f"}}, "python"),
])
def test_bad_context_sections_are_refused(context, extra, match):
    tree = {"coverage": {"enabled": False}, **extra, "context": context}
    with pytest.raises(ConfigError, match=match):
        parse_config(tree)


def test_layout_splits_and_joins_columns_and_transforms():
    cfg = parse_config({"coverage": {"enabled": False}, "data": {
        "generate": {"mean": [1, 2, 3], "std": [1, 1, 1]}, "transforms": {"x1": "log"}},
        "context": {"features": ["x1"]}})
    layout = ContextLayout.of(cfg, ["x0", "x1", "x2"])
    assert layout.x_names == ["x0", "x2"] and layout.c_names == ["x1"]
    events = np.arange(12.0).reshape(4, 3) + 1
    x, c = layout.split(events)
    np.testing.assert_array_equal(x, events[:, [0, 2]])
    np.testing.assert_array_equal(c, events[:, [1]])
    np.testing.assert_array_equal(layout.join(x, c), events)
    t_x, t_c = layout.transforms(FeatureTransform.from_spec({"x1": "log"}, ["x0", "x1", "x2"]))
    assert t_x.is_identity and t_c.describe() == ["log(x1)"]
    assert ContextLayout.of(Config(), ["x0", "x1"]) is None


def test_transformed_members_map_the_context_without_a_jacobian():
    # Base: x | u ~ N(u, 1) in u = log c; seen in physical c, the density in x is unchanged
    # apart from x's own Jacobian (identity here).
    base = ConditionalGaussianMembers(
        lambda u: np.broadcast_to(u[None, :, :1], (2, u.shape[0], 1)),
        lambda u: np.ones((2, u.shape[0], 1)), n_members=2, n_features=1, n_context=1)
    t_c = FeatureTransform.from_spec({"c": "log"}, ["c"])
    members = TransformedMembers(base, FeatureTransform.identity(["x"]), t_c)
    rng = np.random.default_rng(3)
    c = rng.uniform(0.5, 20.0, size=(50, 1))
    x = rng.normal(size=(50, 1))
    np.testing.assert_allclose(members.log_prob(x, context=c),
                               base.log_prob(x, context=np.log(c)), rtol=1e-12)
    draws = members.sample(4000, 0, rng, context=np.full((4000, 1), np.e ** 2))
    assert abs(draws.mean() - 2.0) < 5 * 1 / np.sqrt(4000)
    assert n_context_of(members) == 1


# --- a conditional run through the command line ---------------------------------------------

@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional")
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONDITIONAL))
    result = CliRunner().invoke(register(click.Group("genval")),
                                ["run", str(cfg), "--run-dir", str(root / "run")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "run"


def test_genval_run_trains_conditional_members_and_tests_per_bin(conditional_run):
    run = RunDir.open(conditional_run)
    members = artifacts.load_members(run)
    assert n_context_of(members) == 1 and members.n_features == 1
    fit = artifacts.load_conditional_fit(run)
    assert not fit.per_bin and fit.n_bins == 2 and fit.converged
    assert artifacts.has_fit(run)  # the shared fit, for every reader of fit/
    x_fit, c_fit = artifacts.context_layout(run).split(artifacts.split_events(run,
                                                                              "weight_fit")[0])
    np.testing.assert_array_equal(fit.bin_counts, [np.sum(c_fit[:, 0] < 5),
                                                   np.sum(c_fit[:, 0] >= 5)])
    n_test = len(artifacts.split_events(run, "test")[0])
    for variant in ("frozen", "ensemble"):
        result = artifacts.load_conditional_gof(run, variant)
        assert result.bins.n_bins == 2
        assert sum(r.n_test for r in result.per_bin) == n_test
        assert result.combined.t_obs == pytest.approx(sum(r.t_obs for r in result.per_bin))
        assert result.n_toys == 20 and 0 < result.p_global <= 1
        # gof/VARIANT.json is the combined test, as every reader of a variant shows it
        record = artifacts.load_gof(run, variant)
        assert record.result.t_obs == pytest.approx(result.combined.t_obs)
        np.testing.assert_allclose(record.result.t_null, result.combined.t_null)


def test_the_run_matches_a_direct_call_of_the_conditional_test(conditional_run):
    # The wiring (columns, bins, kernels per bin, seeds) reproduces the library call.
    run = RunDir.open(conditional_run)
    cfg = run.config()
    layout = artifacts.context_layout(run)
    x_test, c_test = layout.split(artifacts.split_events(run, "test")[0])
    x_cen, c_cen = layout.split(artifacts.split_events(run, "centres")[0])
    from genval.pipeline.seeds import stage_seed

    seed = stage_seed(cfg, "gof")
    t_x, _ = layout.transforms(artifacts.load_transform(run))
    bases = gof.bin_kernel_bases(x_cen, c_cen, layout.bins, 5, cfg.gof.sigma,
                                 standardize=True, transform=t_x, seed=seed)
    g = cfg.gof
    settings = gof.GoFSettings(
        centre=g.constraint_centre, n_pools=g.n_pools, pool_size=g.pool_size, n_jobs=1,
        max_negative_mass=g.max_negative_mass, max_failed_fraction=g.max_failed_fraction,
        profile=gof.ProfileSettings(lam=g.lambda_net))
    direct = gof.conditional_goodness_of_fit(
        artifacts.load_members(run), artifacts.load_conditional_fit(run), x_test, c_test,
        bases, layout.bins, n_toys=20, seed=seed, variant="ensemble", settings=settings)
    saved = artifacts.load_conditional_gof(run, "ensemble")
    np.testing.assert_allclose([r.t_obs for r in saved.per_bin],
                               [r.t_obs for r in direct.per_bin], rtol=1e-10)
    np.testing.assert_allclose(saved.combined.t_null, direct.combined.t_null, rtol=1e-10)
    assert saved.p_global == direct.p_global


def test_results_and_report_show_z_per_bin_beside_the_combined_z(cli, conditional_run):
    text = invoke(cli, "results", conditional_run).output
    assert "x0 in [-inf, 5)" in text and "x0 in [5, inf)" in text
    assert "combined (sum of the bins' t)" in text and "look-elsewhere corrected" in text
    summary = json.loads(invoke(cli, "results", conditional_run, "--json").output)
    entry = summary["gof"]["ensemble"]
    ctx = entry["context"]
    assert [b["bin"] for b in ctx["bins"]] == ["x0 in [-inf, 5)", "x0 in [5, inf)"]
    assert float(ctx["z_combined"]) == pytest.approx(float(entry["z"]))
    loaded = gv.load_run(conditional_run)
    result = loaded.conditional_gof["ensemble"]
    for b, res in zip(ctx["bins"], result.per_bin, strict=True):
        assert float(b["z"]) == pytest.approx(res.z)
    assert float(ctx["p_global"]) == pytest.approx(result.p_global)
    html = (conditional_run / "report.html").read_text(encoding="utf-8")
    assert "Per context bin" in html and "x0 in [5, inf)" in html
    assert "look-elsewhere corrected" in html
    notebook = loaded._repr_html_()
    assert "Per context bin" in notebook and "x0 in [-inf, 5)" in notebook


def test_samples_are_drawn_x_given_the_observed_contexts(conditional_run):
    run = RunDir.open(conditional_run)
    table, density, density_std = artifacts.load_samples(run)
    assert table.names == ["x0", "x1"] and table.x.shape == (200, 2)
    _, c_fit = artifacts.context_layout(run).split(artifacts.split_events(run, "weight_fit")[0])
    # every sampled context is one of the weight-fit split's
    assert np.isin(table.x[:, 0], c_fit[:, 0]).all()
    assert np.all(density > 0) and np.all(np.isfinite(density_std))


def test_toy_ranges_are_refused_for_conditional_runs(cli, conditional_run):
    result = CliRunner().invoke(cli, ["gof", str(conditional_run), "--toys", "0:5"])
    assert result.exit_code != 0 and "conditional" in result.output


def test_per_bin_weights_through_the_python_api(tmp_path):
    cfg = {**CONDITIONAL, "context": {**CONDITIONAL["context"], "weights": "per_bin",
                                      "kernels": "follow"},
           # each bin's own weights of three near-identical KDE members are signed: allow
           # the small negative mass this leaves (recorded by the sampler and the toys)
           "gof": {**CONDITIONAL["gof"], "variants": ["ensemble"], "max_negative_mass": 0.01}}
    run = gv.run(config=cfg, run_dir=tmp_path / "run")
    fit = run.conditional_fit
    assert fit.per_bin and len(fit.fits) == 2 and run.fit is None
    assert [e["bin"] for e in run.summary()["fit_per_bin"]] == ["x0 in [-inf, 5)",
                                                                 "x0 in [5, inf)"]
    result = run.conditional_gof["ensemble"]
    assert result.per_bin_weights
    # kernels: follow -> each bin's kernels move with the conditional mean
    assert all("location" in r.kernel_basis for r in result.per_bin)
    assert run.status["report"].done


def test_conditional_flows_train_through_the_pipeline(tmp_path):
    cfg = {**CONDITIONAL, "members": {"kind": "flow", "n_members": 2, "flow": {
        "layers": 1, "hidden": 8, "blocks": 1, "bins": 4, "max_epochs": 2,
        "learning_rate": 1e-3, "batch_size": 128}},
        "gof": {**CONDITIONAL["gof"], "n_toys": 10, "variants": ["ensemble"]}}
    run = gv.run(config=cfg, run_dir=tmp_path / "run")
    members = run.members()
    assert n_context_of(members) == 1
    assert run.conditional_gof["ensemble"].n_toys == 10
