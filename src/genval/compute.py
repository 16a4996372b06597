"""Where genval's parallel work runs: this process, a Dask cluster, or SLURM jobs.

One setting chooses the executor everywhere (config ``compute.scheduler``, CLI
``--scheduler``, the ``scheduler=`` keyword of :func:`genval.flows.train`,
:func:`genval.goodness_of_fit` and :func:`genval.coverage.run_coverage`):

* ``"local"`` (default): this process, as before (toys in a fork pool of one process per core);
* ``"processes"``: a ``distributed.LocalCluster`` of worker processes on this machine
  (127.0.0.1, no dashboard), started and stopped with the executor;
* ``"tcp://HOST:PORT"``: an existing Dask scheduler (``dask scheduler`` / ``dask worker``);
* ``"slurm"``: a ``dask_jobqueue.SLURMCluster`` from :class:`SlurmSettings`, one SLURM job per
  worker (docs/cluster.md).

The work is cut into tasks whose seeds are arguments (toy ranges, coverage data sets, shards of
the ensemble), so every executor gives the same numbers. :class:`Executor` is the one home of
task submission: :meth:`Executor.share` makes a large input a task each worker fetches once,
:meth:`Executor.submit` queues a task (retried on errors; a task whose worker dies is rerun
elsewhere by the scheduler), :meth:`Executor.gather` advances a progress bar as tasks finish
and returns the results in submission order.

Threads: a Dask worker runs ``threads_per_worker`` tasks at once, each meant to be
single-threaded (the nanny starts workers with ``OMP_NUM_THREADS=1`` and friends);
:func:`available_cores` tells genval's own pools how many cores they may use (a worker's
threads inside a worker; elsewhere the CPU affinity, capped by a cgroup CPU quota), so nothing
oversubscribes the cores a process actually gets.

References:
    Badaracco et al., Step 1 (M members) and Step 4 (toys): embarrassingly parallel work.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from genval._optional import require
from genval.errors import InputError

__all__ = ["SCHEDULERS", "SlurmSettings", "ComputeSettings", "Executor", "SchedulerLike",
           "open_executor", "check_scheduler", "available_cores", "worker_threads",
           "can_fork_workers",
           "slurm_job_kwargs", "slurm_job_script", "WORKER_ENVIRONMENT"]

SCHEDULERS = ("local", "processes", "slurm")
"""Named schedulers; any ``tcp://HOST:PORT`` (or ``tls://``) address is accepted as well."""

_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+:\d+$")


def check_scheduler(value: str) -> str:
    """``value`` if it names a scheduler (:data:`SCHEDULERS` or ``tcp://HOST:PORT``).

    Raises:
        InputError: anything else, with the accepted forms.
    """
    if value in SCHEDULERS or _ADDRESS.match(str(value)):
        return str(value)
    raise InputError(f"scheduler must be one of {', '.join(SCHEDULERS)} or an address "
                     f"tcp://HOST:PORT, got {value!r}")


@dataclass(frozen=True)
class SlurmSettings:
    """The SLURM jobs of ``scheduler="slurm"``: one Dask worker per job.

    Attributes:
        jobs: SLURM jobs (workers) to start.
        cores: CPU cores per job (``--cpus-per-task``); the worker runs that many tasks at once.
        memory: memory per job (``--mem``), e.g. ``"16GB"``.
        walltime: ``--time`` of each job, ``HH:MM:SS``.
        gpus: GPUs per job, 0 or 1 (``--gres=gpu:1`` and the worker resource ``GPU=1``, which
            the training shards ask for); scale GPUs with ``jobs``.
        queue: partition (``-p``). account: account (``-A``).
        job_extra_directives: further ``#SBATCH`` options, e.g. ``["--constraint=a100"]``.
        job_script_prologue: shell lines run before the worker starts (``module load``,
            activating the environment that has genval).
        interface: network interface the scheduler listens on, reachable from the compute
            nodes (e.g. ``"ib0"``); None: the default interface.
        local_directory: worker scratch space on the compute node.
        log_directory: where SLURM writes the workers' logs.
        python: the Python that runs the workers (default: this one).
        wait_seconds: how long to wait for the first worker before failing.
    """

    jobs: int = 1
    cores: int = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    gpus: int = 0
    queue: str | None = None
    account: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    wait_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if int(self.jobs) < 1 or int(self.cores) < 1:
            raise InputError(f"slurm jobs and cores must be >= 1, got {self.jobs}, {self.cores}")
        if self.gpus not in (0, 1):
            raise InputError(f"slurm gpus must be 0 or 1 per job (one GPU per worker; scale "
                             f"the GPUs with jobs), got {self.gpus}")
        if not re.match(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$", str(self.walltime)):
            raise InputError(f"slurm walltime must read like HH:MM:SS, got {self.walltime!r}")
        object.__setattr__(self, "job_extra_directives", tuple(self.job_extra_directives))
        object.__setattr__(self, "job_script_prologue", tuple(self.job_script_prologue))


@dataclass(frozen=True)
class ComputeSettings:
    """Which executor runs the parallel work, and how large it is.

    Attributes:
        scheduler: ``"local"``, ``"processes"``, ``"tcp://HOST:PORT"`` or ``"slurm"``.
        n_workers: worker processes of ``"processes"`` (default: one per available core).
        threads_per_worker: tasks a worker of ``"processes"`` runs at once.
        retries: reruns of a task that raised (a task whose worker died is rerun by the
            scheduler regardless, up to ``distributed.scheduler.allowed-failures``).
        train_shards: sub-ensembles of a training run on workers (default: one per worker,
            or per GPU when training on GPUs).
        slurm: the SLURM jobs of ``"slurm"``.
    """

    scheduler: str = "local"
    n_workers: int | None = None
    threads_per_worker: int = 1
    retries: int = 1
    train_shards: int | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    def __post_init__(self) -> None:
        check_scheduler(self.scheduler)
        if self.n_workers is not None and int(self.n_workers) < 1:
            raise InputError(f"n_workers must be >= 1, got {self.n_workers}")
        if int(self.threads_per_worker) < 1 or int(self.retries) < 0:
            raise InputError("threads_per_worker must be >= 1 and retries >= 0")
        if self.train_shards is not None and int(self.train_shards) < 1:
            raise InputError(f"train_shards must be >= 1, got {self.train_shards}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ComputeSettings:
        """Settings from a mapping such as the config's ``compute`` section."""
        slurm = dict(values.get("slurm") or {})
        names = {f.name for f in fields(SlurmSettings)}
        top = {k: v for k, v in values.items() if k != "slurm"}
        return cls(**top, slurm=SlurmSettings(**{k: v for k, v in slurm.items() if k in names}))


# --- cores --------------------------------------------------------------------------------

def worker_threads() -> int | None:
    """Threads of the Dask worker running this code, or None outside a worker."""
    if "distributed" not in sys.modules:  # a worker has it loaded; never import it here
        return None
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except ValueError:  # not in a worker
        return None


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (or v1) CPU quota, or None without one."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda s: s.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", None)):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if parse is not None:
            quota, period = (parse(text) + ["100000"])[:2]
            if quota == "max":
                return None
            return int(quota) / int(period)
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
                period = int(fh.read().strip())
        except OSError:
            return None
        return int(text) / period if int(text) > 0 else None
    return None


def available_cores() -> int:
    """Cores this process may keep busy: its Dask worker's threads inside a worker, else the
    CPUs of its affinity mask, capped by a cgroup CPU quota (containers, batch jobs)."""
    threads = worker_threads()
    if threads is not None:
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def can_fork_workers() -> bool:
    """Whether this process may start worker processes (a Dask worker is a daemon: it may not)."""
    return not multiprocessing.current_process().daemon


# --- SLURM ----------------------------------------------------------------------------------

def slurm_job_kwargs(settings: SlurmSettings) -> dict[str, Any]:
    """The ``dask_jobqueue`` job arguments of ``settings`` (one worker process per job)."""
    directives = list(settings.job_extra_directives)
    extra_args: list[str] = []
    if settings.gpus:
        directives.append(f"--gres=gpu:{settings.gpus}")
        extra_args += ["--resources", f"GPU={settings.gpus}"]
    kwargs: dict[str, Any] = {
        "cores": int(settings.cores), "processes": 1, "memory": settings.memory,
        "walltime": settings.walltime, "queue": settings.queue, "account": settings.account,
        "job_extra_directives": directives, "worker_extra_args": extra_args,
        # the worker's environment (WORKER_ENVIRONMENT says why), then the site's own lines
        "job_script_prologue": [f"export {key}={value}" for key, value in
                                WORKER_ENVIRONMENT.items()] + list(settings.job_script_prologue),
        "job_name": "genval",
        "local_directory": settings.local_directory, "log_directory": settings.log_directory,
        "python": settings.python,
    }
    if settings.interface is not None:
        kwargs["interface"] = settings.interface
    return kwargs


def slurm_job_script(settings: SlurmSettings, scheduler_address: str = "tcp://SCHEDULER:8786"
                     ) -> str:
    """The batch script each SLURM job of ``settings`` runs (what ``SLURMCluster.job_script()``
    shows), built offline: nothing is submitted and no scheduler is started."""
    slurm = require("dask_jobqueue.slurm", "dask", purpose="SLURM clusters")
    kwargs = slurm_job_kwargs(settings)
    kwargs.pop("interface", None)
    return str(slurm.SLURMJob(scheduler=scheduler_address, name="genval-worker",
                              **kwargs).job_script())


# --- the executor ---------------------------------------------------------------------------

class Executor:
    """An open Dask client, the cluster it started (if any) and genval's task submission.

    Build one with :func:`open_executor`; it closes what it started on :meth:`close` or on
    leaving a ``with`` block. Pass it as ``scheduler=`` to run several calls on one cluster.

    Args:
        client: a ``distributed.Client``.
        cluster: the cluster this executor started and must close (None: not ours).
        settings: the :class:`ComputeSettings` it was opened with (``retries`` of the tasks,
            ``train_shards``).
        expected_workers: workers the cluster is meant to have (SLURM jobs may still queue).
        expected_gpus: GPUs those workers will offer.
        owns_client: close the client on :meth:`close`.
    """

    def __init__(self, client: Any, cluster: Any = None, *,
                 settings: ComputeSettings | None = None, expected_workers: int | None = None,
                 expected_gpus: int = 0, owns_client: bool = True) -> None:
        self.client, self.cluster = client, cluster
        self.settings = settings or ComputeSettings()
        self.retries = int(self.settings.retries)
        self._expected = expected_workers
        self._expected_gpus = int(expected_gpus)
        self._owns_client = owns_client

    # -- what the cluster offers --------------------------------------------------------
    def _workers(self) -> dict[str, Any]:
        return dict(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    @property
    def n_workers(self) -> int:
        """Workers connected now, or the expected number when more are still starting."""
        return max(len(self._workers()), int(self._expected or 0), 1)

    @property
    def n_threads(self) -> int:
        """Tasks the cluster runs at once (worker threads, at least one per expected worker)."""
        threads = sum(int(w.get("nthreads", 1)) for w in self._workers().values())
        return max(threads, int(self._expected or 0), 1)

    def n_gpus(self) -> int:
        """Workers' ``GPU`` resources in total (SLURM ``gpus: 1``, ``dask worker --resources``),
        counting those of SLURM jobs still in the queue."""
        have = sum(int(w.get("resources", {}).get("GPU", 0)) for w in self._workers().values())
        return max(have, self._expected_gpus)

    # -- tasks ----------------------------------------------------------------------------
    def share(self, value: Any) -> Any:
        """``value`` as a future to pass to many tasks: each worker fetches it once.

        Not ``scatter``: scattered data is lost with the worker that holds it (and a broadcast
        to a dying worker never returns), while a task's result is recomputed by the scheduler
        from the task itself, so a killed worker costs time, never the run.
        """
        with warnings.catch_warnings():
            # the value travels in the task itself by design (that is what makes it durable)
            warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
            return self.client.submit(_identity, value, pure=False, retries=self.retries)

    def submit(self, fn: Callable[..., Any], *args: Any,
               resources: dict[str, float] | None = None, **kwargs: Any) -> Any:
        """Queue ``fn(*args, **kwargs)`` on the cluster (never cached: ``pure=False``)."""
        return self.client.submit(fn, *args, pure=False, retries=self.retries,
                                  resources=resources, **kwargs)

    def gather(self, futures: Sequence[Any], *, on_done: Callable[[int, Any], None] | None = None
               ) -> list[Any]:
        """The results of ``futures`` in their order; ``on_done(i, result)`` is called as each
        finishes (progress). A task that failed raises here, after the others are cancelled."""
        distributed = require("distributed", "dask", purpose="Dask executors")
        position = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        try:
            for future in distributed.as_completed(list(futures)):
                i = position[future.key]
                results[i] = future.result()
                if on_done is not None:
                    on_done(i, results[i])
        except BaseException:
            self.client.cancel(list(futures))
            raise
        return results

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the client and the cluster this executor started."""
        if self._owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Executor({self.client.scheduler.address}, {self.n_workers} workers)"


def _identity(value: Any) -> Any:
    """A shared input as a task result (:meth:`Executor.share`)."""
    return value


SchedulerLike = Any
"""What ``scheduler=`` accepts: None or ``"local"`` (this process), a scheduler name or
address, a :class:`ComputeSettings`, an open :class:`Executor` or a ``distributed.Client``."""


#: Environment of every Dask worker process genval starts. Dask's nanny sets glibc's
#: ``MALLOC_TRIM_THRESHOLD_``, and setting any malloc threshold turns off glibc's dynamic mmap
#: threshold: every array above 128 KiB is then mapped and page-faulted anew. A toy fit
#: allocates tens of such temporaries, and on two cores the Dask workers spent 40 % of their
#: CPU in the kernel (15 s of 39 s per worker for 200 toys, against 4 s with this setting) and
#: ran the toys 1.4-1.5x slower than forked workers. 32 MiB is the largest value glibc's
#: dynamic threshold would reach by itself.
WORKER_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "33554432"}


def _local_cluster(settings: ComputeSettings) -> Any:
    distributed = require("distributed", "dask", purpose="the processes scheduler")
    dask = require("dask", "dask", purpose="the processes scheduler")
    n = int(settings.n_workers or max(1, available_cores() // settings.threads_per_worker))
    # The nannies read their workers' environment when they are created (and reuse it when a
    # worker is restarted): the setting only needs to hold while the cluster starts.
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{key}": value
                          for key, value in WORKER_ENVIRONMENT.items()}):
        # The scheduler's small HTTP server (health checks) on a free port of 127.0.0.1, the
        # dashboard off: with ``dashboard_address=None`` that server still asks for port 8787,
        # and a second cluster (another notebook, an overlapping test session) then makes
        # Dask warn that the port is taken.
        return distributed.LocalCluster(
            n_workers=n, threads_per_worker=int(settings.threads_per_worker), processes=True,
            host="127.0.0.1", dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False}, silence_logs=logging.ERROR)


def _slurm_cluster(settings: SlurmSettings) -> Any:
    jobqueue = require("dask_jobqueue", "dask", purpose="the slurm scheduler")
    cluster = jobqueue.SLURMCluster(**slurm_job_kwargs(settings),
                                    scheduler_options={"dashboard_address": None})
    cluster.scale(jobs=int(settings.jobs))
    return cluster


@contextlib.contextmanager
def open_executor(scheduler: SchedulerLike = None, *, settings: ComputeSettings | None = None
                  ) -> Iterator[Executor | None]:
    """The executor ``scheduler`` names, for the ``with`` block (None for ``"local"``).

    Args:
        scheduler: None or ``"local"``; ``"processes"``; ``"tcp://HOST:PORT"``; ``"slurm"``;
            a :class:`ComputeSettings`; or an open :class:`Executor` or ``distributed.Client``
            (used as is and left open).
        settings: sizes of the cluster for a scheduler given by name (``n_workers``,
            ``threads_per_worker``, ``retries``, ``slurm``); defaults when None.

    Raises:
        InputError: an unknown scheduler.
        MissingDependencyError: Dask (``genval[dask]``) is not installed.
    """
    if isinstance(scheduler, Executor):
        yield scheduler
        return
    if scheduler is not None and type(scheduler).__name__ == "Client":
        yield Executor(scheduler, settings=settings, owns_client=False)
        return
    if isinstance(scheduler, ComputeSettings):
        settings, scheduler = scheduler, scheduler.scheduler
    settings = settings or ComputeSettings()
    name = check_scheduler(scheduler if scheduler is not None else settings.scheduler)
    if name == "local":
        yield None
        return
    distributed = require("distributed", "dask", purpose=f"the {name} scheduler")
    settings = replace(settings, scheduler=name)
    gpus = 0
    if name == "processes":
        cluster = _local_cluster(settings)
        expected = len(cluster.workers)
    elif name == "slurm":
        cluster = _slurm_cluster(settings.slurm)
        expected = int(settings.slurm.jobs)
        gpus = expected * int(settings.slurm.gpus)
    else:
        cluster, expected = None, None
    try:
        client = distributed.Client(cluster if cluster is not None else name)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    executor = Executor(client, cluster, settings=settings, expected_workers=expected,
                        expected_gpus=gpus)
    try:
        if name == "slurm":
            client.wait_for_workers(1, timeout=settings.slurm.wait_seconds)
        yield executor
    finally:
        executor.close()
