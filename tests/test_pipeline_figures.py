"""The figures and report of a user's collider-like data (issue 11) and of failed variants
(issue 17), through the real stages on KDE members."""

import dataclasses
import json
import math
import re

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from genval import gof, pipeline, plots  # noqa: E402
from genval.config import parse_config  # noqa: E402
from genval.io import write_events  # noqa: E402
from genval.paper import PAPER_COVERAGE, PAPER_Z  # noqa: E402
from genval.pipeline import artifacts, gof_figures  # noqa: E402
from genval.pipeline.figures import FigureSettingWarning  # noqa: E402

FEATURES = ["jet1_pt", "jet1_eta", "jet1_mass", "jet2_pt", "jet2_eta", "jet2_mass", "mjj",
            "deta_jj"]
LABELS = {"jet1_pt": r"$p_T^{j_1}$", "jet1_eta": r"$\eta^{j_1}$", "mjj": r"$m_{jj}$"}
UNITS = {"jet1_pt": "GeV", "jet1_mass": "GeV", "jet2_pt": "GeV", "jet2_mass": "GeV",
         "mjj": "GeV"}


def multijet_like(rng, n):
    """Eight features shaped like a dijet sample: falling pT and masses, bounded eta."""
    pt1 = 250 * (1 + rng.pareto(3.0, n))  # a power-law tail above a 250 GeV threshold
    pt2 = pt1 * rng.uniform(0.6, 1.0, n)
    eta1, eta2 = rng.normal(0, 1.2, n), rng.normal(0, 1.2, n)
    m1, m2 = rng.gamma(4, 7, n), rng.gamma(4, 6, n)
    deta = np.abs(eta1 - eta2)
    mjj = 2 * np.sqrt(pt1 * pt2) * np.cosh(deta / 2)
    return np.column_stack([pt1, eta1, m1, pt2, eta2, m2, mjj, deta])


def user_config(tmp_path, rng, **report):
    write_events(tmp_path / "events.csv", multijet_like(rng, 1200), FEATURES)
    return parse_config({
        "run_dir": str(tmp_path / "run"), "quiet": True,
        "data": {"path": str(tmp_path / "events.csv"), "features": FEATURES,
                 "labels": LABELS, "units": UNITS},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
        "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": "scott"}},
        "gof": {"variants": ["ensemble"], "n_kernels": 10, "sigma": 0.5, "standardize": True,
                "n_toys": 12, "pool_size": 2000, "n_jobs": 1},
        "report": {"formats": ["png"], "dpi": 30, "pool_size": 5000, **report}})


@pytest.fixture
def spy(monkeypatch):
    """The figures the stages draw (the real plotting functions still run)."""
    seen = {}
    for name in ("plot_marginals", "plot_pairs"):
        real = getattr(plots, name)

        def record(*args, _real=real, _name=name, **kwargs):
            seen[_name] = (kwargs, _real(*args, **kwargs))
            return seen[_name][1]

        monkeypatch.setattr(plots, name, record)
    return seen


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_user_run_report_has_labels_units_log_scales_and_no_paper_numbers(tmp_path, rng, spy):
    cfg = user_config(tmp_path, rng)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof", "report"])
    info = run.stage_info("gof")
    assert not any("FigureSkipped" in w for w in info.get("warnings", []))
    kwargs, fig = spy["plot_marginals"]
    hists = {h.name: h for h in kwargs["hists"]}
    assert list(hists) == FEATURES and kwargs["max_columns"] == 4
    assert len(fig.axes) == 16 and fig.get_size_inches()[0] <= 24.0  # two rows of four
    tops = dict(zip(FEATURES, fig.axes[:8], strict=True))
    bottoms = dict(zip(FEATURES, fig.axes[8:], strict=True))
    assert bottoms["jet1_pt"].get_xlabel() == r"$p_T^{j_1}$ [GeV]"
    assert bottoms["jet2_mass"].get_xlabel() == "jet2_mass [GeV]"  # unit without a label
    assert bottoms["deta_jj"].get_xlabel() == "deta_jj"
    assert tops["jet1_pt"].get_ylabel().startswith("Events / ") and \
        tops["jet1_pt"].get_ylabel().endswith(" GeV")
    # log y where the spectrum falls steeply (pT, m_jj), linear for the bounded eta
    assert tops["jet1_pt"].get_yscale() == "log" and tops["mjj"].get_yscale() == "log"
    assert tops["jet1_eta"].get_yscale() == "linear"
    assert all(h.data_sumw2 is None and h.n_data == 240 for h in hists.values())
    # 2D views: the three most correlated pairs; pT1-pT2 and m_jj-pT are among them.
    pair_names = [p.names for p in spy["plot_pairs"][0]["pairs"]]
    assert len(pair_names) == 3 and ("jet1_pt", "jet2_pt") in pair_names
    report = (run.root / "report.html").read_text(encoding="utf-8")
    # (as the report would print them for the paper's toy; a bare "20.29" may be a kernel's
    # position in GeV)
    for z, up, _ in PAPER_Z.values():
        assert f"{z:.2f} ± {up:.2f}" not in report and f"{z:.2f} <sup>+{up:.2f}" not in report
    for cov in PAPER_COVERAGE:
        assert f"{100 * cov:.1f} %" not in report
    assert "paper Z" not in report and "(paper Fig." not in report
    assert "Where the alternative deviates" in report and "jet1_pt" in report
    assert report.count("data:image/png") == 4  # marginals, pairs, null, weights
    deviations = artifacts.load_deviations(run)
    assert deviations["variant"] == "ensemble" and len(deviations["features"]) == 8
    for kernel in deviations["kernels"]:
        assert set(kernel["centre"]) == set(FEATURES)
        assert kernel["events"] == pytest.approx(240 * kernel["a"])  # N_test a_k


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_configured_log_y_pairs_columns_and_event_weights(tmp_path, rng, spy, monkeypatch):
    cfg = user_config(tmp_path, rng, log_y=["jet1_eta"], pairs=[["mjj", "deta_jj"]],
                      max_columns=3)
    test_weights = rng.normal(1.0, 0.8, 240)  # negative weights too (NLO-like)
    monkeypatch.setattr(artifacts, "split_weights",
                        lambda run, name: test_weights if name == "test" else None,
                        raising=False)
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof"])
    kwargs, fig = spy["plot_marginals"]
    assert kwargs["max_columns"] == 3
    scales = [ax.get_yscale() for ax in fig.axes[:8]]
    assert scales == ["linear", "log"] + ["linear"] * 6
    x_test, _ = pipeline.split_events(run, "test")
    for j, h in enumerate(kwargs["hists"]):
        assert h.n_data == pytest.approx(test_weights.sum())
        inside = (x_test[:, j] >= h.edges[0]) & (x_test[:, j] <= h.edges[-1])
        np.testing.assert_allclose(np.sum(h.data), test_weights[inside].sum())
        np.testing.assert_allclose(np.sum(h.data_sumw2), np.sum(test_weights[inside] ** 2))
    assert [p.names for p in spy["plot_pairs"][0]["pairs"]] == [("mjj", "deta_jj")]


@pytest.mark.filterwarnings("ignore:the mixture f:genval.errors.NegativeDensityWarning")
def test_report_renders_failed_and_unreadable_variants(tmp_path, rng):
    cfg = parse_config({**json.loads(json.dumps(user_config(tmp_path, rng).model_dump(
        mode="json"))), "gof": {"variants": ["frozen", "ensemble"], "n_kernels": 10,
                                "sigma": 0.5, "standardize": True, "n_toys": 12,
                                "pool_size": 2000, "n_jobs": 1}})
    run = pipeline.run_pipeline(cfg, stages=["split", "train", "fit", "gof"])
    path = run.root / "gof"
    # A variant that failed after its toys: t_obs NaN, some toys non-finite, a message.
    record = json.loads((path / "ensemble.json").read_text())
    record["t_obs"] = "nan"
    record["t_null"][:4] = ["nan", "inf", "nan", "-inf"]
    record["failure"] = "FitError: the observed alternative fit did not converge"
    for key in ("p_value", "z", "z_interval", "z_chi2_extrapolated"):
        record.pop(key)
    (path / "ensemble.json").write_text(json.dumps(record))
    # A variant whose file lacks the toys altogether (another schema), with its reason.
    (path / "frozen.json").write_text(json.dumps({"variant": "frozen", "t_obs": 3.5,
                                                 "message": "toys were never run"}))
    pipeline.run_stage(run, "report", force=True)
    report = (run.root / "report.html").read_text(encoding="utf-8")
    # The cause genval recomputes (t_obs is NaN) and the one the file gives, both shown.
    assert "failed: observed statistic" in report
    assert "FitError: the observed alternative fit did not converge" in report
    assert "failed: toys were never run; the saved result cannot be read (KeyError" in report
    text = re.sub(r"data:image/png;base64,[^']+", "", report)
    # Undefined numbers show as "—" (the failure's own text may say "t_obs = nan").
    assert not re.search(r">\s*[-+]?nan\s*<", text, flags=re.I)
    # The null figure of such a result draws, and says why.
    res = artifacts.load_gof(run, "ensemble").result
    assert math.isnan(res.t_obs) and not np.all(np.isfinite(res.t_null))
    gof_figures.null_figure(run, "ensemble", [res], None)
    failing = dataclasses.replace(res, t_null=np.full(12, np.nan))
    gof_figures.null_figure(run, "ensemble", [failing], None)
    assert (run.root / "figures" / "null_ensemble.png").stat().st_size > 1000


def test_auto_pairs():
    x = np.random.default_rng(1).normal(size=(500, 4))
    x[:, 3] = x[:, 0] + 0.1 * x[:, 3]
    x[:, 2] = -x[:, 1] + 0.5 * x[:, 2]
    assert gof_figures.choose_pairs("auto", list("abcd"), x)[:2] == [(0, 3), (1, 2)]
    assert gof_figures.choose_pairs("auto", ["a", "b"], x[:, :2]) == [(0, 1)]
    assert gof_figures.choose_pairs("auto", ["a"], x[:, :1]) == []
    assert gof_figures.choose_pairs([("d", "a")], list("abcd"), x) == [(3, 0)]


def test_failure_of_reads_whatever_a_record_carries():
    record = artifacts.GofRecord("frozen", error="f <= 0 at 2 test events")
    assert gof_figures.failure_of(record) == "f <= 0 at 2 test events"
    assert gof_figures.failure_of({"failure": "x", "message": " x "}) == "x"
    assert gof_figures.failure_of(gof) == ""  # a module has none of the fields


def test_figure_settings_naming_no_feature_are_reported_not_ignored_silently():
    # data.features null: the config cannot check the names, the figures do.
    cfg = parse_config({"data": {"path": "events.csv", "labels": {"pt": "$p_T$", "etta": "x"}},
                        "report": {"pairs": [["pt", "phi"]]}})
    with pytest.warns(FigureSettingWarning) as caught:
        gof_figures._check_feature_settings(cfg, ["pt", "eta"])
    messages = [str(w.message) for w in caught]
    assert any("data.labels names ['etta']" in m for m in messages)
    assert any("report.pairs names ['phi']" in m for m in messages)
    assert gof_figures.choose_pairs(cfg.report.pairs, ["pt", "eta"], np.zeros((5, 2))) == []
