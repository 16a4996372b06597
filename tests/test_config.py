import pytest
import yaml

from genval.config import (
    Config,
    ConfigError,
    config_hash,
    dump_config,
    load_config,
    parse_config,
    with_overrides,
)
from genval.errors import InputError
from genval.presets import preset


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_empty_file_is_the_paper_toy_with_standardised_kernels(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == Config()
    assert cfg.data.generate.mean == [-0.5, 0.6]
    assert cfg.data.generate.std == [0.25, 0.4]
    assert (cfg.members.n_members, cfg.members.flow.bins) == (60, 15)
    assert cfg.gof.variants == ["single", "frozen", "ensemble"]
    assert cfg.data.transforms == {}
    # genval's kernel basis: a width in standard deviations of every feature
    # (studies/results/power_gof.md); the demo presets keep the paper's.
    assert (cfg.gof.kernel_units, cfg.gof.sigma, cfg.gof.n_kernels) == ("standardised", 1.0, 10)


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_demo_presets_keep_the_papers_kernel_basis(name):
    gof = preset(name).gof
    assert (gof.kernel_units, gof.sigma, gof.n_kernels) == ("raw", 0.05, 100)


def test_older_standardize_key_reads_as_kernel_units():
    assert parse_config({"gof": {"standardize": False}}).gof.kernel_units == "raw"
    assert parse_config({"gof": {"standardize": True}}).gof.kernel_units == "standardised"
    assert parse_config({"gof": {"standardize": False, "kernel_units": "raw"}}
                        ) == parse_config({"gof": {"kernel_units": "raw"}})
    with pytest.raises(ConfigError, match="standardize: true contradicts kernel_units: raw"):
        parse_config({"gof": {"standardize": True, "kernel_units": "raw"}})
    with pytest.raises(ConfigError, match="must be true or false"):
        parse_config({"gof": {"standardize": "yes"}})
    with pytest.raises(ConfigError, match="gof.kernel_units"):
        parse_config({"gof": {"kernel_units": "standardized"}})


def test_transforms_are_validated_and_canonical():
    cfg = parse_config({"data": {"path": "ev.parquet", "features": ["pt", "eta", "m"],
                                 "transforms": {"pt": "log", "eta": {"bounded": [-2.5, 2.5]},
                                                "m": {"log": {"shift": 0}}}}})
    # one spelling per map: {log: {shift: 0}} is "log"
    assert cfg.data.transforms == {"pt": "log", "eta": {"bounded": [-2.5, 2.5]}, "m": "log"}
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg
    assert parse_config(yaml.safe_load(dump_config(cfg, comments=True))) == cfg
    shifted = parse_config({"data": {"transforms": {"x0": {"log": {"shift": -3}}}}})
    assert shifted.data.transforms == {"x0": {"log": {"shift": -3.0}}}
    bad = {
        "periodic": ({"phi": "periodic"}, "drop the feature from data.features"),
        "unknown map": ({"pt": "sqrt"}, "unknown transform 'sqrt'"),
        "interval": ({"eta": {"bounded": [2.5, -2.5]}}, "finite lo < hi"),
        "interval length": ({"eta": {"bounded": [1]}}, r"bounded takes \[LO, HI\]"),
        "shift": ({"pt": {"log": {"offset": 1}}}, "log takes"),
        "unknown feature": ({"ptt": "log"}, "'ptt' \\(did you mean 'pt'\\?\\)"),
    }
    for transforms, message in bad.values():
        with pytest.raises(ConfigError, match=message):
            parse_config({"data": {"path": "ev.parquet", "features": ["pt", "eta", "phi"],
                                   "transforms": transforms}})
    # generated data: the features are x0, x1 (or data.features)
    with pytest.raises(ConfigError, match="'pt'"):
        parse_config({"data": {"transforms": {"pt": "log"}}})
    # names read from a file are known only at the split stage: not refused here
    assert parse_config({"data": {"path": "ev.csv", "transforms": {"pt": "log"}}})


def test_valid_yaml_round_trips_through_dump(tmp_path):
    cfg = load_config(write(tmp_path, """
seed: 7
data: {path: events.root:Events, features: [pt, eta]}
members: {kind: kde, n_members: 5, kde: {bandwidth: 0.2}}
splits: {train: [0.0, 0.5], weight_fit: [0.5, 0.7], centres: [0.7, 0.75], test: [0.75, 1.0]}
"""))
    assert cfg.seed == 7 and cfg.members.kde.bandwidth == 0.2
    assert cfg.splits.test == (0.75, 1.0)
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "gof:\n  n_kernel: 10\nseedd: 3\n"))
    msg = str(err.value)
    assert "unknown key 'gof.n_kernel' (did you mean 'gof.n_kernels'?)" in msg
    assert "unknown key 'seedd' (did you mean 'seed'?)" in msg
    assert "2 problem(s)" in msg
    assert isinstance(err.value, InputError)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'report.zzz' \(valid keys: formats"):
        parse_config({"report": {"zzz": 1}})


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"gof.n_toys: .*greater than or equal to 1.*got -5"):
        parse_config({"gof": {"n_toys": -5}})
    with pytest.raises(ConfigError, match=r"members.kind: .*'flow', 'kde' or 'python'"):
        parse_config({"members": {"kind": "gan"}})


def test_duplicate_yaml_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate key 'seed' \(line 2\)"):
        load_config(write(tmp_path, "seed: 1\nseed: 2\n"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "seed: [1, 2\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_overlapping_splits_are_refused():
    with pytest.raises(ConfigError, match=r"splits overlap: fractions sum to 1.1 > 1"):
        parse_config({"splits": {"train": 0.7, "centres": 0.01}})
    # centres: auto takes its share from train, so only the other three must fit.
    with pytest.raises(ConfigError, match=r"splits overlap: fractions sum to 1.09 > 1"):
        parse_config({"splits": {"train": 0.7}})
    assert parse_config({"splits": {"train": 0.61}}).splits.centres == "auto"
    with pytest.raises(ConfigError, match="centres: auto needs fractions"):
        parse_config({"splits": {"train": [0, 0.6], "weight_fit": [0.6, 0.8],
                                 "test": [0.8, 1]}})
    with pytest.raises(ConfigError, match=r"splits 'train' \[0.0, 0.6\] and 'weight_fit' "
                                          r"\[0.5, 0.8\] overlap"):
        parse_config({"splits": {"train": [0, 0.6], "weight_fit": [0.5, 0.8],
                                 "centres": [0.8, 0.81], "test": [0.81, 1]}})
    with pytest.raises(ConfigError, match="mix fractions and"):
        parse_config({"splits": {"train": [0, 0.6]}})


def test_test_file_must_not_be_the_training_file():
    with pytest.raises(ConfigError, match="is a file the training splits come from"):
        parse_config({"data": {"path": "a.h5:x", "test_path": "./a.h5:x"},
                      "splits": {"test": None}})
    cfg = parse_config({"data": {"path": "a.h5:x", "test_path": "a.h5:y"},
                        "splits": {"test": None}})
    assert cfg.data.test_path == "a.h5:y"
    with pytest.raises(ConfigError, match="splits.test must be null"):
        parse_config({"data": {"test_path": "b.csv"}})
    with pytest.raises(ConfigError, match="no test events"):
        parse_config({"splits": {"test": None}})


def test_cross_section_and_field_checks():
    with pytest.raises(ConfigError, match="single_member=5 but there are only 3 members"):
        parse_config({"members": {"n_members": 3}, "gof": {"single_member": 5}})
    with pytest.raises(ConfigError, match="duplicate feature names"):
        parse_config({"data": {"features": ["a", "a"]}})
    with pytest.raises(ConfigError, match="unknown format"):
        parse_config({"sample": {"output": "out.txt"}})
    with pytest.raises(ConfigError, match=r"data.selection applies to files, but data.path is "
                                          "null"):
        parse_config({"data": {"selection": "x0 > 0"}})
    with pytest.raises(ConfigError, match=r"data.aliases name '2x' is not an identifier"):
        parse_config({"data": {"path": "a.csv", "aliases": {"2x": "x0 * 2"}}})
    with pytest.raises(ConfigError, match=r"data.selection: data.selection 'x0 >' is not a "
                                          "valid expression"):
        parse_config({"data": {"path": "a.csv", "selection": "x0 >"}})
    with pytest.raises(ConfigError, match=r"data.aliases.y 'x0.real': attribute access"):
        parse_config({"data": {"path": "a.csv", "aliases": {"y": "x0.real"}}})
    with pytest.raises(ConfigError, match="uses no column"):
        parse_config({"data": {"path": "a.csv", "selection": "1"}})
    with pytest.raises(ConfigError, match="mix formats"):
        parse_config({"data": {"path": ["a.csv", "b.root:t"]}})
    cfg = parse_config({"data": {"path": ["a.root", "d/*.root"], "tree": "Events",
                                 "aliases": {"y": "x0 * 2"}, "selection": "y > 1 && x0 < 3"}})
    assert cfg.data.files() == ["a.root", "d/*.root"] and cfg.data.files("test_path") == []
    assert parse_config(yaml.safe_load(dump_config(cfg, comments=True))) == cfg
    with pytest.raises(ConfigError, match="same non-zero length"):
        parse_config({"data": {"generate": {"mean": [0.0], "std": [1.0, 2.0]}}})


def test_overrides_and_presets():
    cfg = with_overrides(Config(), {"seed": 3, "gof.n_toys": 9, "device": None})
    assert (cfg.seed, cfg.gof.n_toys, cfg.device) == (3, 9, "cpu")
    with pytest.raises(ConfigError, match="unknown key 'gof.ntoys'"):
        with_overrides(Config(), {"gof.ntoys": 9})
    quick, paper = preset("quick"), preset("paper")
    assert quick.members.n_members < paper.members.n_members == 60
    assert paper.data.generate.n_events == 100_000
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        preset("fast")


def test_config_is_immutable():
    cfg = Config()
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


def test_hash_ignores_runtime_keys_only():
    base = config_hash(Config())
    assert config_hash(parse_config({"device": "cuda", "quiet": True, "run_dir": "x"})) == base
    assert config_hash(parse_config({"seed": 1})) != base


def test_commented_dump_loads_back_and_documents_every_key():
    for cfg in (Config(), preset("quick"), parse_config({"splits": {
            "train": [0, 0.5], "weight_fit": [0.5, 0.7], "centres": [0.7, 0.8],
            "test": [0.8, 1]}})):
        text = dump_config(cfg, comments=True)
        assert parse_config(yaml.safe_load(text)) == cfg
    text = dump_config(Config(), comments=True)
    assert "  n_kernels: 10  # Gaussian kernels K of the alternative (paper: 100)" in text
    assert "  transforms: {}  # per-feature map before training" in text
    assert "gof:  # The learned likelihood-ratio test" in text
    keys = [line for line in text.splitlines() if ":" in line and not line.endswith(":")]
    assert all("#" in line for line in keys)


@pytest.mark.parametrize("document", ["docs/pipeline.md", "README.md"])
def test_docs_config_reference_is_current(document):
    from pathlib import Path

    doc = Path(__file__).parents[1] / document
    text = doc.read_text(encoding="utf-8")
    block = text.split("## Configuration reference", 1)[1].split("```yaml\n", 1)[1]
    block = block.split("```", 1)[0]
    assert block == dump_config(Config(), comments=True), (
        f"{document} is stale: paste the output of `genval config` into its reference")


def test_figure_labels_units_log_y_and_pairs_name_features():
    cfg = parse_config({"data": {"path": "ev.csv", "features": ["pt", "eta"],
                                 "labels": {"pt": "$p_T$ of jet 1"}, "units": {"pt": "GeV"}},
                        "report": {"log_y": ["pt"], "pairs": [["pt", "eta"]],
                                   "max_columns": 3}})
    assert cfg.data.labels == {"pt": "$p_T$ of jet 1"} and cfg.report.pairs == [("pt", "eta")]
    assert parse_config(yaml.safe_load(dump_config(cfg, comments=True))) == cfg
    assert Config().report.log_y == "auto" and Config().report.pairs == "auto"
    with pytest.raises(ConfigError, match=r"data.units names 'ptt', not a feature \(did you "
                                          r"mean 'pt'\?\)"):
        parse_config({"data": {"path": "ev.csv", "features": ["pt", "eta"],
                               "units": {"ptt": "GeV"}}})
    with pytest.raises(ConfigError, match="report.pairs names 'x2'"):
        parse_config({"report": {"pairs": [["x0", "x2"]]}})  # generated: x0, x1
    with pytest.raises(ConfigError, match="two different features"):
        parse_config({"report": {"pairs": [["x0", "x0"]]}})
    with pytest.raises(ConfigError, match="report.log_y"):
        parse_config({"report": {"log_y": "yes"}})
    # Every column read (features: null): the names are only known once the file is read.
    assert parse_config({"data": {"path": "ev.csv", "labels": {"anything": "a"}}})
