"""--device reaches every stage (resumed runs and single stages too); mps is refused clearly.

The machine has no GPU: a fake ``cuda:1`` is accepted by patching ``torch.cuda.is_available``
and recording the device :meth:`FlowEnsemble.load` is asked for (the members then load on the
CPU), so the test sees exactly which device each stage would have used.
"""

import json

import click
import matplotlib
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

matplotlib.use("Agg")

from genval import flows, pipeline  # noqa: E402
from genval.cli import register  # noqa: E402
from genval.config import ConfigError, parse_config  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.pipeline.device import resolve_device  # noqa: E402

TINY_FLOW = {
    "quiet": True,
    "data": {"generate": {"n_events": 600}},
    "splits": {"train": 0.45, "weight_fit": 0.4, "centres": 0.05, "test": 0.1},
    "members": {"kind": "flow", "n_members": 2,
                "flow": {"layers": 1, "hidden": 8, "blocks": 1, "bins": 4,
                         "learning_rate": 3e-3, "max_epochs": 2, "patience": 2}},
    "sample": {"n_events": 200},
    "coverage": {"enabled": False}, "gof": {"enabled": False, "n_kernels": 10},
    "report": {"formats": ["png"], "dpi": 30, "pool_size": 2000},
}


@pytest.fixture
def trained(tmp_path):
    """A run whose flows are trained (split, train done), and its config file."""
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY_FLOW))
    root = tmp_path / "run"
    pipeline.run_pipeline(parse_config(TINY_FLOW), run_dir=root, stages=["split", "train"])
    return root, cfg_file


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CUDA exists; return the devices the members are loaded on."""
    asked: list[str | None] = []
    original = flows.FlowEnsemble.load.__func__

    def load(cls, path, *, device=None):
        asked.append(None if device is None else str(device))
        return original(cls, path)  # on the CPU, whatever was asked

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(flows.FlowEnsemble, "load", classmethod(load))
    return asked


def _meta(root):
    return json.loads((root / "metadata.json").read_text())


def test_single_stage_command_loads_members_on_the_requested_device(trained, fake_cuda):
    root, _ = trained
    cli = register(click.Group("genval"))
    result = CliRunner().invoke(cli, ["fit", str(root), "--device", "cuda:1"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert fake_cuda == ["cuda:1"]
    assert _meta(root)["device"] == {"requested": "cuda:1", "resolved": "cuda:1"}


def test_resumed_run_loads_members_on_the_requested_device(trained, fake_cuda):
    root, cfg_file = trained
    cli = register(click.Group("genval"))
    result = CliRunner().invoke(cli, ["run", str(cfg_file), "--run-dir", str(root),
                                      "--device", "cuda"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # train was done (skipped); fit and sample each loaded the members, on cuda.
    assert fake_cuda == ["cuda", "cuda"]
    assert _meta(root)["device"] == {"requested": "cuda", "resolved": "cuda"}
    # Resuming on the CPU again: the metadata follows, no stale "cuda" is left behind.
    result = CliRunner().invoke(cli, ["report", str(root), "--force", "--device", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert _meta(root)["device"] == {"requested": "cpu"}


def test_auto_resolves_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_mps_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="float64.*MPS"):
        parse_config({"device": "mps"})
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        parse_config({"device": "gpu"})
    with pytest.raises(InputError, match="float64.*MPS"):
        resolve_device("mps")
    ens = flows.FlowEnsemble(2, 1, layers=1, hidden=4, blocks=1, bins=3)
    x = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(InputError, match="float64.*MPS"):
        flows.train(ens, x, device="mps", max_epochs=1, progress=False)
    path = tmp_path / "e.safetensors"
    ens.save(path)
    with pytest.raises(InputError, match="float64.*MPS"):
        flows.load(path, device="mps")
    cli = register(click.Group("genval"))
    result = CliRunner().invoke(cli, ["demo", "--device", "mps", "--run-dir",
                                      str(tmp_path / "d")])
    assert result.exit_code == 1 and "MPS" in result.output
