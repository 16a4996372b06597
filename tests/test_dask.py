"""genval on a real Dask LocalCluster: toys, coverage data sets and flow shards give the serial
numbers bit for bit, also when a worker process is killed mid-run.

One cluster for the module (2 worker processes, one thread each, on 127.0.0.1, no dashboard),
started and stopped by the fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")

import cloudpickle  # noqa: E402

from genval import pipeline  # noqa: E402
from genval.compute import WORKER_ENVIRONMENT, ComputeSettings, Executor, open_executor  # noqa: E402
from genval.config import parse_config  # noqa: E402
from genval.coverage import run_coverage  # noqa: E402
from genval.errors import InputError  # noqa: E402
from genval.flows import FlowEnsemble, train  # noqa: E402
from genval.gof import goodness_of_fit  # noqa: E402
from genval.pipeline import artifacts  # noqa: E402
from genval.rundir import RunDir  # noqa: E402
from gof_support import gaussian_ensemble, small_gof_problem, within  # noqa: E402

# Functions of this module (the truth sampler) travel to the workers by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    with open_executor(ComputeSettings(scheduler="processes", n_workers=2,
                                       threads_per_worker=1)) as executor:
        assert executor.cluster is not None and len(executor.client.run(os.getpid)) == 2
        yield executor


@pytest.fixture(scope="module")
def test_problem():
    return small_gof_problem()


def _toys(problem, **kw):
    members, fit, basis, x_test = problem
    return goodness_of_fit(members, fit, x_test, basis, seed=7, pool_size=4000, **kw)


def _same_toys(a, b):
    assert a.t_obs == b.t_obs
    for key in ("t_null", "toy_index", "toy_converged", "toy_size"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    np.testing.assert_array_equal(a.pool_negative_mass, b.pool_negative_mass)


def test_cluster_is_local_and_without_dashboard(cluster):
    info = cluster.client.scheduler_info()
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
    assert cluster.client.scheduler.address.startswith("tcp://127.0.0.1:")
    # no dashboard: the scheduler's small HTTP server (health checks) has no /status page
    port = cluster.cluster.scheduler.http_server.port
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10)
    assert cluster.n_workers == 2 and cluster.n_threads == 2 and cluster.n_gpus() == 0
    assert set(cluster.client.run(lambda: os.environ["OMP_NUM_THREADS"]).values()) == {"1"}
    # big temporaries stay on the heap despite the nanny's malloc trim setting (compute.py)
    assert set(cluster.client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_")).values()
               ) == {WORKER_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"]}


def test_a_second_cluster_beside_the_first_warns_of_no_port(cluster):
    """Two clusters at once (two notebooks, overlapping test sessions): the second one's HTTP
    server takes a free port of 127.0.0.1 instead of asking for Dask's 8787 and warning that it
    is taken. Port 8787 is held here so the old behaviour would warn whoever else holds it."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen(1)
    except OSError:
        pass  # someone else holds it: just as good for this test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with open_executor(ComputeSettings(scheduler="processes", n_workers=1,
                                               threads_per_worker=1)) as second:
                http = second.cluster.scheduler.http_server
                assert http.address == "127.0.0.1" and http.port != 8787
                assert second.client.submit(int, "7").result() == 7
    finally:
        holder.close()


def test_toys_equal_serial_fork_and_dask(cluster, test_problem):
    serial = _toys(test_problem, n_toys=40, n_jobs=1)
    _same_toys(serial, _toys(test_problem, n_toys=40, n_jobs=2))
    _same_toys(serial, _toys(test_problem, n_toys=40, scheduler=cluster))
    # a range on the cluster merged with one run here: the same toys again
    from genval.gof import merge_results

    parts = [_toys(test_problem, n_toys=15, first_toy=25, scheduler=cluster),
             _toys(test_problem, n_toys=25, n_jobs=1)]
    _same_toys(serial, merge_results(parts))


def test_a_killed_worker_does_not_change_the_toys(cluster, test_problem):
    serial = _toys(test_problem, n_toys=120, n_jobs=1)
    client = cluster.client
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    killed = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed.is_set():
            if client.processing().get(victim):  # the victim is fitting toys right now
                os.kill(pids[victim], signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_when_busy, daemon=True)
    watcher.start()
    on_cluster = within(300, lambda: _toys(test_problem, n_toys=120, scheduler=cluster))
    watcher.join()
    assert killed.is_set(), "the worker was never seen busy"
    _same_toys(serial, on_cluster)
    # the nanny restarts the killed worker: the cluster is whole again for the next tests
    client.wait_for_workers(2, timeout=120)
    assert pids[victim] not in client.run(os.getpid).values()


def _truth(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal([0.1, -0.2], [1.0, 0.8], size=(n, 2))


def test_coverage_data_sets_as_tasks_equal_serial(cluster):
    rng = np.random.default_rng(3)
    members = gaussian_ensemble(4, rng)
    kw = dict(n_datasets=4, n_events=300, seed=5, progress=False)
    serial = run_coverage(members, _truth, [0.1, -0.2], **kw)
    on_cluster = run_coverage(members, _truth, [0.1, -0.2], scheduler=cluster, **kw)
    for key in ("estimates", "stds", "stds_weights", "weights", "covs", "converged"):
        np.testing.assert_array_equal(getattr(serial, key), getattr(on_cluster, key))
    assert serial.messages == on_cluster.messages


def test_eight_members_on_two_workers_equal_the_single_process_members(cluster):
    x = np.random.default_rng(0).normal([0.5, -1.0], [1.0, 2.0], size=(1500, 2))
    kw = dict(max_epochs=8, patience=2, lr=3e-2, batch_size=100, seed=5, progress=False)
    arch = dict(layers=2, hidden=16, blocks=1, bins=6)
    alone = FlowEnsemble(2, 8, **arch, seed=3)
    sharded = FlowEnsemble(2, 8, **arch, seed=3)
    h_alone = train(alone, x, **kw)
    h_sharded = train(sharded, x, scheduler=cluster, **kw)
    for p, q in zip(alone.parameters(), sharded.parameters(), strict=True):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(alone.loc, sharded.loc)
    np.testing.assert_array_equal(alone.scale, sharded.scale)
    for key in ("train_loss", "val_loss", "best_epoch", "best_val_loss", "stopped_early"):
        np.testing.assert_array_equal(getattr(h_alone, key), getattr(h_sharded, key))
    assert h_sharded.settings["shards"] == 2
    assert sharded.training_summary["settings"]["shards"] == 2


def test_conditional_shards_equal_the_single_process_members(cluster):
    gen = np.random.default_rng(1)
    c = gen.exponential(size=(1200, 1))
    x = np.column_stack([c[:, 0] + 0.3 * gen.normal(size=1200), gen.normal(size=1200)])
    kw = dict(max_epochs=4, patience=2, lr=3e-2, batch_size=100, seed=5, progress=False)
    arch = dict(layers=2, hidden=8, blocks=1, bins=5, seed=3, n_context=1)
    alone, sharded = FlowEnsemble(2, 4, **arch), FlowEnsemble(2, 4, **arch)
    h_alone = train(alone, x, context=c, **kw)
    h_sharded = train(sharded, x, context=c, scheduler=cluster, **kw)
    for p, q in zip(alone.parameters(), sharded.parameters(), strict=True):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(alone.context_scale, sharded.context_scale)
    np.testing.assert_array_equal(h_alone.val_loss, h_sharded.val_loss)


def test_gpu_shards_need_workers_with_a_gpu(cluster):
    ens = FlowEnsemble(2, 2, layers=1, hidden=4, blocks=0, bins=4)
    x = np.random.default_rng(0).normal(size=(200, 2))
    with pytest.raises(InputError, match="no worker offers a GPU"):
        train(ens, x, scheduler=cluster, device="cuda", max_epochs=1, progress=False)


def test_a_client_is_used_as_is(cluster):
    with open_executor(cluster.client) as executor:
        assert isinstance(executor, Executor) and executor.cluster is None
    assert cluster.client.status == "running"  # not closed: it was not ours


def test_pipeline_on_an_existing_scheduler_equals_a_local_run(cluster, tmp_path):
    """compute.scheduler = the cluster's address: the run's artifacts equal a local run's."""
    base = {"quiet": True, "data": {"generate": {"n_events": 800}},
            "splits": {"train": 0.5, "weight_fit": 0.25, "centres": 0.05, "test": 0.2},
            "members": {"kind": "kde", "n_members": 3, "kde": {"bandwidth": 0.15}},
            "coverage": {"n_datasets": 2, "n_events": 100, "n_generated": 200},
            "gof": {"n_kernels": 10, "n_toys": 12, "pool_size": 2000, "n_jobs": 1,
                    "variants": ["frozen", "ensemble"]},
            "report": {"formats": ["png"], "dpi": 30, "pool_size": 5000}}
    local_cfg = parse_config({**base, "run_dir": str(tmp_path / "a")})
    local = pipeline.run_pipeline(local_cfg, stages=["split", "train", "fit"])
    shutil.copytree(local.root, tmp_path / "b")  # the same members and fit for both
    remote_cfg = parse_config({**base, "run_dir": str(tmp_path / "b"),
                               "compute": {"scheduler": cluster.client.scheduler.address}})
    for cfg in (local_cfg, remote_cfg):
        pipeline.run_pipeline(cfg, stages=["coverage", "gof"])
    remote = RunDir.open(tmp_path / "b")
    for variant in ("frozen", "ensemble"):
        _same_toys(artifacts.load_gof(local, variant).result,
                   artifacts.load_gof(remote, variant).result)
    a, b = artifacts.load_coverage(local).result, artifacts.load_coverage(remote).result
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.stds, b.stds)
