"""Calibration study of the learned likelihood-ratio GoF test (paper Eq. 5, Step 4).

Truth inside the ensemble's span: M Gaussian members, data from a fixed mixture of them.
Each experiment draws a fresh weight-fit sample (ŵ, Cov(ŵ) from genval.wifi.fit_weights), a
fresh held-out sample for the kernel centres and a fresh test set, then calibrates t with toys
under both constraint-centre treatments ("redrawn": z₀ ~ N(0, C_r) per toy; "fixed": z₀ = 0)
and for the frozen-weights variant. Under a calibrated test the p-values are uniform; this is
checked with a Kolmogorov–Smirnov test.

Run: python studies/calibration_gof.py [--experiments 100] [--toys 200] [--out studies/results]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats

from genval.errors import FitError, NegativeDensityWarning
from genval.gof import KernelBasis, goodness_of_fit
from genval.members import GaussianMembers, log_density_matrix
from genval.sampling import sample_mixture
from genval.wifi import fit_weights

MU, SD = np.array([-0.5, 0.6]), np.array([0.25, 0.4])  # the paper's toy density, Eq. (6)


def ensemble(n_members: int, seed: int) -> tuple[GaussianMembers, np.ndarray]:
    """Members scattered around the paper's density, and the true weights (a positive mix)."""
    rng = np.random.default_rng(seed)
    means = MU + 0.3 * SD * rng.standard_normal((n_members, 2))
    variances = (SD * (1 + 0.2 * rng.standard_normal((n_members, 2)))) ** 2
    return GaussianMembers(means, variances), rng.dirichlet(np.full(n_members, 5.0))


def experiment(members: GaussianMembers, w_true: np.ndarray, seed: int, args: argparse.Namespace
               ) -> dict[str, float]:
    rng = np.random.default_rng([seed, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rare ill-conditioned fit is part of the study
        fit = fit_weights(log_density_matrix(
            members, sample_mixture(members, w_true, args.fit_events, rng).x), log=True)
    basis = KernelBasis.from_events(sample_mixture(members, w_true, 2000, rng).x,
                                    args.kernels, args.sigma, seed=rng)
    x_test = sample_mixture(members, w_true, args.test_events, rng).x
    out: dict[str, float] = {"sum_abs_w": float(np.abs(fit.weights).sum())}
    for name, kw in (("redrawn", {"centre": "redrawn"}), ("fixed", {"centre": "fixed"}),
                     ("frozen", {"variant": "frozen"})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NegativeDensityWarning)
            try:
                res = goodness_of_fit(members, fit, x_test, basis, n_toys=args.toys,
                                      seed=seed, n_jobs=-1, **kw)
            except FitError as exc:  # f(x; ŵ) <= 0 at a test event and no feasible φ
                out[f"undefined_{name}"] = str(exc)
                continue
        if any(issubclass(w.category, NegativeDensityWarning) for w in caught):
            out["negative_at_w_hat"] = 1.0  # profiled from a feasible φ (LP start)
        out[f"p_{name}"] = res.p_value
        out[f"t_{name}"] = res.t_obs
        out[f"failed_{name}"] = res.n_failed
        out[f"median_tnull_{name}"] = float(np.median(res.t_null))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--toys", type=int, default=200)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--fit-events", type=int, default=4000)
    parser.add_argument("--test-events", type=int, default=2000)
    parser.add_argument("--kernels", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    args = parser.parse_args()
    members, w_true = ensemble(args.members, args.seed)
    start = time.perf_counter()
    rows = []
    for e in range(args.experiments):
        rows.append(experiment(members, w_true, args.seed * 1000 + e, args))
        if (e + 1) % 10 == 0:
            print(f"{e + 1} experiments, {time.perf_counter() - start:.0f} s", flush=True)
    summary: dict[str, object] = {
        "experiments_with_f_hat_negative_at_test_events":
            sum("negative_at_w_hat" in r for r in rows)}
    for name in ("redrawn", "fixed", "frozen"):
        rows_ok = [r for r in rows if f"p_{name}" in r]
        p = np.array([r[f"p_{name}"] for r in rows_ok])
        ks = scipy.stats.kstest(p, "uniform")
        summary[name] = {
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "mean_p": float(p.mean()), "frac_p_below_0.05": float((p < 0.05).mean()),
            "frac_p_below_0.01": float((p < 0.01).mean()),
            "failed_toys": int(sum(r[f"failed_{name}"] for r in rows_ok)),
            "n_experiments": int(p.size), "undefined": len(rows) - len(rows_ok),
        }
    record = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "truth_weights": w_true.tolist(), "summary": summary, "experiments": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"calibration_gof{'_' + args.tag if args.tag else ''}.json"
    (args.out / name).write_text(json.dumps(record, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
