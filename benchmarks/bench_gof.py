"""Benchmark: 1000 null toys of the learned likelihood-ratio test (paper Eq. 5).

N = 20,000 test events, M = 60 members, K = 100 kernels (σ = 0.05), toys from one pool of
10 N events drawn from f(x; ŵ) with the exact signed-mixture sampler (pool time included).
The members are Gaussians jittered by 5 % around the paper's toy density (as in
``bench_wifi.py``), ŵ and Cov(ŵ) from ``genval.wifi.fit_weights`` on 20,000 independent events.
Also times the paper code's anchor: one full-batch Adam step on the alternative's objective
(the paper fits every toy with up to 50,000 such steps).

Guard against slow products (issue 15): after the toys, ``--guard-toys`` toys (default 10) are
fitted again in this process on one BLAS thread, timing every full-size float32 Hessian call
(``_hessian`` of the Newton solver), and a plain float32 ``XᵀX`` of the same shape on random
normal numbers is timed beside it; the JSON reports both medians and their ratio (≤ 2 is the
target). Subnormal operands make the Hessian 10-100x slower than the plain product on Intel
cores; the machine is reported with every figure: processor model and vendor from
/proc/cpuinfo, the BLAS library, its version and kernel (threadpoolctl's ``architecture``,
OpenBLAS's corename).

Pool share (issue 10, docs/method.md): ``--pool-share RATIO,POOLS,TOYS`` draws POOLS
independent pools of RATIO x N events and fits TOYS toys on each; at the pooled null's
quantiles 0.5, 0.16 and 0.05 it reports the spread of the tail fraction between the pools,
the binomial spread it would have without a pool effect, and the pool's own share τ.

Run: python benchmarks/bench_gof.py [--toys 1000] [--jobs 1] [--hessian float32]
     python benchmarks/bench_gof.py --toys 1 --no-adam     # the guard alone, quickly
     python benchmarks/bench_gof.py --pool-share 5,10,200 --pool-share 10,10,200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np

from genval.gof import (
    Constraint,
    GoFSettings,
    KernelBasis,
    draw_pool,
    goodness_of_fit,
    minimize_convex,
    run_toys,
)
from genval.gof._blas import limit_blas_threads
from genval.members import GaussianMembers, log_density_matrix
from genval.sampling import sample_mixture
from genval.wifi import fit_weights

JITTER = 0.5


def make_problem(n_members: int, n_test: int, n_kernels: int, seed: int):
    rng = np.random.default_rng(seed)
    mu, sd = np.array([-0.5, 0.6]), np.array([0.25, 0.4])
    means = mu + JITTER * sd * rng.standard_normal((n_members, 2))
    variances = (sd * (1 + JITTER * rng.standard_normal((n_members, 2)))) ** 2
    members = GaussianMembers(means, variances)
    w_true = rng.dirichlet(np.full(n_members, 5.0))  # truth inside the ensemble's span

    def truth(n: int) -> np.ndarray:
        return sample_mixture(members, w_true, n, rng).x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-duplicate members: reported by the fit
        fit = fit_weights(log_density_matrix(members, truth(20_000)), log=True)
    x_test = truth(n_test)
    basis = KernelBasis.from_events(truth(20_000), n_kernels, 0.05, seed=rng)
    return members, fit, x_test, basis


def adam_step_time(members, fit, x_test, basis, repeat: int = 20) -> float:
    """Seconds per full-batch Adam step on NLL1 (the paper code's per-toy optimiser)."""
    import torch

    F = torch.tensor(np.exp(log_density_matrix(members, x_test)))
    G = torch.tensor(basis.pdf(x_test))
    w = torch.tensor(fit.weights, requires_grad=True)
    a = torch.zeros(G.shape[1], dtype=torch.float64, requires_grad=True)
    cinv = torch.tensor(np.linalg.pinv(fit.cov))
    w_hat = torch.tensor(fit.weights)
    opt = torch.optim.Adam([w, a], lr=1e-4)
    n = F.shape[0]

    def step() -> None:
        opt.zero_grad()
        d = w - w_hat
        loss = (-torch.log(F @ w + G @ a).sum() + n * a.sum() + 1e-6 * n * (a * a).sum()
                + 0.5 * d @ cinv @ d + n * (w.sum() - 1) ** 2)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat


def processor() -> dict[str, str | None]:
    """Processor model and vendor (Linux /proc/cpuinfo; platform module elsewhere)."""
    info: dict[str, str | None] = {"model": None, "vendor": None}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and info["model"] is None:
                    info["model"] = value.strip()
                elif key == "vendor_id" and info["vendor"] is None:
                    info["vendor"] = value.strip()
    except OSError:
        pass
    info["model"] = info["model"] or platform.processor() or platform.machine()
    return info


def blas() -> list[dict[str, str | None]]:
    """BLAS libraries loaded in this process (threadpoolctl), with version and kernel."""
    from threadpoolctl import threadpool_info

    return [{"library": os.path.basename(entry["filepath"]),
             "config": " ".join(str(entry.get(k)) for k in ("internal_api", "version",
                                                              "threading_layer")),
             "architecture": entry.get("architecture")}
            for entry in threadpool_info() if entry["user_api"] == "blas"]


def hessian_guard(members, fit, basis, n_test: int, n_toys: int, seed: int,
                  repeat: int = 15) -> dict:
    """Median full-size float32 Hessian call of the toy fits vs plain float32 XᵀX, same shape.

    The toys are refitted in this process on one BLAS thread, with the solver's ``_hessian``
    wrapped by a timer (its module found through ``minimize_convex``, wherever it lives).
    """
    solver = minimize_convex.__globals__
    inner = solver["_hessian"]
    calls: dict[tuple[int, int], list[float]] = {}

    def timed(a, r, q, dtype, stride=1, a_cast=None):
        start = time.perf_counter()
        h = inner(a, r, q, dtype, stride, a_cast)
        if stride == 1 and np.dtype(dtype) == np.float32:
            calls.setdefault(a.shape, []).append(time.perf_counter() - start)
        return h

    constraint = Constraint.from_fit(fit)
    pool = draw_pool(members, constraint, basis, max(10 * n_test, 20_000), seed)
    solver["_hessian"] = timed
    try:
        with limit_blas_threads(1):
            run_toys(pool, np.arange(n_toys), seed=seed, n_test=n_test, n_jobs=1, tol=1e-8)
    finally:
        solver["_hessian"] = inner
    out = {}
    rng = np.random.default_rng(seed)
    with limit_blas_threads(1):
        for shape, times in sorted(calls.items()):
            x = rng.standard_normal(shape).astype(np.float32)
            plain = []
            for _ in range(repeat):
                start = time.perf_counter()
                _ = x.T @ x
                plain.append(time.perf_counter() - start)
            med_h, med_p = float(np.median(times)), float(np.median(plain))
            out[f"{shape[0]}x{shape[1]}"] = {
                "calls": len(times), "hessian_median_ms": round(1e3 * med_h, 3),
                "plain_float32_XtX_median_ms": round(1e3 * med_p, 3),
                "ratio": round(med_h / med_p, 2)}
    return out


def pool_share(members, fit, basis, n_test: int, ratio: int, n_pools: int, toys: int,
               seed: int, jobs: int) -> dict:
    """Spread of the toys' tail fraction between independent pools of ``ratio`` x N events.

    At the pooled null's quantiles ``q``: the between-pool standard deviation of the tail
    fraction, the binomial one ``(q (1 − q) / toys)^{1/2}``, and the pool's own share
    ``τ = (sd² − binomial²)^{1/2}`` per pool; ``ratio_at_B1000`` is the total error of p over
    the binomial one with B = 1000 toys on one such pool, ``ratio_default_pools`` with B = 1000
    toys spread over the default number of pools.
    """
    constraint = Constraint.from_fit(fit)
    t_all = []
    for j in range(n_pools):
        pool = draw_pool(members, constraint, basis, ratio * n_test, seed + 1, pool=j + 1)
        t_all.append(run_toys(pool, np.arange(toys) + 100_000 * j, seed=seed, n_test=n_test,
                              n_jobs=jobs, tol=1e-8).t)
        del pool
    t = np.array(t_all)
    default_pools = GoFSettings().n_pools
    out: dict = {"ratio": ratio, "n_pools": n_pools, "toys_per_pool": toys,
                 "pool_mean_t": [round(float(v), 3) for v in t.mean(1)],
                 "t_sd": round(float(t.std()), 3), "levels": {}}
    for q in (0.5, 0.16, 0.05):
        above = (t >= np.quantile(t, 1 - q)).mean(1)
        sd, binom = float(above.std(ddof=1)), float(np.sqrt(q * (1 - q) / toys))
        tau2, b1000 = max(sd ** 2 - binom ** 2, 0.0), q * (1 - q) / 1000
        out["levels"][str(q)] = {
            "between_pool_sd": round(sd, 4), "binomial_sd": round(binom, 4),
            "tau": round(float(np.sqrt(tau2)), 4),
            "ratio_at_B1000": round(float(np.sqrt((tau2 + b1000) / b1000)), 2),
            "ratio_default_pools": round(float(np.sqrt((tau2 / default_pools + b1000) / b1000)),
                                         2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toys", type=int, default=1000)
    parser.add_argument("--members", type=int, default=60)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--kernels", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=-1)
    parser.add_argument("--hessian", choices=["float32", "float64"], default="float32")
    parser.add_argument("--centre", choices=["redrawn", "fixed"], default="redrawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-adam", action="store_true")
    parser.add_argument("--pool-share", action="append", default=[],
                        metavar="RATIO,POOLS,TOYS", help="measure the pools' share of p")
    parser.add_argument("--guard-toys", type=int, default=10,
                        help="toys refitted in-process to time the Hessian calls (0: skip)")
    args = parser.parse_args()
    members, fit, x_test, basis = make_problem(args.members, args.events, args.kernels,
                                               args.seed)
    if args.pool_share:
        for spec in args.pool_share:
            ratio, pools, toys = (int(v) for v in spec.split(","))
            print(json.dumps(pool_share(members, fit, basis, args.events, ratio, pools, toys,
                                        args.seed, args.jobs)), flush=True)
        return
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    res = goodness_of_fit(members, fit, x_test, basis, n_toys=args.toys, seed=args.seed,
                          n_jobs=args.jobs, hessian_dtype=getattr(np, args.hessian),
                          centre=args.centre)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    adam = None if args.no_adam else adam_step_time(members, fit, x_test, basis)
    guard = (hessian_guard(members, fit, basis, args.events, args.guard_toys, args.seed)
             if args.guard_toys > 0 else None)
    out = {
        "toys": args.toys, "events": args.events, "members": args.members,
        "kernels": args.kernels, "free_weight_directions": int(res.observed.phi0.size - 1
                                                               - fit.n_unidentified),
        "jobs": args.jobs, "hessian": args.hessian, "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "timings_s": {k: round(v, 2) for k, v in res.timings.items()},
        "ms_per_toy": round(1e3 * res.timings["toys"] / args.toys, 2),
        "n_failed": res.n_failed, "pool_size": res.pool_size, "n_pools": res.n_pools,
        "p_interval": res.p_interval, "p_interval_total": res.p_interval_total,
        "adam_step_ms": None if adam is None else round(1e3 * adam, 2),
        "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "hessian_vs_plain_float32_XtX": guard,
        "cpus": os.cpu_count(), "processor": processor(), "blas": blas(),
        "numpy": np.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(out, indent=1))
    print(res)


if __name__ == "__main__":
    main()
