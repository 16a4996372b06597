"""Conditional ensembles with a known conditional truth: calibration, power, coverage, norms.

The truth: a context c from a falling spectrum, c ~ Exp(1), and x | c in 2D a known mixture
of M conditional Gaussians N(μ_k(c), Σ_k(c)) (means drifting with c, widths growing with c),
scattered around the paper's toy density at c = 0. The ensemble is those M members, so the
truth lies in its span (weights w_true, a Dirichlet draw) and the test is calibrated exactly
when its p-values are uniform.

Per experiment: a fresh weight-fit sample (ŵ and the sandwich Cov(ŵ) on conditional rows,
shared weights, and per-bin weights), fresh kernel centres (one basis per context bin, σ in
units of the bin's spread of x: ``genval.gof.bin_kernel_bases``), a fresh test set (x_n, c_n);
the conditional test (``genval.gof.conditional_goodness_of_fit``) in context bins
``[0, 0.4, 0.9, 1.6, inf)``, combined by the sum of the bins' t and by the
look-elsewhere-corrected smallest p. Checks:

* null: p per bin, combined and LEE uniform (KS over the experiments), shared and per-bin fits;
* power: the same test events with a width change of ``--distortion`` (5 %) in the top context
  bin only, tested by the binned conditional test, the conditional test in one bin, and the
  unconditional test on x alone (members = the marginals ∫ f_k(x | c) p(c) dc, by quadrature
  over the known p(c)); the per-bin Z should point to the top bin. ``--follow-context``: the
  conditional tests' kernels are Gaussians in the residual of x given c
  (``genval.gof.ContextKernels``);
* coverage of the Eq. (3) band: the conditional density f(x | c; ŵ) ± σ against the truth at
  random (x, c), the fraction within 1σ;
* every member integrates to one in x for fixed contexts (grid quadrature).

Run: python studies/conditional.py [--experiments 100] [--toys 200] [--out studies/results]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special
import scipy.stats

from genval.conditional import ContextBins, fit_conditional_weights, sample_conditional_mixture
from genval.errors import FitError
from genval.gof import (
    ContextKernels,
    KernelBasis,
    bin_kernel_bases,
    conditional_goodness_of_fit,
    goodness_of_fit,
)
from genval.members import CallableMembers, ConditionalGaussianMembers, log_density_matrix
from genval.wifi import fit_weights

MU, SD = np.array([-0.5, 0.6]), np.array([0.25, 0.4])  # the paper's toy density, Eq. (6)
DRIFT = np.array([0.3, -0.2])  # dμ/dc
GROWTH = np.array([0.3, 0.15])  # relative width growth per unit c
EDGES = [0.0, 0.4, 0.9, 1.6, np.inf]  # about 33 / 26 / 19 / 20 % of c ~ Exp(1)


def ensemble(n_members: int, seed: int) -> tuple[ConditionalGaussianMembers, np.ndarray,
                                                 dict[str, np.ndarray]]:
    """M conditional Gaussians scattered around the truth's shape, and the true weights."""
    rng = np.random.default_rng(seed)
    offset = 0.3 * SD * rng.standard_normal((n_members, 2))
    drift = DRIFT * (1 + 0.2 * rng.standard_normal((n_members, 2)))
    width = 1 + 0.2 * rng.standard_normal((n_members, 2))
    growth = GROWTH * (1 + 0.2 * rng.standard_normal((n_members, 2)))
    params = {"offset": offset, "drift": drift, "width": width, "growth": growth}
    return conditional_gaussians(params), rng.dirichlet(np.full(n_members, 5.0)), params


def conditional_gaussians(params: dict[str, np.ndarray], width_factor: float = 1.0
                          ) -> ConditionalGaussianMembers:
    off, drift, width, growth = (params[k] for k in ("offset", "drift", "width", "growth"))
    m = off.shape[0]

    def mean(c: np.ndarray) -> np.ndarray:
        return MU + off[:, None, :] + drift[:, None, :] * c[None, :, :1]

    def var(c: np.ndarray) -> np.ndarray:
        sd = SD * width[:, None, :] * (1 + growth[:, None, :] * c[None, :, :1])
        return (width_factor * sd) ** 2

    return ConditionalGaussianMembers(mean, var, n_members=m, n_features=2, n_context=1)


def draw(members: ConditionalGaussianMembers, w: np.ndarray, n: int, rng: np.random.Generator
         ) -> tuple[np.ndarray, np.ndarray]:
    c = rng.exponential(1.0, size=(n, 1))
    return sample_conditional_mixture(members, w, c, rng).x, c


def marginal_members(members: ConditionalGaussianMembers, n_nodes: int = 64
                     ) -> CallableMembers:
    """The members' marginals ∫ f_k(x | c) e^{-c} dc (Gauss–Laguerre), sampled via c ~ Exp(1)."""
    nodes, weights = np.polynomial.laguerre.laggauss(n_nodes)
    log_w = np.log(weights)

    def log_prob(k: int):
        def fn(x: np.ndarray) -> np.ndarray:
            rows = np.repeat(x, n_nodes, axis=0)
            ctx = np.tile(nodes, x.shape[0])[:, None]
            lp = members.log_prob(rows, context=ctx)[k].reshape(x.shape[0], n_nodes)
            return scipy.special.logsumexp(lp + log_w[None, :], axis=1)
        return fn

    def sampler(k: int):
        def fn(n: int, g: np.random.Generator) -> np.ndarray:
            return members.sample(n, k, g, context=g.exponential(1.0, size=(n, 1)))
        return fn

    m = members.n_members
    return CallableMembers([log_prob(k) for k in range(m)], 2, [sampler(k) for k in range(m)])


def integrals(members: ConditionalGaussianMembers) -> float:
    """Largest |∫ f_k(x | c) dx − 1| over members and contexts (2D trapezoid on a grid)."""
    worst = 0.0
    for c in (0.0, 0.7, 3.0, 8.0):
        mu = MU + DRIFT * c
        sd = SD * (1 + GROWTH * c) * 2.5
        g0 = np.linspace(mu[0] - 8 * sd[0], mu[0] + 8 * sd[0], 401)
        g1 = np.linspace(mu[1] - 8 * sd[1], mu[1] + 8 * sd[1], 401)
        xx, yy = np.meshgrid(g0, g1, indexing="ij")
        grid = np.column_stack([xx.ravel(), yy.ravel()])
        dens = np.exp(members.log_prob(grid, context=np.full((len(grid), 1), c)))
        mass = np.trapezoid(np.trapezoid(dens.reshape(-1, *xx.shape), g1, axis=2), g0, axis=1)
        worst = max(worst, float(np.abs(mass - 1).max()))
    return worst


def experiment(members: ConditionalGaussianMembers, params: dict[str, np.ndarray],
               w_true: np.ndarray, seed: int, args: argparse.Namespace,
               marginals: CallableMembers | None) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 1])
    bins = ContextBins([0], [EDGES], 1, names=["c"])
    x_fit, c_fit = draw(members, w_true, args.fit_events, rng)
    log_f = log_density_matrix(members, x_fit, c_fit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rare ill-conditioned fit is part of the study
        shared = fit_conditional_weights(log_f, bins.assign(c_fit), n_bins=bins.n_bins, log=True)
        per_bin = fit_conditional_weights(log_f, bins.assign(c_fit), n_bins=bins.n_bins,
                                          log=True, per_bin=True)
    x_k, c_k = draw(members, w_true, 4000, rng)
    bases = bin_kernel_bases(x_k, c_k, bins, args.kernels, args.sigma, seed=rng,
                             follow_context=args.follow_context)
    x_test, c_test = draw(members, w_true, args.test_events, rng)
    out: dict[str, Any] = {"sum_abs_w": float(np.abs(shared.weights).sum())}
    common = dict(n_toys=args.toys, seed=seed, n_jobs=args.jobs)
    for name, fit in (("shared", shared), ("per_bin", per_bin)):
        if args.skip_null:
            break
        try:
            res = conditional_goodness_of_fit(members, fit, x_test, c_test, bases, bins,
                                              **common)
        except FitError as exc:
            out[f"undefined_{name}"] = str(exc)
            continue
        out[f"p_bins_{name}"] = [r.p_value for r in res.per_bin]
        out[f"p_combined_{name}"] = res.combined.p_value
        out[f"p_global_{name}"] = res.p_global
        out[f"failed_{name}"] = int(res.combined.n_failed)

    # Coverage of Eq. (3) at random (x, c) of the truth: |f̂ − f_true| ≤ σ.
    x_c, c_c = draw(members, w_true, 400, rng)
    lf = log_density_matrix(members, x_c, c_c)
    truth = np.exp(lf) @ w_true
    for name, fit in (("shared", shared), ("per_bin", per_bin)):
        idx = bins.assign(c_c)
        est = fit.density(np.exp(lf), idx)
        std = fit.density_std(np.exp(lf), idx)
        out[f"covered_{name}"] = float(np.mean(np.abs(est - truth) <= std))

    if args.distortion:
        # The same test events, the top context bin's widths changed about their means.
        top = bins.assign(c_test) == bins.n_bins - 1
        distorted = x_test.copy()
        # Exact distortion of the mixture: each event's deviation from its member's mean,
        # stretched, is the same as drawing from the stretched members.
        wide = conditional_gaussians(params, 1.0 + args.distortion)
        distorted[top] = sample_conditional_mixture(wide, w_true, c_test[top],
                                                    np.random.default_rng([seed, 2])).x
        res = conditional_goodness_of_fit(members, shared, distorted, c_test, bases, bins,
                                          **common)
        # The same test without binning, and the unconditional test, with as many kernels in
        # total (σ in units of the spread of x over all held-out events).
        basis = KernelBasis.from_events(x_k, args.kernels * bins.n_bins, args.sigma,
                                        standardize=True, seed=np.random.default_rng([seed, 3]))
        one_basis = (ContextKernels.from_events(x_k, c_k, args.kernels * bins.n_bins,
                                                args.sigma, seed=np.random.default_rng([seed, 3]))
                     if args.follow_context else basis)
        one = conditional_goodness_of_fit(members, shared, distorted, c_test, one_basis,
                                          ContextBins.single(1), **common)
        # Z from the toys (at most Φ⁻¹(1 − 1/(1+B))) and, labelled as an extrapolation, from
        # the scaled χ² fitted to the same toys.
        out["power"] = {"z_bins": res.z_per_bin.tolist(), "z_combined": res.z_combined,
                        "z_global": res.z_global, "bin_min": res.bin_min,
                        "z_one_bin": one.z_combined,
                        "bound_combined": bool(res.combined.z_is_bound),
                        "zchi2_bins": [r.z_chi2 for r in res.per_bin],
                        "zchi2_combined": res.combined.z_chi2,
                        "zchi2_one_bin": one.combined.z_chi2}
        if marginals is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit_m = fit_weights(log_density_matrix(marginals, x_fit), log=True)
            unc = goodness_of_fit(marginals, fit_m, distorted, basis, n_toys=args.toys,
                                  seed=seed, n_jobs=args.jobs, n_pools=1)
            out["power"]["z_unconditional"] = unc.z
            out["power"]["zchi2_unconditional"] = unc.z_chi2
    return out


def summarise(rows: list[dict[str, Any]], n_bins: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"n_experiments": len(rows)}
    for name in ("shared", "per_bin"):
        ok = [r for r in rows if f"p_combined_{name}" in r]
        tried = [r for r in rows if f"p_combined_{name}" in r or f"undefined_{name}" in r]
        if not tried:  # power runs (--skip-null)
            continue
        summary[f"undefined_{name}"] = len(tried) - len(ok)
        summary[f"coverage_1sigma_{name}"] = float(np.mean([r[f"covered_{name}"] for r in rows]))
        if not ok:
            continue
        bins_p = np.array([r[f"p_bins_{name}"] for r in ok])
        for b in range(n_bins):
            summary[f"ks_bin{b}_{name}"] = float(scipy.stats.kstest(bins_p[:, b], "uniform").pvalue)
        for key in ("combined", "global"):
            p = np.array([r[f"p_{key}_{name}"] for r in ok])
            summary[f"ks_{key}_{name}"] = float(scipy.stats.kstest(p, "uniform").pvalue)
            summary[f"frac_below_0.05_{key}_{name}"] = float(np.mean(p < 0.05))
    powered = [r["power"] for r in rows if "power" in r]
    if powered:
        summary["power"] = {
            "median_z_bins": np.median([p["z_bins"] for p in powered], axis=0).tolist(),
            "median_z_combined": float(np.median([p["z_combined"] for p in powered])),
            "median_z_global": float(np.median([p["z_global"] for p in powered])),
            "median_z_one_bin": float(np.median([p["z_one_bin"] for p in powered])),
            "fraction_pointing_to_top_bin": float(np.mean([p["bin_min"] == n_bins - 1
                                                           for p in powered])),
            "fraction_combined_ge_unconditional": float(np.mean(
                [p["z_combined"] >= p["z_unconditional"] for p in powered
                 if "z_unconditional" in p])) if any("z_unconditional" in p for p in powered)
            else None,
        }
        unc = [p["z_unconditional"] for p in powered if "z_unconditional" in p]
        if unc:
            summary["power"]["median_z_unconditional"] = float(np.median(unc))
        for key in ("zchi2_combined", "zchi2_one_bin", "zchi2_unconditional"):
            values = [p[key] for p in powered if key in p]
            if values:
                summary["power"][f"median_{key}"] = float(np.median(values))
        chi2_bins = [p["zchi2_bins"] for p in powered if "zchi2_bins" in p]
        if chi2_bins:
            summary["power"]["median_zchi2_bins"] = np.median(chi2_bins, axis=0).tolist()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--toys", type=int, default=200)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--fit-events", type=int, default=4000)
    parser.add_argument("--test-events", type=int, default=2000)
    parser.add_argument("--kernels", type=int, default=10, help="kernels per context bin")
    parser.add_argument("--sigma", type=float, default=0.5,
                        help="kernel width in units of each bin's spread of x")
    parser.add_argument("--distortion", type=float, default=0.0,
                        help="relative width change in the top context bin (0: null only)")
    parser.add_argument("--unconditional", action="store_true",
                        help="also run the unconditional test on x (power runs)")
    parser.add_argument("--follow-context", action="store_true",
                        help="kernels in the residual of x given c (genval.gof.ContextKernels)")
    parser.add_argument("--skip-null", action="store_true",
                        help="power runs: skip the null tests and their coverage")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("studies/results"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    members, w_true, params = ensemble(args.members, args.seed)
    marginals = marginal_members(members) if args.unconditional else None
    start = time.perf_counter()
    rows = []
    for e in range(args.experiments):
        rows.append(experiment(members, params, w_true, 1000 + e, args, marginals))
        print(f"experiment {e}: {json.dumps(rows[-1])[:300]}", flush=True)
    summary = summarise(rows, len(EDGES) - 1)
    summary["max_integral_error"] = integrals(members)
    summary["seconds"] = time.perf_counter() - start
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}
    summary["w_true"] = w_true.tolist()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"conditional{args.tag}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"summary": summary, "experiments": rows}, indent=1))
    os.replace(tmp, path)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
