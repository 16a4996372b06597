"""Benchmark: one training epoch of a 60-member flow ensemble, genval vs nflows, side by side.

The paper's setting (Sec. 3): 80,000 training events, batch 512 per member, nflows
``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` with 4 layers, 16 blocks, 128 hidden
features, 15 bins, M = 60 members. The reference code trains the members one after the other
with nflows; genval trains all members in one step.

Both are timed on the same machine in the same run, in alternating rounds so that a change of
background load hits both; the best round of each is reported (load only ever adds time).
By default each round times a few optimiser steps and the epoch time is extrapolated (steps
per epoch x time per step; the report says so); ``--full-epoch`` also times one real epoch
(80k training + 20k validation events) of genval through ``genval.flows.train`` and of one
nflows member (training loop plus validation; 60 members one after the other take 60 times
as long).

Both run in one process with glibc's allocator told to keep freed memory
(``genval._allocator.retain_freed_memory``, which ``train`` applies anyway), so neither pays
for page faults the other does not.

    python benchmarks/bench_flows.py                       # paper size, CPU, prints JSON
    python benchmarks/bench_flows.py --members 8 --blocks 2 --hidden 32   # quick look
    python benchmarks/bench_flows.py --device cuda --full-epoch --check
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from genval._allocator import retain_freed_memory
from genval.flows import FlowEnsemble, train


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                            "device": device}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                                  if line.startswith("Model name")), None)
    except OSError:
        info["cpu_model"] = platform.processor()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def load() -> float:
    return os.getloadavg()[0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def genval_steps(args: argparse.Namespace, x: np.ndarray, precision: str) -> float:
    """Seconds per optimiser step (all members), through genval.flows.train on a sub-epoch."""
    ens = FlowEnsemble(2, args.members, args.layers, args.hidden, args.blocks, args.bins,
                       tail_bound=args.tail_bound, seed=0)
    n = args.steps * args.batch
    hist = train(ens, x[:n], x_val=x[n:n + 64], max_epochs=1, batch_size=args.batch,
                 lr=1e-4, progress=False, device=args.device, precision=precision,
                 micro_batch=args.micro_batch, seed=0)
    return float(hist.epoch_seconds[0]) / args.steps


def nflows_flow(args: argparse.Namespace) -> torch.nn.Module:
    """One nflows flow of the benchmark's architecture (the reference implementation)."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import (
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform as Transform,
    )
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import ReversePermutation

    transforms = []
    for _ in range(args.layers):
        transforms += [ReversePermutation(2), Transform(
            2, args.hidden, num_bins=args.bins, tails="linear", tail_bound=args.tail_bound,
            num_blocks=args.blocks)]
    return Flow(CompositeTransform(transforms), StandardNormal([2])).to(args.device)


def nflows_steps(args: argparse.Namespace, x: np.ndarray) -> float:
    """Seconds per optimiser step of one nflows flow."""
    flow = nflows_flow(args)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    xt = torch.as_tensor(x, dtype=torch.float32, device=args.device)
    order = torch.randperm(len(xt), device=args.device)

    def step(i: int) -> None:
        batch = xt[order[i * args.batch:(i + 1) * args.batch]]
        opt.zero_grad()
        loss = -flow.log_prob(batch).mean()
        loss.backward()
        opt.step()

    step(0)  # warm-up (allocator, lazy init)
    sync(args.device)
    start = time.perf_counter()
    for i in range(1, args.nflows_steps + 1):
        step(i)
    sync(args.device)
    return (time.perf_counter() - start) / args.nflows_steps


def nflows_full_epoch(args: argparse.Namespace, x: np.ndarray) -> float:
    """Seconds for one real epoch of one nflows member: shuffled batches, then validation.

    Like the reference code's loop (and genval's): every training event once in batches of
    ``--batch``, then the validation NLL of the 20,000 held-out events without gradients.
    """
    flow = nflows_flow(args)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    xt = torch.as_tensor(x[:args.events], dtype=torch.float32, device=args.device)
    xv = torch.as_tensor(x[args.events:], dtype=torch.float32, device=args.device)
    sync(args.device)
    start = time.perf_counter()
    order = torch.randperm(len(xt), device=args.device)
    for i in range(0, len(xt), args.batch):
        opt.zero_grad()
        loss = -flow.log_prob(xt[order[i:i + args.batch]]).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val = sum(-flow.log_prob(xv[i:i + 5000]).sum() for i in range(0, len(xv), 5000))
    float(val)
    sync(args.device)
    return time.perf_counter() - start


def check_against_float64(args: argparse.Namespace, x: np.ndarray) -> dict[str, Any]:
    """The fast path against a float64 CPU reference on random inputs (run before timing).

    Members perturbed by 0.01 (weights ~10 %, residual blocks 10x their initial scale, so
    every layer matters): log_prob of 2,000 events in float32 on ``--device``, and the
    gradient of the mean NLL of one batch per member in float32 and in the bf16 training mode,
    each compared with float64 on the CPU.
    """
    ens = FlowEnsemble(2, args.members, args.layers, args.hidden, args.blocks, args.bins,
                       tail_bound=args.tail_bound, seed=0)
    ens.set_standardisation(x)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    ref = copy.deepcopy(ens).double()
    fast = ens.to(args.device)
    events = x[:2000]
    lp_ref, lp = ref.log_prob(events), fast.log_prob(events)
    out: dict[str, Any] = {"log_prob_max_abs_error_float32": float(np.abs(lp - lp_ref).max()),
                           "log_prob_range": [float(lp_ref.min()), float(lp_ref.max())]}

    def batch(i: int) -> torch.Tensor:
        return torch.as_tensor((x[i * args.batch:(i + 1) * args.batch] - ens.loc) / ens.scale)

    def grads(model: FlowEnsemble, precision: str, i: int = 0) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with model.compute_precision(precision):
            y = batch(i).to(device=model.device, dtype=model.dtype)
            model.log_prob_standardised(y).mean(dim=1).sum().backward()
        return [p.grad.detach().double().cpu() for p in model.parameters()]

    def distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return math.sqrt(sum(float((u - v).square().sum()) for u, v in zip(a, b, strict=True)))

    g_ref = grads(ref, "float32")
    # The yardstick for a gradient error: how much the gradient changes from one batch of
    # events to the next (float64), i.e. the noise SGD already lives with.
    batch_noise = distance(grads(ref, "float32", 1), g_ref)
    for name in ("float32", "bfloat16"):
        out[f"gradient_error_over_batch_noise_{name}"] = (
            distance(grads(fast, name), g_ref) / batch_noise)
    # float32 carries ~7 digits through 4 x 33 layers (measured: 3e-3 of the batch noise for
    # 60 members, 1e-4 for 4), bf16 products ~3: bf16 may add at most 1/16 of the variance
    # SGD already has (0.25 of its noise).
    out["passed"] = bool(out["log_prob_max_abs_error_float32"] < 1e-3
                         and out["gradient_error_over_batch_noise_float32"] < 1e-2
                         and out["gradient_error_over_batch_noise_bfloat16"] < 0.25)
    return out


def log_prob_seconds(args: argparse.Namespace, x: np.ndarray) -> float:
    ens = FlowEnsemble(2, args.members, args.layers, args.hidden, args.blocks, args.bins,
                       tail_bound=args.tail_bound, seed=0).to(args.device)
    ens.log_prob(x[:512])  # warm-up
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        ens.log_prob(x[:args.logprob_events])
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=60)
    p.add_argument("--events", type=int, default=80_000, help="training events per epoch")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--bins", type=int, default=15)
    p.add_argument("--tail-bound", type=float, default=5.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=8, help="genval steps timed per round")
    p.add_argument("--nflows-steps", type=int, default=20, help="nflows steps timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="float32,bfloat16",
                   help="comma-separated genval training precisions")
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--logprob-events", type=int, default=20_000)
    p.add_argument("--full-epoch", action="store_true",
                   help="also time one real epoch (events + 25%% validation) with genval")
    p.add_argument("--no-nflows", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="first compare log_prob and gradients with a float64 CPU reference; "
                   "exit 1 if they disagree")
    args = p.parse_args()
    allocator_tuned = retain_freed_memory()

    x = np.random.default_rng(0).normal([-0.5, 0.6], [0.25, 0.4], size=(args.events + 20_000, 2))
    steps_per_epoch = math.ceil(args.events / args.batch)
    precisions = [s for s in args.precision.split(",") if s]
    report: dict[str, Any] = {"machine": machine(args.device), "date": time.strftime(
        "%Y-%m-%d %H:%M:%S %Z"), "settings": vars(args), "steps_per_epoch": steps_per_epoch,
        "load_before": load(), "allocator_retains_freed_memory": allocator_tuned}
    if args.check:
        report["check"] = check_against_float64(args, x)
        print(f"check: {report['check']}", file=sys.stderr)
        if not report["check"]["passed"]:
            print(json.dumps(report, indent=2))
            sys.exit(1)
    timings: dict[str, list[float]] = {f"genval_{s}": [] for s in precisions}
    if not args.no_nflows:
        timings["nflows"] = []
    for r in range(args.rounds):  # alternate so that background load affects both alike
        for key in timings:
            t = nflows_steps(args, x) if key == "nflows" else \
                genval_steps(args, x, key.removeprefix("genval_"))
            timings[key].append(t)
            print(f"round {r}: {key} {t:.4f} s/step (load {load():.2f})", file=sys.stderr)
    results: dict[str, Any] = {}
    for key, ts in timings.items():
        per_step = min(ts)  # best of the rounds: background load only ever adds time
        members_per_step = 1 if key == "nflows" else args.members
        epoch = per_step * steps_per_epoch * args.members / members_per_step
        results[key] = {"seconds_per_step": per_step, "all_rounds": ts,
                        "seconds_per_member_epoch": epoch / args.members,
                        "seconds_per_ensemble_epoch": epoch,
                        "extrapolated": f"{steps_per_epoch} steps/epoch x best-round s/step"
                        + (f" x {args.members} members one at a time" if key == "nflows" else "")}
    if "nflows" in results:
        for key in results:
            if key != "nflows":
                results[key]["speedup_vs_nflows"] = (
                    results["nflows"]["seconds_per_ensemble_epoch"]
                    / results[key]["seconds_per_ensemble_epoch"])
    report["training"] = results
    if args.full_epoch:
        ens = FlowEnsemble(2, args.members, args.layers, args.hidden, args.blocks, args.bins,
                           tail_bound=args.tail_bound, seed=0)
        for prec in precisions:
            hist = train(ens, x, val_fraction=20_000 / len(x), max_epochs=1,
                         batch_size=args.batch, lr=1e-4, progress=False, device=args.device,
                         precision=prec, micro_batch=args.micro_batch, seed=0)
            report.setdefault("full_epoch_seconds", {})[prec] = float(hist.epoch_seconds[0])
        if not args.no_nflows:
            member = nflows_full_epoch(args, x)
            report["full_epoch_seconds"]["nflows_one_member"] = member
            report["full_epoch_seconds"]["nflows_sequential_ensemble"] = member * args.members
            for prec in precisions:
                report["full_epoch_seconds"][f"speedup_{prec}_vs_nflows"] = (
                    member * args.members / report["full_epoch_seconds"][prec])
    report["log_prob"] = {"events": args.logprob_events, "members": args.members,
                          "seconds": log_prob_seconds(args, x)}
    report["load_after"] = load()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
