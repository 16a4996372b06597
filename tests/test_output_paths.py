"""Output paths stay inside the run directory (issue 13); written files follow the umask
(issue 11)."""

import os
import stat

import numpy as np
import pytest

from genval._atomic import atomic_write_bytes
from genval._paths import check_relative_output, resolve_inside
from genval.config import ConfigError, parse_config
from genval.errors import OutputPathError
from genval.io import write_events
from genval.pipeline.artifacts import load_samples, save_samples
from genval.rundir import RunDir


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("output, message", [
    ("../../evil.npy", "contains '..'"),
    ("sub/../../evil.csv", "contains '..'"),
    ("sub\\..\\..\\evil.csv", "contains '..'"),
    ("/tmp/evil.npy", "absolute path"),
    ("C:\\evil.npy", "absolute path"),
    ("~/evil.npy", "starts with '~'"),
    ("density.npz", "the sample stage's own"),
    ("evil.txt", "unknown format"),
])
def test_config_refuses_outputs_outside_the_run_directory(output, message):
    with pytest.raises(ConfigError, match=rf"sample.output: .*{message}"):
        parse_config({"sample": {"output": output}})


def test_config_accepts_nested_relative_outputs():
    assert parse_config({"sample": {"output": "sub/dir/x.h5:ev"}}).sample.output == \
        "sub/dir/x.h5:ev"
    assert check_relative_output("a/b.npy", "x") == "a/b.npy"


def test_symlink_escape_is_refused_at_write_time(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    run = RunDir.create(tmp_path / "run", parse_config({"sample": {"output": "sub/x.npy"}}))
    x = np.zeros((3, 2))
    dens = np.ones(3)
    (run.root / "samples").mkdir()
    (run.root / "samples" / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputPathError, match=r"sample.output 'samples/sub/x.npy' resolves to "
                                              r".*outside.*outside the run directory"):
        save_samples(run, "sub/x.npy", x, ["a", "b"], dens, dens)
    assert not list(outside.iterdir())  # nothing written through the link
    # A folder of the run replaced by a link out of it: every artifact there is refused.
    (run.root / "samples" / "sub").unlink()
    (run.root / "samples").rmdir()
    (run.root / "samples").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputPathError, match="run-directory folder 'samples'"):
        save_samples(run, "x.npy", x, ["a", "b"], dens, dens)
    (run.root / ".stages").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputPathError, match="stage marker"):
        run.mark_done("split", seconds=1.0)
    assert not list(outside.iterdir())
    # A link that stays inside the run directory is fine.
    (run.root / "samples").unlink()
    (run.root / "real").mkdir()
    (run.root / "samples").symlink_to(run.root / "real", target_is_directory=True)
    save_samples(run, "sub/x.npy", x, ["a", "b"], dens, dens)
    table, density, _ = load_samples(run)
    np.testing.assert_array_equal(table.x, x)
    assert (run.root / "real" / "sub" / "x.npy").is_file()


def test_resolve_inside_checks_the_text_too(tmp_path):
    assert resolve_inside(tmp_path, "a/b.npy", "out") == tmp_path / "a" / "b.npy"
    for bad in ("../b.npy", str(tmp_path / "b.npy")):
        with pytest.raises(OutputPathError):
            resolve_inside(tmp_path / "run", bad, "out")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        files = [atomic_write_bytes(tmp_path / "new" / "deeper" / "a.bin", b"x")]
        for fmt in (".npy", ".csv", ".npz"):
            files.append(write_events(tmp_path / f"e{fmt}", np.zeros((2, 2))))
        for fmt, lib in ((".parquet", "pyarrow"), (".h5", "h5py"), (".root", "uproot")):
            pytest.importorskip(lib)  # these libraries open the temporary file themselves
            files.append(write_events(tmp_path / f"e{fmt}", np.zeros((2, 2))))
        run = RunDir.create(tmp_path / "run", parse_config({}))
        files += [run.config_path, run.metadata_path]
        folders = [tmp_path / "new", tmp_path / "new" / "deeper", run.root, run.dir("fit")]
    finally:
        os.umask(old)
    for path in files:
        assert mode(path) == 0o666 & ~umask, (path, oct(mode(path)))
    for path in folders:
        assert mode(path) == 0o777 & ~umask, (path, oct(mode(path)))
    assert not list(tmp_path.glob("**/.*.tmp"))
