"""Saving and loading flow ensembles: exact round trip, clear errors for bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genval.errors import ArtifactError
from genval.flows import FORMAT, FlowEnsemble, load, read_metadata, save


@pytest.fixture
def ensemble() -> FlowEnsemble:
    ens = FlowEnsemble(3, 4, layers=2, hidden=8, blocks=1, bins=5, permutation="random", seed=7)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    ens.loc, ens.scale = np.array([0.1, -2.0, 3.3]), np.array([0.5, 1.25, 7.0])
    ens.training_summary = {"best_epoch": [1, 2, 3, 4], "note": "test"}
    return ens


def test_round_trip_is_exact(ensemble: FlowEnsemble, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "flows.safetensors"
    save(ensemble, path)
    loaded = FlowEnsemble.load(path)
    x = np.random.default_rng(0).normal(size=(100, 3)) * 3
    np.testing.assert_array_equal(loaded.log_prob(x), ensemble.log_prob(x))
    np.testing.assert_array_equal(loaded.sample(10, 2, rng=1), ensemble.sample(10, 2, rng=1))
    assert loaded.config == ensemble.config
    assert loaded.member_seeds == ensemble.member_seeds
    assert loaded.training_summary == ensemble.training_summary
    assert torch.equal(loaded.permutations, ensemble.permutations)
    meta = read_metadata(path)
    assert meta["format"] == FORMAT and meta["config"]["n_members"] == 4
    assert meta["standardisation"]["scale"] == [0.5, 1.25, 7.0]
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporary behind


def test_float64_round_trip(ensemble: FlowEnsemble, tmp_path: Path) -> None:
    ens = ensemble.double()
    ens.save(tmp_path / "f.safetensors")
    loaded = load(tmp_path / "f.safetensors")
    assert loaded.dtype == torch.float64
    x = np.random.default_rng(1).normal(size=(20, 3))
    np.testing.assert_array_equal(loaded.log_prob(x), ens.log_prob(x))


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such file"):
        load(tmp_path / "nope.safetensors")
    text = tmp_path / "text.safetensors"
    text.write_text("hello, I am not a model\n")
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load(text)
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load(pickled)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(ArtifactError, match="not a genval flow ensemble"):
        load(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other), metadata={"genval": json.dumps(
        {"format": "genval.something.Else", "format_version": 1})})
    with pytest.raises(ArtifactError, match="not a genval.flows.FlowEnsemble"):
        load(other)


def test_truncated_file(ensemble: FlowEnsemble, tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    save(ensemble, path)
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError):
            load(bad)


def test_corrupted_tensor_bytes(ensemble: FlowEnsemble, tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    save(ensemble, path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: safetensors alone would load it silently
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load(path)


def _rewrite_meta(path: Path, out: Path, edit) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["genval"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edit(meta, tensors)
    save_file(tensors, str(out), metadata={"genval": json.dumps(meta)})


def test_newer_version_and_inconsistent_tensors(ensemble: FlowEnsemble, tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    save(ensemble, path)

    def newer(meta, tensors):
        meta["format_version"] = 99

    _rewrite_meta(path, tmp_path / "newer.safetensors", newer)
    with pytest.raises(ArtifactError, match="upgrade genval"):
        load(tmp_path / "newer.safetensors")

    def wrong_shape(meta, tensors):
        meta["config"]["hidden"] = 9  # the tensors no longer fit the architecture

    _rewrite_meta(path, tmp_path / "shape.safetensors", wrong_shape)
    with pytest.raises(ArtifactError, match="expected"):
        load(tmp_path / "shape.safetensors")

    def missing(meta, tensors):
        del meta["config"]

    _rewrite_meta(path, tmp_path / "missing.safetensors", missing)
    with pytest.raises(ArtifactError, match="inconsistent"):
        load(tmp_path / "missing.safetensors")


def test_state_round_trip_in_memory(ensemble: FlowEnsemble) -> None:
    tensors, fields = ensemble.to_state()
    json.dumps(fields, allow_nan=False)  # the fields are what the file's JSON header holds
    rebuilt = FlowEnsemble.from_state(tensors, fields)
    x = np.random.default_rng(2).normal(size=(30, 3))
    np.testing.assert_array_equal(rebuilt.log_prob(x), ensemble.log_prob(x))
    assert rebuilt.member_seeds == ensemble.member_seeds
    with pytest.raises(ArtifactError, match="do not match the architecture"):
        FlowEnsemble.from_state({k: v for k, v in tensors.items() if k != "permutations"},
                                fields)


def test_file_format_module_does_not_import_the_ensemble() -> None:
    """genval.flows.io is the container format only: no import cycle with the ensemble."""
    import ast

    import genval.flows.io as flow_io

    tree = ast.parse(Path(flow_io.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert not {m for m in imported if m and m.startswith("genval.flows")}, imported
