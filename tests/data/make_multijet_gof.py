"""How ``multijet_gof.npz`` was made (provenance; it needs the two run directories below).

Two ``genval run`` directories on Pythia 8 multijet events (``examples/multijet/generate.py
--seed 1 --pthat-min 250``; features jet1/jet2 pT, eta, mass and m_jj), each with 10 flows
(2 layers, 32 hidden, 2 blocks, 8 bins, 30 epochs, learning rate 1e-3), K = 50 kernels of
sigma = 0.5 in standardised units, splits 0.5 / 0.2 / 0.02 / 0.28, seed 1:

* ``e40``: 40 000 events. 600 of its 11 200 test events, drawn at random (seed 0).
* ``e15``: 15 000 events. 400 events of toy pool 0 drawn from f(x; ŵ), and 400 of the pool
  drawn from member 0 (the single variant's null), at random (seed 1).

Each holds row-scaled log-densities (``log F - max_m log F``, the same for G) of the events and
of the 50 kernel centres (the positivity check points), float32, and ŵ, Cov(ŵ).

    PYTHONPATH=src python tests/data/make_multijet_gof.py RUN40K RUN15K
"""

from __future__ import annotations

import sys
import warnings

import numpy as np


def _rows(prep, weights, pool):  # noqa: ANN001 -- a provenance script
    return prep.pool_rows(weights, pool).rows


def _log(rows, idx=None):  # noqa: ANN001
    f, g = (rows.f, rows.g) if idx is None else (rows.f[idx], rows.g[idx])
    with np.errstate(divide="ignore"):  # densities flushed to 0 are log 0 = -inf
        return np.log(f).astype(np.float32), np.log(g).astype(np.float32)


def main(run40k: str, run15k: str) -> None:
    from genval import gof
    from genval.pipeline.artifacts import load_fit, load_members, split_events
    from genval.pipeline.seeds import stage_seed
    from genval.rundir import RunDir

    out = {}
    for key, path in (("e40", run40k), ("e15", run15k)):
        run = RunDir.open(path)
        cfg = run.config()
        seed = stage_seed(cfg, "gof")
        members, fit = load_members(run), load_fit(run)
        x_test, _ = split_events(run, "test")
        x_centres, _ = split_events(run, "centres")
        basis = gof.KernelBasis.from_events(x_centres, cfg.gof.n_kernels, cfg.gof.sigma,
                                            standardize=cfg.gof.standardize, seed=seed)
        prep = gof.prepare(members, x_test, basis, seed, n_pools=cfg.gof.n_pools)
        out[f"{key}_ref_log_f"], out[f"{key}_ref_log_g"] = _log(prep.check_rows)
        out[f"{key}_w"], out[f"{key}_cov"] = fit.weights, fit.cov
        if key == "e40":
            idx = np.random.default_rng(0).choice(x_test.shape[0], 600, replace=False)
            out["e40_log_f"], out["e40_log_g"] = _log(prep.test_rows, idx)
        else:
            rng = np.random.default_rng(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the pools' negative mass, reported elsewhere
                pool = _rows(prep, fit.weights, 0)
                single = _rows(prep, np.eye(members.n_members)[0], 0)
            idx = rng.choice(pool.f.shape[0], 400, replace=False)
            out["e15_log_f"], out["e15_log_g"] = _log(pool, idx)
            idx = rng.choice(single.f.shape[0], 400, replace=False)
            out["e15_single_log_f"], out["e15_single_log_g"] = _log(single, idx)
    np.savez_compressed("tests/data/multijet_gof.npz", **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
