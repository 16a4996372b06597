import sys

import numpy as np
import pytest

from genval._optional import MissingDependencyError, require
from genval.errors import InputError
from genval.io import FORMATS, parse_spec, read_events, write_events

NAMES = ["pt", "eta", "phi"]
KEYED = {".h5": ":events", ".root": ":Events"}
# Optional readers: without their extra installed, their tests are skipped, not failed.
LIBRARIES = {".parquet": ("pyarrow",), ".h5": ("h5py",), ".root": ("uproot", "awkward")}


def need(fmt):
    for name in LIBRARIES.get(fmt, ()):
        pytest.importorskip(name)


@pytest.fixture
def events(rng):
    return rng.normal(size=(64, 3))


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_format_selecting_by_name(tmp_path, events, fmt):
    need(fmt)
    spec = f"{tmp_path}/sample{fmt}{KEYED.get(fmt, '')}"
    write_events(spec, events, NAMES)
    table = read_events(spec, None if fmt == ".npy" else ["phi", "pt"])
    cols = [2, 0] if fmt != ".npy" else [0, 1, 2]
    np.testing.assert_array_equal(table.x, events[:, cols])  # bit-exact, CSV included
    assert table.n_features == len(cols)
    if fmt == ".npy":
        assert table.names == ["x0", "x1", "x2"]  # plain arrays carry no names
    # Only the target remains: no temporary files beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sample{fmt}"]


def test_parse_spec_keys_and_aliases():
    spec = parse_spec("dir/ntuple.ROOT:dir/Events")
    assert (spec.fmt, spec.key, str(spec.path)) == (".root", "dir/Events", "dir/ntuple.ROOT")
    assert parse_spec("a.hdf5:/g/x").fmt == ".h5" and parse_spec("a.pq").fmt == ".parquet"
    with pytest.raises(InputError, match="cannot tell the format of 'a.txt'"):
        parse_spec("a.txt")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"data file not found: .*nope\.csv"):
        read_events(tmp_path / "nope.csv")


@pytest.mark.parametrize("fmt", [".csv", ".parquet", ".h5", ".root", ".npz"])
def test_missing_feature_name_suggests_the_closest(tmp_path, events, fmt):
    need(fmt)
    spec = f"{tmp_path}/s{fmt}"
    write_events(spec, events, NAMES)
    with pytest.raises(InputError, match=r"feature 'etta' not found in .*; available: pt, eta, "
                                         r"phi \(did you mean 'eta'\?\)"):
        read_events(spec, ["pt", "etta"])


def test_nan_rows_are_reported(tmp_path, events):
    events[[3, 9]] = np.nan
    path = tmp_path / "nan.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(map(str, r)) for r in events))
    with pytest.raises(InputError, match=r"contain 2 rows with NaN/inf \(first at row 3\)"):
        read_events(path)
    with pytest.raises(InputError, match="non-finite|NaN/inf"):
        write_events(tmp_path / "out.npy", events)


def test_mismatched_dimensions(tmp_path, events):
    need(".parquet")
    write_events(tmp_path / "e.parquet", events, NAMES)
    with pytest.raises(InputError, match="have 3 features, expected 2"):
        read_events(tmp_path / "e.parquet", n_features=2)
    with pytest.raises(InputError, match="2 feature names for events with 3 features"):
        write_events(tmp_path / "e.csv", events, ["a", "b"])
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"expected a 2D array .* got shape \(2, 3, 4\)"):
        read_events(tmp_path / "cube.npy")


def test_h5_group_compound_and_key_errors(tmp_path, events):
    h5py = pytest.importorskip("h5py")

    path = tmp_path / "multi.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("cols")
        for i, n in enumerate(NAMES):
            g[n] = events[:, i]
        rec = np.zeros(5, dtype=[("a", "f4"), ("b", "i8")])
        f["rec"] = rec
    np.testing.assert_array_equal(read_events(f"{path}:cols", ["eta"]).x[:, 0], events[:, 1])
    assert read_events(f"{path}:rec").names == ["a", "b"]
    with pytest.raises(InputError, match=r"name the dataset as file.h5:dataset"):
        read_events(path)
    with pytest.raises(InputError, match=r"dataset 'col' not found .*did you mean 'cols'"):
        read_events(f"{path}:col")


def test_root_tree_selection_and_jagged_branches(tmp_path, events):
    ak = pytest.importorskip("awkward")
    uproot = pytest.importorskip("uproot")

    path = tmp_path / "t.root"
    with uproot.recreate(path) as f:
        f.mktree("flat", {"a": np.float32, "n": np.int32})
        f["flat"].extend({"a": np.arange(4, dtype=np.float32), "n": np.arange(4, dtype=np.int32)})
        f.mktree("jag", {"j": "var * float64"})
        f["jag"].extend({"j": ak.Array([[1.0], [2.0, 3.0]])})
    table = read_events(f"{path}:flat", ["n", "a"])
    np.testing.assert_array_equal(table.x, np.stack([np.arange(4)] * 2, axis=1))
    with pytest.raises(InputError, match="name one as file.root:tree"):
        read_events(path)
    with pytest.raises(InputError, match=r"tree 'flt' not found .*did you mean 'flat'"):
        read_events(f"{path}:flt")
    with pytest.raises(InputError, match="column 'j' is not one number per event"):
        read_events(f"{path}:jag", ["j"])


def test_npz_layouts_and_csv_without_header(tmp_path, events):
    np.savez(tmp_path / "cols.npz", pt=events[:, 0], eta=events[:, 1])
    assert read_events(tmp_path / "cols.npz").names == ["pt", "eta"]
    np.savez(tmp_path / "two.npz", a=events, b=events)
    with pytest.raises(InputError, match="name one as file.npz:key"):
        read_events(tmp_path / "two.npz")
    assert read_events(f"{tmp_path}/two.npz:b").n_features == 3
    np.savetxt(tmp_path / "raw.csv", events, delimiter=",")
    assert read_events(tmp_path / "raw.csv").names == ["x0", "x1", "x2"]
    (tmp_path / "text.csv").write_text("a,b\n1,x\n")
    with pytest.raises(InputError, match="cannot parse as numbers"):
        read_events(tmp_path / "text.csv")


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path, events):
    # A None entry in sys.modules makes `import uproot` raise ImportError.
    monkeypatch.setitem(sys.modules, "uproot", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'genval\[root\]'"):
        write_events(tmp_path / "x.root", events)
    with pytest.raises(ImportError, match="for reading .root files"):
        require("uproot", "root", purpose="reading .root files")
    assert not (tmp_path / "x.root").exists()


def test_csv_blank_lines_and_a_garbled_npy_header(tmp_path):
    """Found by the slow fuzz set: a CSV of blank lines only leaked numpy's "no data" warning
    instead of the empty-file error, blank lines before a header made the header a data row,
    and an npy header that is not a Python literal raised tokenize's TokenError."""
    blank = tmp_path / "blank.csv"
    blank.write_bytes(b"\n \n")
    with pytest.raises(InputError, match="empty CSV file"):
        read_events(str(blank))
    leading = tmp_path / "leading.csv"
    leading.write_bytes(b"\n\nx,y\n1,2\n\n3,4\n")
    table = read_events(str(leading))
    assert table.names == ["x", "y"] and table.x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    garbled = tmp_path / "garbled.npy"
    garbled.write_bytes(b"\x93NUMPY\x01\x00v\x00\x00'descr': '<f8', 'fortran_order': False, "
                        b"'shape': (), }" + b" " * 62 + b"\n" + b"\x00" * 8)
    with pytest.raises(InputError, match="cannot read it as a .npy file"):
        read_events(str(garbled))


def test_parquet_dictionary_column_of_nulls_is_a_clear_error(tmp_path):
    """Found by the slow fuzz set: a dictionary-encoded column whose values are all null (an
    empty dictionary) made pyarrow's conversion raise IndexError; now it is decoded first and
    refused as a column that is not numbers."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    column = pa.DictionaryArray.from_arrays(pa.array([None, None], type=pa.int32()),
                                            pa.array([], type=pa.string()))
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"a": column, "b": [1.0, 2.0]}), path)
    with pytest.raises(InputError, match="column 'a'"):
        read_events(str(path))
