"""Benchmark: the w_i f_i weight fit (paper Eq. 1) with its sandwich covariance (Eq. 2).

N = 100,000 events, M = 60 members, float64. The members are Gaussians jittered around the
paper's toy density (as an ensemble trained on one data set would be), so the Hessian is
realistically ill-conditioned. Compared with a plain numpy Newton (explicit Hessian,
`np.linalg.solve`, halving line search, per-event score matrix for U). genval's fit includes the
leverage check and, on this ensemble, the ridge on its weakly identified directions
(:mod:`genval.identification`), so the two no longer estimate the same weights.

Run: python benchmarks/bench_wifi.py [--events 100000] [--members 60] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np

from genval.members import GaussianMembers
from genval.sampling import sample_mixture
from genval.wifi import fit_weights


def make_instance(n_events: int, n_members: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu, sd = np.array([-0.5, 0.6]), np.array([0.25, 0.4])
    means = mu + 0.05 * sd * rng.standard_normal((n_members, 2))
    variances = (sd * (1 + 0.05 * rng.standard_normal((n_members, 2)))) ** 2
    members = GaussianMembers(means, variances)
    truth = rng.dirichlet(np.ones(n_members))
    return sample_mixture(members, truth, n_events, rng).log_f


def plain_newton(F: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, int]:
    """A textbook Newton: the reference point for 'a plain numpy Newton'."""
    n, m = F.shape
    w = np.full(m, 1.0 / m)
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        f = F @ w
        grad = 1.0 - (F / f[:, None]).mean(axis=0)
        hess = (F / f[:, None] ** 2).T @ F / n
        step = np.linalg.solve(hess, -grad)
        alpha = 1.0
        while np.any(F @ (w + alpha * step) <= 0):
            alpha /= 2
        w = w + alpha * step
        if np.max(np.abs(grad)) < 1e-10:
            break
    scores = 1.0 - F / (F @ w)[:, None]
    u = np.cov(scores, rowvar=False, ddof=0)
    v_inv = np.linalg.pinv(hess)
    return w, v_inv @ u @ v_inv / n, it


def timed(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    log_f = make_instance(args.events, args.members, args.seed)
    F = np.exp(log_f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t_ours, fit = timed(lambda: fit_weights(F), args.repeat)
        t_plain, (w_plain, _, it_plain) = timed(lambda: plain_newton(F), args.repeat)
    print(json.dumps({
        "benchmark": "wifi_fit", "events": args.events, "members": args.members,
        "genval_fit_s": round(t_ours, 4), "genval_newton_iterations": fit.n_iter,
        "plain_numpy_newton_s": round(t_plain, 4), "plain_iterations": it_plain,
        "speedup": round(t_plain / t_ours, 2),
        "max_abs_weight_difference": float(np.max(np.abs(fit.weights - w_plain))),
        "hessian_condition": fit.hessian_condition, "converged": fit.converged,
        "ridge": fit.ridge, "n_regularised": fit.n_regularised, "leverage": fit.leverage,
        "warnings": sorted({type(w.message).__name__ for w in caught}),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2))


if __name__ == "__main__":
    main()
