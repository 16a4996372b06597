import base64
import io
import re

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from genval import plots  # noqa: E402
from genval.coverage import COVERAGE_CL  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.html_report import CoverageRow, GofRow, render_report, write_report  # noqa: E402
from genval.paper import PAPER_COVERAGE, PAPER_Z  # noqa: E402
from genval.stats import clopper_pearson  # noqa: E402

ROWS = [GofRow("single", 812.4, 1 / 201, 2.58, z_chi2=21.7, n_toys=200, z_is_bound=True,
               note="Z beyond toys"),
        GofRow("frozen", 40.2, 0.004975, 2.58, z_chi2=4.4, n_toys=200),
        GofRow("ensemble", 9.1, 0.2, 0.84, n_toys=200, z_band=(0.70, 1.04))]
COVERAGE = [CoverageRow("x0", -0.5, 185 / 284, 284), CoverageRow("x1", 0.6, 199 / 284, 284)]


def png_bytes():
    fig = plots.plot_weights(weights=[0.4, 0.6], style=None)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    return buf.getvalue()


def test_report_is_self_contained_with_paper_numbers(tmp_path):
    png = png_bytes()
    (tmp_path / "w.png").write_bytes(png)
    path = write_report(tmp_path / "report.html", title="demo <quick>", gof=ROWS,
                        coverage=COVERAGE, figures={"weights": tmp_path / "w.png",
                                                    "again": png},
                        fit={"converged": True, "n_iter": 7, "nll": -1.23456789},
                        metadata={"seed": 0, "packages": {"numpy": "2.0"}},
                        config_yaml="seed: 0\n", notes=["toys < 1000: Z extrapolated"],
                        paper=True)
    text = path.read_text()
    assert "demo &lt;quick&gt;" in text  # escaped
    for variant, (z, _, _) in PAPER_Z.items():
        assert f"{z:.2f}" in text, variant
    assert "20.29 ± 0.10" in text and "0.92 <sup>+0.20</sup><sub>−0.14</sub>" in text
    assert "ensemble with uncertainty" in text and "weights frozen" in text
    assert "<b>≥ 2.58</b>" in text and "<b>2.58</b>" in text  # bound vs measured
    assert "0.84 <sup>+0.20</sup><sub>−0.14</sub>" in text  # the 16-84 % band of our Z
    for cov in PAPER_COVERAGE:
        assert f"{100 * cov:.1f} %" in text
    # Clopper-Pearson at the 1σ-equivalent level, not a Wald ±: 185 of 284 covered.
    assert "65.1 <sup>+2.9</sup><sub>−3.1</sub> %" in text and "68.3 % CL Clopper–Pearson" in text
    # Figures are embedded, and nothing is loaded from elsewhere.
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(images) == 2 and base64.b64decode(images[0]) == png
    assert not re.search(r"(src|href)=['\"](?!data:)", text)
    assert "toys &lt; 1000" in text and "-1.235" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "w.png"]


def test_partial_report_and_bad_figure():
    text = render_report(gof=ROWS[2:], gof_settings={"n_kernels": 100, "centre": "redrawn"})
    assert "redrawn" in text
    assert "Coverage" not in text and "Goodness of fit" in text
    with pytest.raises(InputError, match="not a PNG"):
        render_report(figures={"bad": b"GIF89a"})


def test_special_values_are_spelled_out():
    text = render_report(gof=[GofRow("custom", float("inf"), 0.0, np.inf)])
    assert "∞" in text and "custom" in text


def test_coverage_interval_is_clopper_pearson_even_at_the_edges():
    rows = [CoverageRow("none", 0.0, 0.0, 20), CoverageRow("all", 0.0, 1.0, 20),
            CoverageRow("some", 0.0, 7 / 20, 20)]
    text = render_report(coverage=rows)
    for k, row in zip((0, 20, 7), rows, strict=True):
        lo, hi = clopper_pearson(k, 20, COVERAGE_CL)
        cell = (f"{100 * row.coverage:.1f} <sup>+{100 * (hi - row.coverage):.1f}</sup>"
                f"<sub>−{100 * (row.coverage - lo):.1f}</sub> %")
        assert cell in text, cell
    # A Wald error would claim ± 0 at 0 % and 100 %; the exact interval does not.
    assert "0.0 <sup>+8.8</sup><sub>−0.0</sub> %" in text
    assert "100.0 <sup>+0.0</sup><sub>−8.8</sub> %" in text


def test_paper_numbers_only_for_the_paper_toy():
    """A user's run shows its own numbers, never the paper's toy results beside them."""
    text = render_report(gof=ROWS, coverage=COVERAGE)
    assert "paper" not in text.replace("uncertainty-aware validation of generative AI", "")
    for z, _, _ in PAPER_Z.values():
        assert f"{z:.2f}" not in text
    for cov in PAPER_COVERAGE:
        assert f"{100 * cov:.1f} %" not in text
    assert "<b>2.58</b>" in text  # the user's own result is there
    paper = render_report(gof=ROWS, coverage=COVERAGE, paper=True)
    assert "paper Z (2D toy)" in paper and "paper (2D toy)" in paper


def test_failed_variant_shows_its_message_and_undefined_numbers():
    nan = float("nan")
    rows = [GofRow("ensemble", nan, nan, nan, z_chi2=nan, n_toys=200, z_band=(nan, nan),
                   p_interval=(nan, nan), failure="FitError: f(x; ŵ) <= 0 at 3 <test> events"),
            GofRow("frozen", float("inf"), 1 / 201, 2.58, z_chi2=float("inf"), z_is_bound=True),
            GofRow("single", "nan", None, nan)]  # whatever a JSON held
    text = render_report(gof=rows)
    assert "failed: FitError: f(x; ŵ) &lt;= 0 at 3 &lt;test&gt; events" in text
    assert "class='failed'" in text and not re.search(r"\bnan\b", text, flags=re.I)
    assert "<b>≥ 2.58</b>" in text and "∞" in text


def test_deviations_are_tabulated():
    record = {"variant": "ensemble", "n_events": 1000,
              "kernels": [{"kernel": 7, "a": 0.012, "events": 12.0,
                           "centre": {"jet1_pt": 412.5, "mjj": 1830.0}},
                          {"kernel": 3, "a": -0.004, "events": -4.0,
                           "centre": {"jet1_pt": 250.0, "mjj": "nan"}}],
              "features": [{"feature": "jet1_pt", "unit": "GeV", "max_abs_deviation": 0.031,
                            "reco_over_ref": 1.031, "bin": [400.0, 420.0]},
                           {"feature": "mjj", "unit": "GeV", "max_abs_deviation": 0.12,
                            "reco_over_ref": 0.88, "bin": [1800.0, 1900.0]},
                           {"feature": "eta", "max_abs_deviation": None}]}
    text = render_report(deviations=record)
    assert "Where the alternative deviates" in text and "ensemble with uncertainty" in text
    assert "<th>jet1_pt [GeV]</th><th>mjj [GeV]</th>" in text
    assert "<td>7</td><td>0.012</td><td>12</td><td>412.5</td><td>1830</td>" in text
    assert "<td>3</td><td>-0.004</td><td>-4</td><td>250</td><td>—</td>" in text
    # features sorted by the size of the departure, with the bin in physical units
    assert text.index("<td>mjj</td>") < text.index("<td>jet1_pt</td><td>3.1 %")
    assert "[1.8e+03, 1.9e+03] GeV" in text or "[1800, 1900] GeV" in text
    assert "did not move" in render_report(deviations={"variant": "frozen", "kernels": [],
                                                       "features": []})
    assert "No GoF variant produced" in render_report(deviations={"variant": None})
