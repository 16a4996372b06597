"""Fuzzing (issue 13): malformed event files and configurations give an ``InputError`` or a
``ConfigError`` (genval.errors), never another exception, and leave no artifact behind that
claims a stage finished.

Each property runs twice: a small, derandomised set of examples in the default suite (the
same examples on every machine) and a larger one marked ``slow``. Inputs are built by
hypothesis in every format ``genval.io.read_events`` reads (valid files with hostile
contents, files truncated at a random byte, random bytes) and read through the public
reader; a subset goes through ``genval run`` and ``run_pipeline`` on a temporary run
directory. The crashes these found are kept as plain regression tests at the end.
"""

from __future__ import annotations

import io
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genval.cli import register
from genval.config import Config, ConfigError, config_hash, dump_config, load_config
from genval.errors import InputError
from genval.io import read_events
from genval.pipeline import run_pipeline
from genval.rundir import STAGES, RunDir

FAST = settings(max_examples=20, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
"""The default suite: few examples, the same ones on every run (derandomize)."""
SLOW = settings(FAST, max_examples=400, derandomize=False)
"""The ``slow`` set: many examples, freshly drawn (a failure prints its seed and example)."""


def _twins(strategy: st.SearchStrategy[Any], check: Callable[[Any], None],
           fast: int = 20) -> tuple[Callable[[], None], Callable[[], None]]:
    """The property ``check`` over ``strategy`` as a fast test and a ``slow`` one."""

    def build(profile: settings, **overrides: Any) -> Callable[[], None]:
        def test(case: Any) -> None:
            check(case)

        test.__doc__ = check.__doc__
        return settings(profile, **overrides)(given(strategy)(test))

    return build(FAST, max_examples=fast), pytest.mark.slow(build(SLOW))


# --- the oracle ---------------------------------------------------------------------------

def _read_cleanly(spec: str, **kwargs: Any) -> None:
    """``read_events(spec)`` raises InputError or returns a table that is valid events."""
    try:
        table = read_events(spec, **kwargs)
    except InputError as exc:
        assert str(exc).strip(), "an error without a message"
        return
    assert table.x.dtype == np.float64 and table.x.ndim == 2
    assert table.x.shape[0] >= 1 and table.x.shape[1] == len(table.names) >= 1
    assert np.isfinite(table.x).all()
    assert len(set(table.names)) == len(table.names)


def _in_file(suffix: str, write: Callable[[Path], None], check: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"events{suffix}"
        with warnings.catch_warnings():  # writing hostile values is not what is tested
            warnings.simplefilter("ignore")
            write(path)
        check(path)


def _spoiled(data: bytes, how: tuple[str, int, bytes]) -> bytes:
    """``data`` kept whole, truncated at a byte, or with bytes overwritten at a position."""
    kind, at, junk = how
    if kind == "truncate":
        return data[:at % (len(data) + 1)]
    if kind == "overwrite":
        at %= max(len(data), 1)
        return data[:at] + junk + data[at + len(junk):]
    return data


SPOIL = st.tuples(st.sampled_from(["keep", "keep", "truncate", "overwrite"]),
                  st.integers(0, 10**6), st.binary(min_size=1, max_size=16))
"""How a valid file is damaged: kept, truncated at a random byte, or overwritten."""

FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, 1.0, -1.0, 1e308, -1e308, 5e-324, 1e154]),
                   st.floats(-10, 10))
NAMES = st.sampled_from(["a", "b", "x", "x0", "pt", "eta", "features", "", " a", "a b", "é"])


# --- CSV -----------------------------------------------------------------------------------

CELLS = st.one_of(
    FLOATS.map(repr), st.integers(-10**30, 10**30).map(str),
    st.sampled_from(["", " ", "nan", "-inf", "1e999", "0x10", "1,5", '"2"', "'3'", "\x00", "\t",
                     "١", "1_000", "+-1", "--", "a", "é", "\ufeff1"]),
    st.text(max_size=4))


@st.composite
def csv_bytes(draw: st.DrawFn) -> bytes:
    """A CSV file: a table of hostile cells (ragged, any separator and line end), raw bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    n_cols = draw(st.integers(0, 4))
    header = draw(st.one_of(st.none(), st.lists(NAMES, min_size=n_cols, max_size=n_cols)))
    rows = draw(st.lists(st.lists(CELLS, min_size=max(n_cols - 1, 0), max_size=n_cols + 1),
                         max_size=25))
    sep = draw(st.sampled_from([",", ",", ";", "\t", ", "]))
    lines = ([sep.join(header)] if header is not None else []) + [sep.join(r) for r in rows]
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    text += draw(st.sampled_from(["", "\n", "\n\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


def _check_csv(data: bytes) -> None:
    """A malformed CSV file is an InputError (or valid events)."""
    _in_file(".csv", lambda p: p.write_bytes(data), lambda p: _read_cleanly(str(p)))


test_fuzz_csv, test_fuzz_csv_slow = _twins(csv_bytes(), _check_csv, fast=30)


# --- numpy (.npy, .npz) ------------------------------------------------------------------

DTYPES = [np.dtype(d) for d in ("<f8", ">f4", "<f2", "<i8", "|u1", "|b1", "<c16", "<U4",
                                "|S4", "<M8[s]", "<m8[s]", "O")] + [
    np.dtype([("a", "<f8"), ("b", "<i4")]), np.dtype([("a", "<f8"), ("v", "<f8", (2,))])]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """An array of any shape (0-d to 3-d, empty axes) and dtype, values hostile floats."""
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    values = np.array(draw(st.lists(FLOATS, min_size=math.prod(shape),
                                    max_size=math.prod(shape))), dtype=np.float64)
    values = values.reshape(shape)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if dtype.names:
            out = np.zeros(shape, dtype)
            for name in dtype.names:
                out[name] = values if out[name].ndim == values.ndim else values[..., None]
            return out
        if dtype.kind in "Mm":
            return np.nan_to_num(values).clip(-1e15, 1e15).astype(np.int64).astype(dtype)
        if dtype.kind == "O":
            return np.array([{"a": v} for v in values.ravel()] or [None], dtype=object)
        return values.astype(dtype)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


@st.composite
def npy_bytes(draw: st.DrawFn) -> bytes:
    """A .npy file: an array saved and perhaps damaged, a header claiming more data than the
    file holds, or random bytes (some starting with the .npy or the zip magic)."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        magic = draw(st.sampled_from([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"PK\x03\x04"]))
        return magic + draw(st.binary(max_size=200))
    if kind == 1:
        header = {"descr": "<f8", "fortran_order": False,
                  "shape": (draw(st.integers(0, 10**12)), draw(st.integers(0, 4)))}
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        return buf.getvalue() + draw(st.binary(max_size=64))  # the header writes the magic
    return _spoiled(_npy_bytes(draw(arrays())), draw(SPOIL))


def _check_npy(data: bytes) -> None:
    """A malformed .npy file is an InputError (or valid events)."""
    _in_file(".npy", lambda p: p.write_bytes(data), lambda p: _read_cleanly(str(p)))


test_fuzz_npy, test_fuzz_npy_slow = _twins(npy_bytes(), _check_npy, fast=30)


@st.composite
def npz_files(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A .npz file of a few named arrays (write_events' ``x`` and ``features`` among the
    names), perhaps damaged, or random bytes; and the key to read (None, one of them, other)."""
    names = draw(st.lists(st.sampled_from(["x", "features", "a", "b", "events"]),
                          unique=True, max_size=3))
    members = {n: draw(arrays()) for n in names}
    if "features" in members and draw(st.booleans()):
        members["features"] = np.array(draw(st.lists(NAMES, max_size=4)), dtype=np.str_)
    buf = io.BytesIO()
    np.savez(buf, **members)
    data = buf.getvalue()
    if draw(st.integers(0, 5)) == 0:
        data = draw(st.sampled_from([b"", b"PK\x03\x04", _npy_bytes(np.zeros((3, 2)))])) + \
            draw(st.binary(max_size=100))
    key = draw(st.one_of(st.none(), st.sampled_from([*names, "missing"])))
    return _spoiled(data, draw(SPOIL)), key


def _check_npz(case: tuple[bytes, str | None]) -> None:
    """A malformed .npz file (or a missing key) is an InputError (or valid events)."""
    data, key = case
    _in_file(".npz", lambda p: p.write_bytes(data),
             lambda p: _read_cleanly(f"{p}:{key}" if key else str(p)))


test_fuzz_npz, test_fuzz_npz_slow = _twins(npz_files(), _check_npz, fast=30)


# --- parquet -----------------------------------------------------------------------------

@st.composite
def parquet_files(draw: st.DrawFn) -> tuple[Any, tuple[str, int, bytes]]:
    """A parquet table of columns of any Arrow type (nulls, strings, lists, timestamps,
    dictionaries, repeated names), and how to damage the file."""
    pa = pytest.importorskip("pyarrow")
    n = draw(st.integers(0, 12))
    kinds = draw(st.lists(st.sampled_from(["float", "float", "int", "bool", "string", "list",
                                           "null", "timestamp", "dictionary", "half"]),
                          max_size=4))
    columns = []
    for kind in kinds:
        values = draw(st.lists(st.one_of(st.none(), FLOATS), min_size=n, max_size=n))
        finite = [None if v is None or not math.isfinite(v) else v for v in values]
        if kind == "float":
            columns.append(pa.array(values, type=pa.float64()))
        elif kind == "half":
            with np.errstate(all="ignore"):  # beyond 65504: inf, a hostile value too
                half = np.array([0.0 if v is None else v for v in values], dtype=np.float16)
            columns.append(pa.array(half))
        elif kind == "int":
            columns.append(pa.array([None if v is None else int(max(min(v, 1e15), -1e15))
                                     for v in finite], type=pa.int64()))
        elif kind == "bool":
            columns.append(pa.array([None if v is None else v > 0 for v in finite]))
        elif kind == "string":
            columns.append(pa.array([None if v is None else str(v) for v in values]))
        elif kind == "list":
            columns.append(pa.array([None if v is None else [v, v] for v in values]))
        elif kind == "null":
            columns.append(pa.nulls(n))
        elif kind == "timestamp":
            columns.append(pa.array([None if v is None else int(v) % 10**9 for v in finite],
                                    type=pa.timestamp("s")))
        else:
            # typed: an all-null column would be dictionary<null>, which parquet cannot write
            columns.append(pa.array([str(v)[:3] if v is not None else None for v in values],
                                    type=pa.string()).dictionary_encode())
    names = draw(st.lists(NAMES, min_size=len(columns), max_size=len(columns)))
    return pa.Table.from_arrays(columns, names=names), draw(SPOIL)


def _check_parquet(case: tuple[Any, tuple[str, int, bytes]]) -> None:
    """A malformed parquet file is an InputError (or valid events)."""
    pq = pytest.importorskip("pyarrow.parquet")
    table, how = case

    def write(path: Path) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path.write_bytes(_spoiled(buf.getvalue(), how))

    _in_file(".parquet", write, lambda p: _read_cleanly(str(p)))


test_fuzz_parquet, test_fuzz_parquet_slow = _twins(parquet_files(), _check_parquet)


# --- HDF5 --------------------------------------------------------------------------------

@st.composite
def h5_layouts(draw: st.DrawFn) -> tuple[list[tuple[str, Any, Any]], str | None,
                                         tuple[str, int, bytes]]:
    """HDF5 objects (datasets of any dtype and shape, groups of 1D datasets of unequal
    lengths, ``features`` attributes of any kind), the key to read, and how to damage it."""
    objects = []
    for name in draw(st.lists(st.sampled_from(["events", "x", "g", "g/x", "g/y"]), unique=True,
                              max_size=3)):
        arr = draw(arrays())
        attr = draw(st.one_of(st.none(), st.lists(NAMES, max_size=4),
                              st.sampled_from(["a", 3, b"x"])))
        objects.append((name, arr, attr))
    key = draw(st.one_of(st.none(), st.sampled_from(["events", "x", "g", "/g/x", "missing"])))
    return objects, key, draw(SPOIL)


def _check_h5(case: tuple[list[tuple[str, Any, Any]], str | None, tuple[str, int, bytes]]
              ) -> None:
    """A malformed HDF5 file (or a missing or odd dataset) is an InputError (or valid)."""
    h5py = pytest.importorskip("h5py")
    objects, key, how = case

    def write(path: Path) -> None:
        with h5py.File(path, "w") as f:
            for name, arr, attr in objects:
                if name in f or (name.startswith("g/") and "g" in f
                                 and isinstance(f["g"], h5py.Dataset)):
                    continue
                if arr.dtype.kind in "OMm":  # h5py stores none of these: numbers instead
                    arr = np.zeros(arr.shape) if arr.dtype.kind == "O" else arr.astype(np.int64)
                if arr.dtype.kind == "U":
                    arr = arr.astype("S8")
                dset = f.create_dataset(name, data=arr)
                if attr is not None:
                    dset.attrs["features"] = (np.array(attr, dtype=h5py.string_dtype())
                                              if isinstance(attr, list) else attr)
        path.write_bytes(_spoiled(path.read_bytes(), how))

    _in_file(".h5", write, lambda p: _read_cleanly(f"{p}:{key}" if key else str(p)))


test_fuzz_h5, test_fuzz_h5_slow = _twins(h5_layouts(), _check_h5)


# --- ROOT --------------------------------------------------------------------------------

@st.composite
def root_layouts(draw: st.DrawFn) -> tuple[str, dict[str, Any], str | None,
                                           tuple[str, int, bytes]]:
    """A TTree or an RNTuple of branches of any numeric type (jagged ones too), empty or not,
    the tree to read (None, its name, another) and how to damage the file."""
    n = draw(st.integers(0, 10))
    branches: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "pt", "x0"]), unique=True,
                              max_size=3)):
        values = np.array(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float64)
        kind = draw(st.sampled_from(["f8", "f4", "i4", "bool", "jagged"]))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if kind == "jagged":
                branches[name] = [list(values[: i % 3]) for i in range(n)]
            elif kind == "bool":
                branches[name] = values > 0
            else:
                branches[name] = np.nan_to_num(values).clip(-1e30, 1e30).astype(kind)
    layout = draw(st.sampled_from(["ttree", "ttree", "rntuple", "histogram"]))
    key = draw(st.one_of(st.none(), st.sampled_from(["events", "other"])))
    return layout, branches, key, draw(SPOIL)


def _check_root(case: tuple[str, dict[str, Any], str | None, tuple[str, int, bytes]]) -> None:
    """A malformed ROOT file (or a missing tree, jagged or empty branches) is an InputError."""
    uproot = pytest.importorskip("uproot")
    awkward = pytest.importorskip("awkward")
    layout, branches, key, how = case

    def write(path: Path) -> None:
        with uproot.recreate(path) as f:
            if layout == "histogram" or not branches:
                f["hist"] = np.histogram([1.0, 2.0, 2.5], bins=3)
            else:
                # typed: empty jagged lists have no element type, which RNTuples cannot hold
                data = {n: awkward.unflatten(np.array([y for row in v for y in row],
                                                      dtype=np.float64),
                                          np.array([len(r) for r in v], dtype=np.int64))
                        if isinstance(v, list) else v for n, v in branches.items()}
                if layout == "rntuple":
                    f.mkrntuple("events", data)
                else:
                    tree = f.mktree("events", {n: "var * float64" if isinstance(
                        v, awkward.Array) else v.dtype for n, v in data.items()})
                    if len(next(iter(data.values()))):
                        tree.extend(data)
        path.write_bytes(_spoiled(path.read_bytes(), how))

    _in_file(".root", write, lambda p: _read_cleanly(f"{p}:{key}" if key else str(p)))


test_fuzz_root, test_fuzz_root_slow = _twins(root_layouts(), _check_root)


# --- configurations ----------------------------------------------------------------------

def _schema_keys() -> dict[str, list[str]]:
    """Every section of the config and its keys (the fuzzer picks real keys most often)."""
    out = {}
    for name, field in Config.model_fields.items():
        ann = field.annotation
        out[name] = list(ann.model_fields) if isinstance(ann, type) and hasattr(
            ann, "model_fields") else []
    return out


SCHEMA = _schema_keys()
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), FLOATS,
                    st.text(max_size=8), st.sampled_from(["auto", "kde", "log", "../x.npy",
                                                          "x.csv", "[0, 1]", "cpu", "1e999"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


@st.composite
def config_texts(draw: st.DrawFn) -> bytes:
    """A configuration file: real sections and keys with values of any type, unknown keys,
    YAML the safe loader refuses (tags, unhashable and duplicate keys), random text and bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(st.text(max_size=200)).encode("utf-8", errors="replace")
    if kind == 2:
        return draw(st.sampled_from([
            b"? [a]\n: 1\n", b"? {a: 1}\n: 2\n", b"seed: 1\nseed: 2\n", b"a: &x [*x]\n",
            b"!!python/object/apply:os.system [echo]\n", b"seed: !!binary aGk=\n",
            b"\tseed: 1\n", b"---\nseed: 1\n---\nseed: 2\n", b"- 1\n- 2\n", b"\xff\xfe",
            b"gof: {n_toys: 1e999}\n", b"data: {selection: '((((((((((x'}\n",
            b"data: {path: 'a\\0.csv'}\n", b"seed: -1\n", b"run_dir: 'a\\0'\n"]))
    tree: dict[Any, Any] = {}
    for section in draw(st.lists(st.sampled_from([*SCHEMA, "junk"]), unique=True, max_size=3)):
        keys = SCHEMA.get(section, [])
        if not keys or draw(st.integers(0, 4)) == 0:
            tree[section] = draw(VALUES)
            continue
        tree[section] = {k: draw(VALUES) for k in draw(
            st.lists(st.sampled_from([*keys, "junk"]), unique=True, min_size=1, max_size=3))}
    return yaml.safe_dump(tree, allow_unicode=True).encode("utf-8")


def _check_config(data: bytes) -> None:
    """A malformed config is a ConfigError; a config that loads survives the round trip
    through the run directory's config.yaml (dump, load, same hash)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(data)
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert str(exc).strip()
            return
        path.write_text(dump_config(config), encoding="utf-8")
        assert config_hash(load_config(path)) == config_hash(config)


test_fuzz_config, test_fuzz_config_slow = _twins(config_texts(), _check_config, fast=40)


# --- through the pipeline: the run directory ---------------------------------------------

TINY = {"quiet": True, "members": {"kind": "kde", "n_members": 2},
        "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2,
                   "min_events": 3},
        "gof": {"n_kernels": 2, "n_toys": 4}, "sample": {"n_events": 50},
        "coverage": {"enabled": False}, "report": {"formats": ["png"], "dpi": 20}}


def _cli() -> click.Group:
    return register(click.Group("genval"))


def _nothing_claimed(root: Path) -> None:
    """No stage counts as finished and no temporary or lock is left in ``root``."""
    if (root / "config.yaml").is_file():
        status = RunDir.open(root).status()
        assert not any(status.values()), status
    assert not list(root.rglob("*.tmp")) and not (root / ".lock").exists()


FORMAT_FILES = st.one_of(
    csv_bytes().map(lambda b: (".csv", b)), npy_bytes().map(lambda b: (".npy", b)),
    npz_files().map(lambda c: (".npz", c[0])))


def _check_cli_run(case: tuple[str, bytes]) -> None:
    """``genval run`` on a malformed file exits with a one-line InputError, no traceback and
    no stage marked finished (the file holds too few rows to be valid events)."""
    suffix, data = case
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / f"events{suffix}"
        events.write_bytes(data)
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump({**TINY, "data": {"path": str(events)}}))
        root = Path(tmp) / "run"
        result = CliRunner().invoke(_cli(), ["run", str(cfg), "--run-dir", str(root)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
            result.output, result.exc_info)
        assert "Error: InputError: " in result.output and "Traceback" not in result.output
        _nothing_claimed(root)


test_fuzz_cli_run, test_fuzz_cli_run_slow = _twins(FORMAT_FILES, _check_cli_run, fast=15)


OVERRIDES = st.fixed_dictionaries({}, optional={
    "seed": st.one_of(st.integers(-5, 5), st.just(2**64)),
    "splits": st.fixed_dictionaries({}, optional={
        "train": st.sampled_from([0.0, 0.5, 0.9, 1.0, [0.0, 0.5]]),
        "centres": st.sampled_from(["auto", 0.0, 0.05, [0.5, 0.6]]),
        "min_events": st.integers(1, 200), "shuffle": st.booleans()}),
    "data": st.fixed_dictionaries({}, optional={
        "features": st.sampled_from([["a"], ["a", "a"], ["b", "a"], ["nope"], []]),
        "selection": st.sampled_from(["a > 0", "a >", "nope > 1", "a & 1", "b / 0 > 1",
                                      "log(a) > 0", "where(a, b)", "a ** 1000 > 0"]),
        "aliases": st.sampled_from([{"c": "a * 2"}, {"a": "b"}, {"c": "d", "d": "c"},
                                    {"c": "1"}, {"sqrt": "a"}]),
        "transforms": st.sampled_from([{"a": "log"}, {"b": {"bounded": [0, 1]}},
                                       {"a": "periodic"}, {"nope": "log"}]),
        "weight": st.sampled_from(["b", "a", "nope"])}),
    "gof": st.fixed_dictionaries({}, optional={"n_kernels": st.integers(1, 500)}),
    "members": st.fixed_dictionaries({}, optional={"n_members": st.integers(1, 300)}),
})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _check_pipeline_split(overrides: dict[str, Any]) -> None:
    """``run_pipeline`` (split stage) on valid events with a hostile configuration raises
    InputError or ConfigError and leaves nothing claiming success, or finishes the split."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.csv"
        x = rng.normal(size=(300, 2)) + [2.0, 0.0]
        np.savetxt(events, x, delimiter=",", header="a,b", comments="")
        text = yaml.safe_dump(_merge({**TINY, "data": {"path": str(events)}}, overrides))
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        root = Path(tmp) / "run"
        try:
            run_pipeline(load_config(path), run_dir=root, stages=["split"])
        except InputError as exc:
            assert str(exc).strip()
            _nothing_claimed(root)
            return
        status = RunDir.open(root).status()
        assert status["split"] and not any(status[s] for s in STAGES[1:])


test_fuzz_pipeline_config, test_fuzz_pipeline_config_slow = _twins(
    OVERRIDES, _check_pipeline_split, fast=15)


# --- regressions: each crash the fuzzers found, as the example that found it ------------


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _huge_npy_header() -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                                "shape": (10**12, 3)})
    return buf.getvalue() + b"\0" * 24


GOOD = np.random.default_rng(1).normal(size=(40, 2))


@pytest.mark.parametrize("suffix, data, message", [
    (".csv", "a,b\n1,2\n\xe9,3\n".encode("latin-1"), "cannot read it as a .csv"),
    (".csv", b"a,b\n1,\x002\n3,4\n", "cannot parse as numbers"),
    (".npy", _npz(x=GOOD), "not a .npy file"),
    (".npy", _huge_npy_header(), "truncated"),
    (".npy", _npy(GOOD)[:100], "truncated"),
    (".npy", _npy(GOOD.astype(np.complex128)), "complex numbers"),
    (".npz", _npy(GOOD), "not a .npz archive"),
    (".npz", _npz(x=GOOD)[:300], "cannot read it as a .npz"),
    (".npz", _npz(x=GOOD, features=np.str_("a")), "must be a list"),
    (".h5", b"\x89HDF\r\n\x1a\n" + bytes(40), "cannot read it as a .h5"),
    (".root", b"root\x00\x00\xf4\x1d" + bytes(60), "events.root"),
    (".parquet", b"PAR1" + bytes(30) + b"PAR1", "cannot read it as a .parquet"),
], ids=["csv-latin1", "csv-nul", "npy-zip", "npy-huge-header", "npy-truncated", "npy-complex",
        "npz-npy", "npz-truncated", "npz-scalar-names", "h5-header-only", "root-header-only",
        "parquet-empty"])
def test_damaged_files_found_by_the_fuzzers(tmp_path, suffix, data, message):
    path = tmp_path / f"events{suffix}"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message):
        read_events(path)


def test_repeated_column_names_are_refused_not_collapsed(tmp_path):
    (tmp_path / "events.csv").write_text("a,a,b\n1,2,3\n4,5,6\n")
    with pytest.raises(InputError, match="the column name 'a' appears 2 times"):
        read_events(tmp_path / "events.csv")
    assert read_events(tmp_path / "events.csv", ["b"]).x.tolist() == [[3.0], [6.0]]


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    (tmp_path / "events.csv").write_bytes("a,b\n1,2\n".encode("utf-8-sig"))
    assert read_events(tmp_path / "events.csv").names == ["a", "b"]


@pytest.mark.parametrize("text, message", [
    (b"seed: 1\n\xff\n", "not a UTF-8 text file"),
    (b"? [a]\n: 1\n", "a key that is a list"),
    (b"seed: -1\n", "seed: Input should be greater than or equal to 0"),
    (b"run_dir: \"a\\0b\"\n", "run_dir must name a folder"),
    (("data: {path: x.csv, selection: '" + "+".join(["a"] * 5000) + " > 0'}\n").encode(),
     "nested too deeply"),
    (b"data: {path: x.csv, selection: \"a > \\0\"}\n", "data.selection"),
], ids=["latin1", "list-key", "negative-seed", "nul-run-dir", "deep-selection", "nul-selection"])
def test_configs_found_by_the_fuzzers(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
