"""No subnormal number reaches a matrix product (issue 15), counted machine-independently.

Subnormal operands make float32 GEMMs 10-100x slower on Intel cores (not on AMD Zen, so a
timing test would pass on the wrong machine). Instead, every ``np.matmul`` operand inside the
GoF solver is counted on the ``benchmarks/bench_gof.py`` problem at reduced size, and every
``mm``/``bmm``/``baddbmm``/``addmm`` operand of a flow training step on the
``benchmarks/bench_flows.py`` architecture at small size; each count must be zero. The GoF
checks also run with the flushes disabled, to show that the counted operands do hold
subnormals there without them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genval import subnormal
from genval.subnormal import TINY32, count_subnormal, exp_flushed, flush_subnormal

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_benchmark(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- helpers


def test_flush_and_count_float32_and_float64() -> None:
    x = np.array([1e-40, -1e-39, 1e-30, 0.0, np.nan, np.inf, -np.inf, 1e-45, -3.0], np.float32)
    assert count_subnormal(x) == 3
    out = flush_subnormal(x)
    assert out is x and count_subnormal(x) == 0
    assert np.isnan(x[4]) and x[5] == np.inf and x[6] == -np.inf and x[2] == np.float32(1e-30)
    y = np.full(7, 1e-310)
    flush_subnormal(y[::2])  # a strided view is flushed in place
    assert np.array_equal(y != 0, np.arange(7) % 2 == 1)
    z = np.array([1e-39, 1e-37, -1e-39])
    copy = flush_subnormal(z, out=np.empty_like(z), tiny=TINY32)
    assert np.array_equal(copy, [0.0, 1e-37, 0.0]) and z[0] == 1e-39


def test_flush_threshold_is_exact() -> None:
    x = np.random.default_rng(0).standard_normal((300, 37))
    y = flush_subnormal(x.copy(), tiny=0.5)
    assert np.array_equal(y == 0, np.abs(x) < 0.5)
    assert np.array_equal(y[y != 0], x[y != 0])


def test_exp_flushed() -> None:
    z = np.array([-1.0, 0.0, -87.0, -87.4, -1000.0, -np.inf, np.inf, np.nan])
    e = exp_flushed(z)
    assert np.array_equal(e[:3], np.exp(z[:3]))
    assert np.array_equal(e[3:6], [0.0, 0.0, 0.0]) and e[6] == np.inf and np.isnan(e[7])
    assert count_subnormal(e.astype(np.float32)) == 0
    tiny64 = float(np.finfo(np.float64).tiny)
    d = exp_flushed(np.array([-700.0, -708.0, -720.0]), tiny=tiny64)
    assert d[0] == np.exp(-700.0) and d[1] == np.exp(-708.0) and d[2] == 0.0


def test_count_torch_bfloat16() -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor([1e-39, 1.0, 0.0])
    assert count_subnormal(t) == 1 and count_subnormal(t.bfloat16()) == 1


# ------------------------------------------------------------------- GoF (bench_gof problem)


class _Probe(np.ndarray):
    """An ndarray that records the subnormals in every operand of ``np.matmul`` (``@``).

    Results of ufuncs on a probe are probes again, so the instrumentation follows ``a`` through
    casts, row scalings and slices into the Hessian and gradient products.
    """

    log: list[tuple[str, int, int]] = []

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        plain = [x.view(np.ndarray) if isinstance(x, _Probe) else x for x in inputs]
        outs = kwargs.get("out")
        if outs is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Probe) else o
                                  for o in outs)
        if ufunc is np.matmul and method == "__call__":
            for x in plain:
                if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                    _Probe.log.append((x.dtype.name, count_subnormal(x), x.size))
        result = getattr(ufunc, method)(*plain, **kwargs)
        if outs is not None:
            return outs[0] if len(outs) == 1 else outs
        if isinstance(result, tuple):
            return tuple(r.view(_Probe) if isinstance(r, np.ndarray) else r for r in result)
        return result.view(_Probe) if isinstance(result, np.ndarray) else result


@pytest.fixture(scope="module")
def gof_problem() -> tuple[Any, ...]:
    bench = _load_benchmark("bench_gof")
    return bench.make_problem(60, 2000, 100, 0)  # the benchmark's problem at N = 2,000


def _without_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the flushes everywhere in genval by their unflushed equivalents."""

    def no_flush(array: Any, out: Any = None, *, tiny: float | None = None) -> Any:
        if out is None:
            return array
        np.copyto(out, array)
        return out

    def plain_exp(z: Any, out: Any = None, *, tiny: float = TINY32) -> Any:
        return np.exp(z, out=out)

    for name, module in list(sys.modules.items()):
        if not name.startswith("genval.") or module is subnormal:
            continue
        if getattr(module, "flush_subnormal", None) is flush_subnormal:
            monkeypatch.setattr(module, "flush_subnormal", no_flush)
        if getattr(module, "exp_flushed", None) is exp_flushed:
            monkeypatch.setattr(module, "exp_flushed", plain_exp)


def _gof_matmul_operands(problem: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
                         ) -> dict[str, tuple[int, int]]:
    """Observed statistic, pool and 2 toys; subnormals and entries per matmul operand dtype."""
    from genval.gof import goodness_of_fit
    from genval.gof.statistic import profile_pair
    from genval.sampling import sample_mixture

    members, fit, x_test, basis = problem
    solver_globals = profile_pair.__globals__
    solver = solver_globals["minimize_convex"]

    def traced_solver(c: Any, a: Any, *args: Any, **kwargs: Any) -> Any:
        return solver(c, np.asarray(a).view(_Probe), *args, **kwargs)

    sampler_globals = sample_mixture.__globals__
    ratio = sampler_globals["mixture_ratio"]
    monkeypatch.setitem(solver_globals, "minimize_convex", traced_solver)
    monkeypatch.setitem(sampler_globals, "mixture_ratio",
                        lambda log_f, *args: np.asarray(ratio(log_f.view(_Probe), *args)))
    _Probe.log = []
    goodness_of_fit(members, fit, x_test, basis, n_toys=2, seed=0, n_jobs=1)
    totals: dict[str, tuple[int, int]] = {}
    for dtype, n_sub, size in _Probe.log:
        sub, tot = totals.get(dtype, (0, 0))
        totals[dtype] = (sub + n_sub, tot + size)
    return totals


def test_gof_products_have_no_subnormal_operands(gof_problem: tuple[Any, ...],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    totals = _gof_matmul_operands(gof_problem, monkeypatch)
    assert totals["float32"][1] > 10**6 and totals["float64"][1] > 10**6  # products were seen
    assert {dtype: sub for dtype, (sub, _) in totals.items()} == {"float32": 0, "float64": 0}


def test_gof_operands_do_hold_subnormals_without_the_flush(gof_problem: tuple[Any, ...],
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    _without_flushes(monkeypatch)
    totals = _gof_matmul_operands(gof_problem, monkeypatch)
    sub32, size32 = totals["float32"]
    assert sub32 > 1e-3 * size32  # the float32 Hessian operand: ~2 % subnormal unflushed
    assert totals["float64"][0] > 0  # exp underflow in the row scaling and the sampler


def test_row_scaled_densities_hold_no_float32_subnormals(gof_problem: tuple[Any, ...]) -> None:
    """The weight fit's and the GoF's row-scaled F and G: no entry in (0, 1.2e-38)."""
    from genval.members import log_density_matrix
    from genval.row_scaling import scale_rows
    from genval.wifi import prepare_density_matrix

    members, _, x_test, basis = gof_problem
    log_f, log_g = log_density_matrix(members, x_test), basis.log_pdf(x_test)
    s, log_s = prepare_density_matrix(log_f, log=True)
    rows = scale_rows(log_f, log_g, log=True)
    for arr in (s, rows.f, rows.g):
        assert count_subnormal(arr, tiny=TINY32) == 0
        assert count_subnormal(arr.astype(np.float32)) == 0
    raw_g = np.exp(log_g - log_s[:, None])
    assert count_subnormal(raw_g.astype(np.float32)) > 0  # what the flush removed
    np.testing.assert_allclose(rows.g, raw_g, rtol=0, atol=TINY32 * 1.02)
    assert count_subnormal(basis.pdf(x_test)) == 0


# --------------------------------------------------------------- flows (bench_flows problem)


def test_flow_training_products_have_no_subnormal_operands() -> None:
    """float32 and bf16 products of a training run on the bench_flows architecture, small.

    Measured at the paper's architecture (4 layers, 16 blocks, 128 hidden, 15 bins; 4 members,
    90 steps, both precisions: 1.5e10 operand entries) no subnormal occurred either, so the
    flows need no flush; this test keeps it that way.
    """
    torch = pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    from genval.flows import FlowEnsemble, train

    aten = torch.ops.aten
    products = {aten.mm.default, aten.bmm.default, aten.baddbmm.default, aten.addmm.default}

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.subnormal = self.entries = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            if func in products:
                for arg in args:
                    if isinstance(arg, torch.Tensor) and arg.is_floating_point():
                        self.subnormal += count_subnormal(arg)
                        self.entries += arg.numel()
            return func(*args, **(kwargs or {}))

    probe = Count()
    with probe:  # the counter sees a planted subnormal
        torch.bmm(torch.full((1, 2, 2), 1e-40), torch.ones(1, 2, 2))
    assert probe.subnormal == 4
    x = np.random.default_rng(0).normal([-0.5, 0.6], [0.25, 0.4], size=(2048 + 256, 2))
    for precision in ("float32", "bfloat16"):
        ens = FlowEnsemble(2, 2, 4, 32, 2, 15, tail_bound=5.0, seed=0)
        probe = Count()
        with probe:
            train(ens, x[:2048], x_val=x[2048:], max_epochs=1, batch_size=512, lr=1e-3,
                  progress=False, precision=precision, seed=0)
        assert probe.entries > 10**5, precision
        assert probe.subnormal == 0, precision
