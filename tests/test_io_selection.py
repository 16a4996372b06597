"""Input as HEP users have it: lists and globs of files, ROOT through uproot.concatenate,
aliases and one selection grammar for every format (issue 11), empty inputs (issue 13)."""

import numpy as np
import pytest

from genval.errors import InputError
from genval.io import read_events, write_events
from genval.io.expressions import Expression

NAMES = ["pt", "eta", "phi"]
SELECTION = "pt > 0.3 and abs(eta) < 1.5 || !(phi <= 0) && -1 < eta < 1 and not log(pt) > 1"
ALIASES = {"pt2": "pt ** 2 + sqrt(abs(eta))", "r": "hypot(pt, eta)", "rr": "r * 2 - pt2"}


@pytest.fixture
def events(rng):
    x = rng.normal(size=(500, 3))
    x[:, 0] = np.abs(x[:, 0]) * 2  # pt > 0, some above e
    return x


def expected(x):
    pt, eta, phi = x.T
    keep = (((pt > 0.3) & (np.abs(eta) < 1.5)) | ((~(phi <= 0)) & (-1 < eta) & (eta < 1)
                                                  & ~(np.log(pt) > 1)))
    pt2 = pt ** 2 + np.sqrt(np.abs(eta))
    r = np.hypot(pt, eta)
    return np.stack([pt, r, r * 2 - pt2], axis=1)[keep], keep


def write_rntuple(path, x):
    uproot = pytest.importorskip("uproot")
    with uproot.recreate(path) as f:
        f["ntuple"] = {n: x[:, i] for i, n in enumerate(NAMES)}  # a dict writes an RNTuple
    return f"{path}:ntuple"


@pytest.mark.parametrize("fmt", [".csv", ".parquet", ".npz", ".h5", ".root", "rntuple"])
def test_selection_and_aliases_give_identical_events_in_every_format(tmp_path, events, fmt):
    for lib in {".parquet": ["pyarrow"], ".h5": ["h5py"], ".root": ["uproot"],
                "rntuple": ["uproot"]}.get(fmt, []):
        pytest.importorskip(lib)
    if fmt == "rntuple":
        # uproot ignores cut= for RNTuples: genval must apply the selection itself.
        spec = write_rntuple(tmp_path / "e.root", events)
    else:
        spec = str(write_events(tmp_path / f"e{fmt}", events, NAMES))
    table = read_events(spec, ["pt", "r", "rr"], selection=SELECTION, aliases=ALIASES)
    want, keep = expected(events)
    assert 0 < keep.sum() < len(events)
    np.testing.assert_allclose(table.x, want, rtol=1e-15, atol=0)
    assert table.names == ["pt", "r", "rr"]
    assert (table.n_read, table.n_events, table.selection) == (500, keep.sum(), SELECTION)


def test_expression_grammar_matches_numpy_and_refuses_python(rng):
    cols = {"a": rng.normal(size=50), "b": rng.normal(size=50), "n": np.arange(50)}
    a, b, n = cols["a"], cols["b"], cols["n"]
    cases = {
        "a + b * 2 - a / 3 ** 2": a + b * 2 - a / 9,
        "-a % 1.5": np.mod(-a, 1.5),
        "0 < a <= b": (0 < a) & (a <= b),
        "(a > 0) & (n % 2 == 0) | ~(b < 0)": ((a > 0) & (n % 2 == 0)) | ~(b < 0),
        "a and not b > 0 or n": ((a != 0) & ~(b > 0)) | (n != 0),
        "where(a > 0, exp(b), fmin(a, b)) + arctan2(a, b) + log10(abs(a)) + 2 ** -1":
            np.where(a > 0, np.exp(b), np.fmin(a, b)) + np.arctan2(a, b)
            + np.log10(np.abs(a)) + 0.5,
    }
    for text, want in cases.items():
        np.testing.assert_array_equal(Expression(text).evaluate(cols), want, err_msg=text)
    assert Expression("a > 1 && b || !n").names == {"a", "b", "n"}
    refused = {"a.__class__": "attribute access", "__import__('os')": "unknown function",
               "a[0]": "indexing", "'x' == a": "not a number", "lambda: 1": "lambda",
               "a if b else n": "if-else", "sqrt(a, b)": "takes 1 argument",
               "sqrt(x=a)": "positional", "sqr(a)": "did you mean 'sqrt'", "a // 2": "'//'",
               "a in b": "'in'", "a >": "not a valid expression", "": "empty",
               "True": "not a number", "getattr(a, 'x')": "unknown function"}
    for text, message in refused.items():
        with pytest.raises(InputError, match=message):
            Expression(text, what="data.selection")
    with pytest.raises(InputError, match=r"uses 'c', which is not a column.*available: a, b"):
        Expression("c > 0").evaluate(cols)
    with pytest.raises(InputError, match="use 'and', 'or', 'not'"):
        Expression("a & b").evaluate(cols)  # bitwise on floats: numpy refuses, so do we


def test_root_lists_globs_and_tree_with_uproot_concatenate(tmp_path, rng):
    pytest.importorskip("uproot")
    parts = [rng.normal(size=(n, 3)) for n in (30, 0, 45, 25)]
    (tmp_path / "dir").mkdir()
    for i, x in enumerate(parts):
        write_events(f"{tmp_path}/dir/part{i}.root:events", x, NAMES)
    write_events(f"{tmp_path}/other.root:events", parts[0] + 10, NAMES)
    every = np.concatenate(parts)
    table = read_events([f"{tmp_path}/dir/*.root:events"], ["eta", "pt"])
    np.testing.assert_array_equal(table.x, every[:, [1, 0]])  # sorted matches, in order
    assert [f.rsplit("/", 1)[1] for f in table.files] == [f"part{i}.root:events"
                                                          for i in range(4)]
    assert table.n_read is None  # no selection
    # A list mixing a file and a pattern, the tree given once for all (data.tree), a cut and an
    # alias evaluated by uproot.
    table = read_events([f"{tmp_path}/other.root", f"{tmp_path}/dir/part[23].root"],
                        ["pt", "s"], tree="events", selection="pt > 0 and s < 1",
                        aliases={"s": "pt + eta"})
    chosen = np.concatenate([parts[0] + 10, parts[2], parts[3]])
    keep = (chosen[:, 0] > 0) & (chosen[:, 0] + chosen[:, 1] < 1)
    np.testing.assert_array_equal(table.x, np.stack([chosen[keep, 0],
                                                     chosen[keep, 0] + chosen[keep, 1]], 1))
    assert (table.n_read, table.n_events) == (100, keep.sum())
    with pytest.raises(InputError, match=r"the pattern .*nothing\*\.root' matches no file"):
        read_events([f"{tmp_path}/dir/nothing*.root:events"])
    with pytest.raises(InputError, match="is listed twice"):
        read_events([f"{tmp_path}/dir/part0.root:events", f"{tmp_path}/dir/*.root:events"])
    with pytest.raises(InputError, match="kept none of the 100 events"):
        read_events([f"{tmp_path}/dir/part[023].root:events"], selection="pt > 100")
    with pytest.raises(InputError, match=r"part1.root:events: no events"):
        read_events(f"{tmp_path}/dir/part1.root:events")
    with pytest.raises(InputError, match=r"feature 'ptt' not found .*did you mean 'pt'"):
        read_events(f"{tmp_path}/other.root:events", ["ptt"])
    with pytest.raises(InputError, match=r"uses 'etaa', which is not a column or alias "
                                         r"\(did you mean 'eta'\?\)"):
        read_events(f"{tmp_path}/other.root:events", selection="etaa > 0")


def test_lists_and_globs_of_other_formats(tmp_path, rng):
    parts = [rng.normal(size=(n, 3)) for n in (20, 35)]
    for i, x in enumerate(parts):
        write_events(tmp_path / f"p{i}.csv", x, NAMES)
    write_events(tmp_path / "q.npz", parts[0], NAMES)
    every = np.concatenate(parts)
    np.testing.assert_array_equal(read_events(f"{tmp_path}/p*.csv").x, every)
    table = read_events([str(tmp_path / "p1.csv"), str(tmp_path / "p0.csv")], ["phi"],
                        selection="eta > 0")
    reordered = np.concatenate(parts[::-1])
    np.testing.assert_array_equal(table.x[:, 0], reordered[reordered[:, 1] > 0, 2])
    with pytest.raises(InputError, match="mix formats"):
        read_events([str(tmp_path / "p0.csv"), str(tmp_path / "q.npz")])
    with pytest.raises(InputError, match="no data files given"):
        read_events([])
    (tmp_path / "r.csv").write_text("pt,eta\n1,2\n")
    with pytest.raises(InputError, match=r"feature 'phi' not found in .*r.csv"):
        read_events([str(tmp_path / "p0.csv"), str(tmp_path / "r.csv")])


def test_empty_inputs_say_they_have_no_events(tmp_path):
    (tmp_path / "header.csv").write_text("a,b,c\n")
    (tmp_path / "blank.csv").write_text("a,b,c\n\n\n")
    (tmp_path / "nothing.csv").write_text("")
    for name in ("header.csv", "blank.csv"):
        with pytest.raises(InputError, match=rf"{name}: no events"):
            read_events(tmp_path / name)
    with pytest.raises(InputError, match="empty CSV file"):
        read_events(tmp_path / "nothing.csv")
    write_events(tmp_path / "none.npz", np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(InputError, match="none.npz: no events"):
        read_events(tmp_path / "none.npz")
    (tmp_path / "short.csv").write_text("a,b,c\n1,2\n")
    with pytest.raises(InputError, match=r"header names 3 columns \(a, b, c\) but the rows hold "
                                         "2 numbers"):
        read_events(tmp_path / "short.csv")


def test_aliases_errors_and_nonfinite_features_are_named(tmp_path, rng):
    x = rng.normal(size=(40, 3))
    spec = str(write_events(tmp_path / "e.npz", x, NAMES))
    with pytest.raises(InputError, match="cycle: u -> v -> u"):
        read_events(spec, ["u"], aliases={"u": "v + 1", "v": "u * 2"})
    with pytest.raises(InputError, match="alias 'eta' has the name of a column"):
        read_events(spec, aliases={"eta": "pt * 2"})
    with pytest.raises(InputError, match="not an identifier"):
        read_events(spec, aliases={"2pt": "pt * 2"})
    table = read_events(spec, ["pt", "c"], aliases={"c": "3"})  # a constant alias broadcasts
    np.testing.assert_array_equal(table.x[:, 1], 3.0)
    with pytest.raises(InputError, match=r"NaN/inf values per feature: 'l' \(\d+\)"):
        read_events(spec, ["pt", "l"], aliases={"l": "log(eta)"})  # log of negatives
    with pytest.raises(InputError, match="one value of shape"):
        read_events(spec, selection="1 > 0")  # the config refuses it; the reader too


@pytest.mark.parametrize("fmt", [".parquet", ".root"])
def test_weights_are_cut_with_their_events_and_may_be_aliases(tmp_path, rng, fmt):
    pytest.importorskip({".parquet": "pyarrow", ".root": "uproot"}[fmt])
    x = rng.normal(size=(200, 4))
    x[:, 3] = rng.uniform(-0.5, 2.0, 200)  # weights, some negative
    halves = [str(write_events(tmp_path / f"h{i}{fmt}", x[i * 100:(i + 1) * 100],
                               [*NAMES, "w"])) for i in range(2)]
    keep = x[:, 2] > 0
    table = read_events(halves, ["pt", "eta"], weight="w", selection="phi > 0")
    np.testing.assert_array_equal(table.x, x[keep][:, :2])
    np.testing.assert_array_equal(table.weights, x[keep, 3])
    assert table.weight_name == "w" and table.n_read == 200
    table = read_events(halves, weight="w2", aliases={"w2": "w * 2"}, selection="phi > 0")
    assert table.names == NAMES + ["w"]  # null features: every column; the weight alias not
    np.testing.assert_array_equal(table.weights, 2 * x[keep, 3])
    with pytest.raises(InputError, match="'pt' is both a feature and the weight column"):
        read_events(halves, ["pt", "eta"], weight="pt")
    with pytest.raises(InputError, match=r"weight column 'ww' not found .*did you mean 'w'"):
        read_events(halves, weight="ww")
    assert read_events(halves, weight="ww", weight_required=False).weights is None
