"""Benchmark: scale-out on Dask (issue 16) -- toys on a LocalCluster against the fork pool, and
how the GoF stage degrades when another process competes for the cores.

``toys`` (default): the problem of ``bench_gof.py`` (N = 20,000 test events, M = 60 Gaussian
members jittered around the paper's toy, K = 100 kernels of σ = 0.05, 4 pools of 5 N).
The pools are drawn once (a warm-up, not timed); then ``--toys`` toys (1000) are timed side by
side in one run, in alternating rounds, on the same cores:

* ``fork``: ``goodness_of_fit(n_jobs=CORES)``, today's local executor (forked workers);
* ``dask``: a ``distributed.LocalCluster`` of CORES worker processes with one thread each
  (127.0.0.1, no dashboard), started before the clock; sending the pools to the workers is
  timed. Target: dask ≤ 1.15 x fork.

Both must give the same toys bit for bit, as must the serial run (``n_jobs=1``, once) and
toy ranges run separately and merged (``merge_results``); the JSON says whether they do.

``busy``: the demo's GoF stage (``quick`` preset; ``--run-dir`` reuses a demo run whose fit has
finished, otherwise one is made first, minutes) timed quiet and with one competing busy
process (a Python spin loop) on the same cores, each in a fresh subprocess; target ≤ 2.5 x
the quiet time. ``--wait-policy`` adds rounds with ``OMP_WAIT_POLICY=PASSIVE`` (torch's
OpenMP threads sleep instead of spinning while they wait), to see whether spinning matters.

Timings are only meaningful on a quiet machine: the JSON records the load average before and
after each measurement.

Run: python benchmarks/bench_dask.py toys [--toys 1000] [--rounds 2] [--cores 2]
     python benchmarks/bench_dask.py busy [--run-dir DIR] [--rounds 2] [--wait-policy]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gof import blas, make_problem, processor  # noqa: E402
from genval.compute import ComputeSettings, open_executor  # noqa: E402
from genval.gof import GoFSettings, goodness_of_fit, merge_results, prepare  # noqa: E402


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _same(a, b) -> bool:
    return bool(a.t_obs == b.t_obs and np.array_equal(a.t_null, b.t_null)
                and np.array_equal(a.toy_index, b.toy_index)
                and np.array_equal(a.toy_converged, b.toy_converged)
                and np.array_equal(a.toy_size, b.toy_size))


def bench_toys(args: argparse.Namespace) -> dict:
    members, fit, x_test, basis = make_problem(args.members, args.events, args.kernels,
                                               args.seed)
    settings = GoFSettings(n_jobs=args.cores)
    prepared = prepare(members, x_test, basis, args.seed, settings=settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # negative-mass notes of jittered members

        def run(**kw):
            return goodness_of_fit(members, fit, x_test, basis, seed=args.seed,
                                   settings=settings, prepared=prepared, **kw)

        run(n_toys=settings.n_pools)  # draws and keeps every pool: not timed
        out: dict = {"toys": args.toys, "cores": args.cores, "members": args.members,
                     "events": args.events, "kernels": args.kernels, "rounds": []}
        with open_executor(ComputeSettings(scheduler="processes", n_workers=args.cores,
                                           threads_per_worker=1)) as cluster:
            results = {}
            for r in range(args.rounds):
                row = {}
                for name in ("fork", "dask") if r % 2 == 0 else ("dask", "fork"):
                    load = _load()
                    start = time.perf_counter()
                    res = run(n_toys=args.toys, **({"scheduler": cluster} if name == "dask"
                                                   else {}))
                    row[name] = {"wall_s": round(time.perf_counter() - start, 2),
                                 "toys_s": round(res.timings["toys"], 2),
                                 "load_before_after": [load, _load()]}
                    results[name] = res
                row["dask_over_fork"] = round(row["dask"]["wall_s"] / row["fork"]["wall_s"], 3)
                out["rounds"].append(row)
                print(json.dumps(row), flush=True)
            half = args.toys // 2
            parts = merge_results([run(n_toys=args.toys - half, first_toy=half,
                                       scheduler=cluster),
                                   run(n_toys=half, n_jobs=args.cores)])
        serial = run(n_toys=args.toys, n_jobs=1)
    ratios = [row["dask_over_fork"] for row in out["rounds"]]
    out["dask_over_fork_best"] = min(ratios)
    out["dask_over_fork_median"] = float(np.median(ratios))
    out["identical"] = {"fork_vs_serial": _same(results["fork"], serial),
                        "dask_vs_serial": _same(results["dask"], serial),
                        "parts_merged_vs_serial": _same(parts, serial)}
    return out


_STAGE = """
import sys, time, warnings
warnings.simplefilter("ignore")
from genval.pipeline import run_stage
from genval.rundir import RunDir
start = time.perf_counter()
run_stage(RunDir.open(sys.argv[1]), "gof", force=True)
print(time.perf_counter() - start)
"""


def _gof_stage_seconds(run_dir: Path, env: dict[str, str], busy: bool) -> dict:
    spinner = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None)
    try:
        load = _load()
        done = subprocess.run([sys.executable, "-c", _STAGE, str(run_dir)], env=env,
                              check=True, capture_output=True, text=True)
        return {"seconds": round(float(done.stdout.strip().splitlines()[-1]), 2),
                "load_before_after": [load, _load()]}
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def bench_busy(args: argparse.Namespace) -> dict:
    from genval.config import with_overrides
    from genval.pipeline import run_pipeline
    from genval.presets import preset

    run_dir = Path(args.run_dir or "bench-dask-demo")
    config = with_overrides(preset("quick"), {"quiet": True})
    run_pipeline(config, run_dir=run_dir, stages=["split", "train", "fit"])
    policies = [None, "PASSIVE"] if args.wait_policy else [None]
    out: dict = {"run_dir": str(run_dir), "rounds": []}
    for _ in range(args.rounds):
        for policy in policies:
            env = dict(os.environ)
            if policy is not None:
                env["OMP_WAIT_POLICY"] = policy
            quiet = _gof_stage_seconds(run_dir, env, busy=False)
            busy = _gof_stage_seconds(run_dir, env, busy=True)
            row = {"omp_wait_policy": policy or "default", "quiet": quiet, "busy": busy,
                   "busy_over_quiet": round(busy["seconds"] / quiet["seconds"], 2)}
            out["rounds"].append(row)
            print(json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["toys", "busy"], default="toys")
    parser.add_argument("--toys", type=int, default=1000)
    parser.add_argument("--members", type=int, default=60)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--kernels", type=int, default=100)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default=None, help="busy: a quick-demo run directory")
    parser.add_argument("--wait-policy", action="store_true",
                        help="busy: also rounds with OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args()
    out = bench_toys(args) if args.what == "toys" else bench_busy(args)
    out.update({"cpus": os.cpu_count(), "processor": processor(), "blas": blas(),
                "date": time.strftime("%Y-%m-%d %H:%M")})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
