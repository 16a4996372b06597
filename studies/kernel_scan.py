"""Scan kernel bases (K, σ) for power against a chosen deformation, on a finished run's fit.

Choosing the basis on the test data would void the calibration of its p-value; this scan never
reads the test split. It draws null sets of the test split's size from the fitted f(x; ŵ) and
deforms copies of them: feature ``--feature``, in the members' transformed coordinates, shifted
by ``--shift`` of its standard deviation (a 5 % shift by default, the deviation of
studies/results/power_gof.md). For each basis (kernels Gaussian in the transformed coordinates,
σ in standardised units, centres from the run's centres split, as the gof stage builds them)
it prints:

* the effective events per kernel on the null sets: the Kish sample size of G_k / f, median and
  smallest over the kernels (docs/choosing-kernels.md, rule 2);
* the observed t (ensemble with uncertainty) on the null and the deformed sets, and their
  separation, (median t deformed − median t null) / sd(t null).

Run after the fit stage: python studies/kernel_scan.py RUN_DIR [--grid 10:1,20:0.7,50:0.5]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from genval.errors import FitError
from genval.gof import KernelBasis, kernel_effective_events, test_statistic
from genval.members import log_density_matrix
from genval.pipeline.artifacts import (
    load_fit,
    load_members,
    load_splits,
    load_transform,
    split_events,
)
from genval.row_scaling import scale_rows
from genval.rundir import RunDir
from genval.sampling import sample_mixture

DEFAULT_GRID = "10:1,20:1,20:0.7,50:0.5,100:0.2"


def _effective_events(log_g: np.ndarray, log_f: np.ndarray, weights: np.ndarray
                      ) -> np.ndarray:
    """Kish effective sample size of G_k / f per kernel over events drawn from f."""
    rows = scale_rows(log_f, log_g, log=True)
    return kernel_effective_events(rows.f, rows.g, weights)


def scan(run: RunDir, grid: Sequence[tuple[int, float]], *, n_sets: int = 4,
         shift: float = 0.05, feature: str | None = None, seed: int = 0
         ) -> list[dict[str, Any]]:
    """One row per (K, σ): effective events per kernel, t on null and deformed sets."""
    members, fit, transform = load_members(run), load_fit(run), load_transform(run)
    x_centres, names = split_events(run, "centres")
    j = names.index(feature) if feature is not None else 0
    n_test = int(load_splits(run).sizes().get("test", 0)) or len(split_events(run, "test")[0])
    y_centres = transform.forward(x_centres)
    step = np.zeros(len(names))
    step[j] = shift * y_centres[:, j].std(ddof=1)
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n_sets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # negative mass: recorded by the run's own stages
            null = sample_mixture(members, fit.weights, n_test, rng)
        deformed = transform.inverse(transform.forward(null.x) + step)
        sets.append((null.x, null.log_f, deformed, log_density_matrix(members, deformed)))
    rows = []
    for k, sigma in grid:
        basis = KernelBasis.from_events(x_centres, k, sigma, standardize=True,
                                        transform=transform, seed=seed)
        ref = {"F_ref": log_density_matrix(members, basis.centers),
               "G_ref": basis.log_pdf(basis.centers)}
        t_null, t_deformed, effective = [], [], []
        for x, log_f, x_def, log_f_def in sets:
            log_g = basis.log_pdf(x)
            effective.append(_effective_events(log_g, log_f, fit.weights))
            try:
                t_null.append(float(test_statistic(log_f, log_g, fit, log=True, **ref)))
                t_deformed.append(float(test_statistic(log_f_def, basis.log_pdf(x_def), fit,
                                                       log=True, **ref)))
            except FitError as exc:  # f(x; ŵ) <= 0 at some events of a set
                print(f"K={k} sigma={sigma}: a set was skipped: {exc}")
        ess = np.concatenate(effective)
        spread = float(np.std(t_null, ddof=1)) if len(t_null) > 1 else float("nan")
        rows.append({"K": k, "sigma": sigma, "effective_median": float(np.median(ess)),
                     "effective_min": float(ess.min()), "t_null": t_null,
                     "t_deformed": t_deformed,
                     "separation": (float(np.median(t_deformed)) - float(np.median(t_null)))
                     / spread if t_null else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--grid", default=DEFAULT_GRID,
                        help=f"K:sigma pairs, sigma in standardised units ({DEFAULT_GRID})")
    parser.add_argument("--sets", type=int, default=4, help="null and deformed sets per basis")
    parser.add_argument("--shift", type=float, default=0.05,
                        help="shift of the feature in its (transformed) standard deviations")
    parser.add_argument("--feature", default=None, help="feature to shift (default: first)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid = [(int(k), float(s)) for k, s in (p.split(":") for p in args.grid.split(","))]
    run = RunDir.open(args.run_dir)
    for row in scan(run, grid, n_sets=args.sets, shift=args.shift, feature=args.feature,
                    seed=args.seed):
        print(f"K={row['K']:4d} sigma={row['sigma']:<5g} effective events per kernel: median "
              f"{row['effective_median']:9.1f}, min {row['effective_min']:8.1f} | t null "
              f"{np.round(row['t_null'], 1).tolist()} deformed "
              f"{np.round(row['t_deformed'], 1).tolist()} | separation "
              f"{row['separation']:.2f} null sd")


if __name__ == "__main__":
    main()
