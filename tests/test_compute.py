"""genval.compute without a cluster: scheduler names, settings, cores, SLURM job scripts offline,
the compute config section, and the pieces that make a sharded run equal a single one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from genval import compute
from genval.compute import (
    ComputeSettings,
    SlurmSettings,
    available_cores,
    check_scheduler,
    open_executor,
    slurm_job_script,
)
from genval.config import ConfigError, config_hash, parse_config
from genval.errors import ArtifactError, InputError
from genval.flows import FlowEnsemble, train
from genval.flows import io as flow_io
from genval.flows.optim import ALIGN, MemberAdam
from genval.flows.shards import merge_histories, shard_members
from genval.pipeline.gof_stage import missing_ranges

SMALL = dict(layers=2, hidden=12, blocks=1, bins=6)


@pytest.mark.parametrize("name", ["local", "processes", "slurm", "tcp://127.0.0.1:8786",
                                  "tls://scheduler.cluster:8786"])
def test_scheduler_names_and_addresses_are_accepted(name):
    assert check_scheduler(name) == name
    assert ComputeSettings(scheduler=name).scheduler == name


@pytest.mark.parametrize("name", ["", "dask", "tcp://host", "127.0.0.1:8786", "tcp:/h:1"])
def test_other_schedulers_are_refused_with_the_accepted_forms(name):
    with pytest.raises(InputError, match="local, processes, slurm or an address"):
        check_scheduler(name)


def test_settings_are_validated():
    with pytest.raises(InputError, match="0 or 1 per job"):
        SlurmSettings(gpus=2)
    with pytest.raises(InputError, match="walltime"):
        SlurmSettings(walltime="two hours")
    with pytest.raises(InputError, match="n_workers"):
        ComputeSettings(n_workers=0)
    with pytest.raises(InputError, match="train_shards"):
        ComputeSettings(train_shards=0)
    assert SlurmSettings(job_extra_directives=["--x"]).job_extra_directives == ("--x",)


def test_local_scheduler_opens_nothing():
    for scheduler in (None, "local", ComputeSettings()):
        with open_executor(scheduler) as executor:
            assert executor is None


def test_available_cores_follow_affinity_quota_and_dask_worker(monkeypatch):
    monkeypatch.setattr(compute, "_cgroup_quota", lambda: None)
    import os

    affinity = len(os.sched_getaffinity(0))
    assert available_cores() == affinity
    monkeypatch.setattr(compute, "_cgroup_quota", lambda: 0.5)  # half a core: still one
    assert available_cores() == 1
    monkeypatch.setattr(compute, "worker_threads", lambda: 3)  # inside a Dask worker
    assert available_cores() == 3


def test_toys_use_the_cores_they_get(monkeypatch):
    from genval.gof import toys

    monkeypatch.setattr(toys, "available_cores", lambda: 1)
    assert toys._n_jobs(-1) == 1  # one core (a quota, a Dask worker thread): no pool at all
    monkeypatch.setattr(toys, "can_fork_workers", lambda: False)
    assert toys._fork_context() is None  # a daemon (Dask worker) never forks a pool


GPU_SITE = SlurmSettings(jobs=4, cores=8, memory="32GB", walltime="12:00:00", gpus=1,
                         queue="gpu", account="phys", job_extra_directives=("--constraint=a100",),
                         job_script_prologue=("module load cuda/12.4",
                                              "source $HOME/genval-env/bin/activate"))


def test_slurm_job_script_offline():
    script = slurm_job_script(GPU_SITE, "tcp://10.1.2.3:8786")
    for line in ("#SBATCH -p gpu", "#SBATCH -A phys", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 12:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --constraint=a100",
                 "module load cuda/12.4", "source $HOME/genval-env/bin/activate"):
        assert line in script, (line, script)
    assert "#SBATCH --mem=30G" in script  # 32 GB in SLURM's binary units, rounded up
    worker = script.strip().splitlines()[-1]
    assert "tcp://10.1.2.3:8786" in worker and "--nthreads 8" in worker
    assert "--resources GPU=1" in worker and "--nanny" in worker
    cpu_only = slurm_job_script(SlurmSettings(cores=2))
    assert "gres" not in cpu_only and "GPU" not in cpu_only


def test_slurm_cluster_job_script_matches_offline():
    """SLURMCluster.job_script() of the settings, with its scheduler on 127.0.0.1 and no job
    submitted, is the script built offline."""
    jobqueue = pytest.importorskip("dask_jobqueue")
    kwargs = compute.slurm_job_kwargs(GPU_SITE)
    cluster = jobqueue.SLURMCluster(**kwargs, scheduler_options={
        "dashboard_address": None, "host": "127.0.0.1"})
    try:
        script = cluster.job_script()
        address = cluster.scheduler_address
    finally:
        cluster.close()
    offline = slurm_job_script(GPU_SITE, address)
    assert [line for line in script.splitlines() if line.startswith("#SBATCH")
            and " -J " not in line] == [line for line in offline.splitlines()
                                        if line.startswith("#SBATCH") and " -J " not in line]


def test_compute_section_is_a_runtime_key():
    base = parse_config({})
    other = parse_config({"compute": {"scheduler": "processes", "n_workers": 2,
                                      "slurm": {"gpus": 1, "jobs": 3}}})
    assert config_hash(base) == config_hash(other)
    settings = other.compute.settings()
    assert settings.scheduler == "processes" and settings.slurm.jobs == 3
    with pytest.raises(ConfigError, match="compute.scheduler"):
        parse_config({"compute": {"scheduler": "dask"}})
    with pytest.raises(ConfigError, match="compute.slurm.gpus"):
        parse_config({"compute": {"slurm": {"gpus": 4}}})
    # YAML reads an unquoted 12:00:00 as 43200 (base 60): it is a walltime again
    cfg = parse_config(yaml.safe_load("compute:\n  slurm:\n    walltime: 12:00:00\n"))
    assert cfg.compute.slurm.walltime == "12:00:00"


def test_missing_toy_ranges():
    assert missing_ranges([], 10) == [(0, 10)]
    assert missing_ranges([(0, 4), (6, 10)], 10) == [(4, 6)]
    assert missing_ranges([(2, 5), (5, 10)], 10) == [(0, 2)]
    assert missing_ranges([(0, 10)], 10) == []


def test_ensemble_bytes_round_trip_and_corruption():
    ens = FlowEnsemble(2, 3, **SMALL, seed=4)
    data = flow_io.to_bytes(*ens.to_state())
    meta, tensors = flow_io.from_bytes(data)
    back = FlowEnsemble.from_state(tensors, meta)
    assert all(torch.equal(p, q) for p, q in zip(ens.parameters(), back.parameters(),
                                                  strict=True))
    assert back.member_seeds == ens.member_seeds
    broken = bytearray(data)
    broken[-3] ^= 0xFF
    with pytest.raises(ArtifactError, match="checksum"):
        flow_io.from_bytes(bytes(broken))
    with pytest.raises(ArtifactError, match="not a readable"):
        flow_io.from_bytes(b"not an ensemble")


def test_member_adam_is_adam_and_independent_of_the_other_members():
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 7, 3), (5, ALIGN + 5), (5, 2)]  # remainders of every size, one aligned
    params = [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]
    ref = [p.detach().clone().requires_grad_(True) for p in params]
    keep = [1, 4]
    sub = [p.detach()[keep].clone().requires_grad_(True) for p in params]
    ours, theirs, part = MemberAdam(params, 1e-2), torch.optim.Adam(ref, lr=1e-2), None
    part = MemberAdam(sub, 1e-2)
    for _ in range(5):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for group, gs in ((params, grads), (ref, grads), (sub, [g[keep] for g in grads])):
            for p, g in zip(group, gs, strict=True):
                p.grad = g.clone()
        ours.step()
        theirs.step()
        part.step()
    for p, q, s in zip(params, ref, sub, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)  # Adam, to rounding
        assert torch.equal(p.detach()[keep], s.detach())  # bit for bit in a sub-ensemble
    # compaction keeps the moments of the kept members
    compact = ours.subset([p.detach()[keep].clone() for p in params], keep)
    assert compact.n_steps == 5 and torch.equal(compact.exp_avg[0], ours.exp_avg[0][keep])


@pytest.mark.parametrize("batch_size", [100, 64])
def test_sub_ensembles_train_bit_for_bit_like_the_whole(batch_size):
    """What sharding relies on: a member's training does not depend on the other members
    (early stopping compacts the ensemble on the way; batches not a multiple of 64)."""
    x = np.random.default_rng(0).normal([0.5, -1.0], [1.0, 2.0], size=(1500, 2))
    kw = dict(max_epochs=8, patience=1, lr=3e-2, batch_size=batch_size, seed=5,
              progress=False)
    whole = FlowEnsemble(2, 6, **SMALL, seed=3)
    initial = whole.subset(range(6))
    history = train(whole, x, **kw)
    assert len(set(history.n_epochs.tolist())) > 1  # members stopped at different epochs
    groups = shard_members(6, 3)
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3], [4, 5]]
    parts = []
    for g in groups:
        shard = initial.subset(g)
        parts.append(train(shard, x, **kw))
        for p, q in zip(whole.parameters(), shard.parameters(), strict=True):
            assert torch.equal(p[torch.as_tensor(g)], q)
    merged = merge_histories(parts, groups, 6)
    for key in ("train_loss", "val_loss", "best_epoch", "best_val_loss", "stopped_early",
                "diverged", "val_indices", "train_indices"):
        np.testing.assert_array_equal(getattr(merged, key), getattr(history, key))
    assert merged.settings["shards"] == 3
