"""The public API is a tested list (names other code and users rely on)."""

import subprocess
import sys
import types

import pytest
from click.testing import CliRunner

import genval
from genval.cli import main

TOP_LEVEL = [
    "__version__", "errors", "members", "linalg", "sampling", "stats", "wifi", "products",
    "coverage", "gof", "flows", "config", "presets", "io", "splits", "rundir", "plots",
    "html_report", "paper", "cli", "pipeline", "newton", "row_scaling", "transforms",
    "identification", "goodness_of_fit", "adapters", "display", "runs", "run", "load_run", "Run",
    "compute", "conditional",
]

# Names each public module must export (it may export more).
EXPORTS = {
    "wifi": ["WeightFit", "DensityBand", "fit_weights", "prepare_density_matrix"],
    "identification": ["MAX_LEVERAGE", "PRIOR_STD", "PRIOR_SHARE_FLAG", "Identification",
                       "identify", "input_precision", "leverages", "members_precision",
                       "precision_floor",
                       "ridge_cap", "ridge_covariance", "solve_with_ridge"],
    "gof": ["KernelBasis", "test_statistic", "goodness_of_fit", "merge_results", "summarize_z",
            "GoFResult", "GoFFailure", "MAX_FAILED_FRACTION", "LRStatistic", "ZSummary",
            "fit_scaled_chi2", "clopper_pearson", "kernel_effective_events", "MIN_KERNEL_EVENTS",
            "Constraint", "ProfileSettings", "GoFSettings", "LAMBDA_NET", "VARIANTS",
            "VARIANT_LABELS", "require_unweighted", "kernel_basis_text", "observed_statistic",
            "conditional_goodness_of_fit", "ConditionalGoFResult", "look_elsewhere",
            "bin_kernel_bases", "ContextKernels"],
    "conditional": ["ContextBins", "ConditionalWeightFit", "fit_conditional_weights",
                    "ConditionalSample", "sample_conditional_mixture", "row_weights",
                    "TargetedEvents", "oversample_conditional", "oversample_region",
                    "region_contexts"],
    "flows": ["FlowEnsemble", "TrainSettings", "TrainingHistory", "train", "save", "load",
              "read_metadata", "PAPER_ARCHITECTURE", "PAPER_TRAINING", "PRECISIONS"],
    "members": ["Members", "KDEMembers", "GaussianMembers", "CallableMembers",
                "ConditionalGaussianMembers", "log_density_matrix", "density_matrix",
                "n_context_of", "check_context"],
    "products": ["observable", "oversample", "member_integrals", "estimate_observable",
                 "binned_reference", "bin_integrals", "histogram_counts"],
    "coverage": ["run_coverage", "CoverageResult", "coverage_interval"],
    "pipeline": ["run_pipeline", "run_stage", "STAGE_FUNCTIONS", "split_events", "split_weights",
                 "PARALLEL_STAGES", "stage_executor", "run_gof_part", "merge_gof"],
    "compute": ["ComputeSettings", "SlurmSettings", "Executor", "open_executor",
                "available_cores", "check_scheduler", "slurm_job_script", "SCHEDULERS"],
    "io": ["FORMATS", "DataSpec", "EventTable", "Expression", "parse_spec", "expand_specs",
           "read_events", "write_events"],
    "paper": ["PAPER_Z", "PAPER_COVERAGE", "PAPER_TOY_MEAN", "PAPER_TOY_STD",
              "PAPER_KERNEL_BASIS", "is_paper_toy"],
    "transforms": ["FeatureMap", "Identity", "Log", "Bounded", "FeatureTransform",
                   "TransformedMembers", "parse_feature_map", "PERIODIC_MESSAGE"],
    "adapters": ["TorchMembers", "NflowsMembers", "ZukoMembers", "SklearnMembers", "as_members",
                 "load_factory", "build_members"],
    "display": ["pdg_exponent", "pdg_round", "format_measurement", "format_interval",
                "weight_fit_html", "gof_result_html", "coverage_html", "run_html",
                "conditional_gof_html"],
    "runs": ["Run", "StageStatus", "run", "load_run"],
    "plots": ["MarginalHistogram", "PairHistogram", "plot_marginals", "plot_pairs", "plot_null",
              "plot_coverage", "plot_weights", "plot_training", "save_figure", "axis_label",
              "prefers_log_y", "nice_edges", "data_errors"],
    "stats": ["clopper_pearson", "garwood_interval", "POISSON_CL"],
}


def test_top_level_names_are_the_documented_list():
    assert list(genval.__all__) == TOP_LEVEL
    assert sorted(dir(genval)) == sorted(TOP_LEVEL)


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_name_resolves(name):
    # No skip on ImportError: a broken submodule must fail here.
    value = getattr(genval, name)
    if name == "__version__":
        assert isinstance(value, str) and value
    elif name == "goodness_of_fit":
        assert value is genval.gof.goodness_of_fit
    elif name in ("run", "load_run", "Run"):
        assert value is getattr(genval.runs, name)
    else:
        assert isinstance(value, types.ModuleType)
        assert value.__name__ == f"genval.{name}"


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_module_exports(module):
    mod = getattr(genval, module)
    missing = [n for n in EXPORTS[module] if n not in mod.__all__]
    assert not missing, f"genval.{module}.__all__ lost {missing}"
    for name in mod.__all__:
        assert hasattr(mod, name), f"genval.{module}.__all__ lists {name!r} but it is undefined"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'binned'"):
        genval.binned  # noqa: B018 -- moved to genval.products.binned


def test_import_is_light():
    code = "import sys, genval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert genval.__version__ in result.output


def test_python_dash_m_genval_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "genval", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"genval, version {genval.__version__}"
