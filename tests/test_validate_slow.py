"""The reduced validation study (``studies/validate.py --quick``, issue 10).

The recorded, full version is ``python studies/validate.py`` (``studies/results/validate.md``).
"""

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

STUDY = Path(__file__).resolve().parent.parent / "studies" / "validate.py"


def load_study():
    spec = importlib.util.spec_from_file_location("genval_validate_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the study's string annotations through sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reduced_validation_study(tmp_path):
    """Two realistic cases (30 bootstrap Gaussian mixtures; 10 small flows) with 30
    experiments each, 12 of them with a GoF test, the jittered-Gaussian and 10-Gaussian
    acceptance studies at reduced size. Bounds are ±2.5 binomial sd at these sizes (30
    experiments: sd 0.085 at 68.3 %, 0.038 at 95.4 %); the full study is the measurement."""
    study = load_study()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the study keeps its fits' warnings on the results
        results = study.main(["--quick", "--cases", "toy,flows", "--acceptance", "jittered,ten",
                              "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "validate_quick.json").read_text())
    assert saved["machine"]["date"] and saved["machine"]["cores"]
    report = (tmp_path / "validate_quick.md").read_text()
    assert "gmm-toy" in report and "flows-toy" in report and "jittered" in report
    for case in results["cases"]:
        s = case["summary"]
        assert s["experiments"] == 30 and s["non_converged"] == 0
        for block in (*s["first_moment"], s["band_bulk"], s["band_4sd"]):
            low, high = block["fraction"]
            assert 0.47 <= low <= 0.89 and high >= 0.85, (s["case"], block)
        assert s["gof"]["n"] + s["gof"]["failed"] == 12 and s["gof"]["n"] >= 10
        assert s["gof"]["ks_pvalue"] > 1e-3, s["gof"]
        assert all(0.6 < sd < 1.5 for sd in s["pull_sd"]), s["pull_sd"]
    jittered = results["jittered"]
    assert jittered["ridge"]["regularised_fraction"] == 1.0
    assert jittered["plain"]["regularised_fraction"] == 0.0
    ridge_68 = np.array([c["fraction"][0] for c in jittered["ridge"]["coverage"]])
    assert np.all(ridge_68 >= 0.4), ridge_68
    # The ridge's estimate is far closer to the truth in the tails than the plain fit's.
    assert (jittered["ridge"]["rms_relative_error"][3]
            < jittered["plain"]["rms_relative_error"][3])
    ten = results["ten_gaussians"]
    assert all(s < 2.0 for s in ten["spread_ratio"])
    assert all(0.4 <= c["fraction"][0] <= 0.95 for c in ten["coverage"])
