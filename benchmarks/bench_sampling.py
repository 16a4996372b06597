"""Benchmark: drawing from f(x; ŵ) on a realistic near-collinear ensemble.

60 Gaussian members jittered around the paper's toy (Badaracco et al., Eq. 6), ŵ fitted on
20k events (Eq. 1): Σ|ŵ| = 410 (``tests/realistic_support.py``). Times 200k events from the
members' mixture proposal (the default) and from the |w| envelope, whose cost grows with
Σ|ŵ|; the latter is capped at ``--abs-proposals`` proposals and its time extrapolated to 200k
events. Reports evaluations of ``log F`` (all members at one point) per event.

Run: PYTHONPATH=src:tests python benchmarks/bench_sampling.py [--events 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from genval.errors import InputError  # noqa: E402
from genval.sampling import sample_mixture  # noqa: E402
from realistic_support import jittered_toy_ensemble  # noqa: E402


def timed(method: str, ens, n: int, max_proposals: int | None) -> dict:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            drawn = sample_mixture(ens.members, ens.weights, n, 0, method=method,
                                   max_proposals=max_proposals)
            info = drawn.diagnostics()
        except InputError as exc:  # the capped |w| envelope: count what it did
            info = {"stopped": str(exc)}
    info["seconds"] = time.perf_counter() - start
    info["warnings"] = [str(w.message) for w in caught]
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--abs-proposals", type=int, default=2_000_000)
    args = parser.parse_args()
    ens = jittered_toy_ensemble()
    mixture = timed("mixture", ens, args.events, None)
    # The |w| envelope accepts 1/Σ|ŵ|: draw what the proposal cap allows, extrapolate.
    n_abs = max(1, int(args.abs_proposals / ens.fit.abs_weight_sum / 1.3))
    old = timed("abs", ens, n_abs, args.abs_proposals)
    old["extrapolated_seconds"] = old["seconds"] * args.events / n_abs
    print(json.dumps({"cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), "sum_abs_w": ens.fit.abs_weight_sum,
                      "hessian_condition": ens.fit.hessian_condition,
                      "events": args.events, "mixture": mixture,
                      "abs": {**old, "events": n_abs}}, indent=1, default=str))


if __name__ == "__main__":
    main()
