"""Parity with nflows: parameters copied from nflows flows give the same densities (float64).

nflows is a test-only dependency (an oracle for the parameterisation, not the engine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genval.flows import FlowEnsemble

nflows = pytest.importorskip("nflows")
from nflows.distributions.normal import StandardNormal  # noqa: E402
from nflows.flows.base import Flow  # noqa: E402
from nflows.transforms.autoregressive import (  # noqa: E402
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)
from nflows.transforms.base import CompositeTransform  # noqa: E402
from nflows.transforms.permutations import RandomPermutation, ReversePermutation  # noqa: E402


def nflows_flow(d: int, layers: int, hidden: int, blocks: int, bins: int, tail_bound: float,
                random: bool, seed: int, noise: float = 0.3) -> Flow:
    torch.manual_seed(seed)  # nflows draws its initial weights and permutations globally
    transforms = []
    for _ in range(layers):
        transforms.append(RandomPermutation(d) if random else ReversePermutation(d))
        transforms.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            d, hidden, num_bins=bins, tails="linear", tail_bound=tail_bound,
            num_blocks=blocks))
    flow = Flow(CompositeTransform(transforms), StandardNormal([d])).double()
    with torch.no_grad():  # move far from the initialisation so that every spline matters
        for p in flow.parameters():
            p.add_(noise * torch.randn_like(p))
    return flow


def copy_into(ens: FlowEnsemble, member: int, flow: Flow) -> None:
    """Copy one nflows flow's parameters into member ``member`` of ``ens``."""
    parts = list(flow._transform._transforms)
    with torch.no_grad():
        for layer in range(len(ens.mades)):
            perm, maf = parts[2 * layer], parts[2 * layer + 1]
            ens.permutations[layer] = perm._permutation
            made, net = ens.mades[layer], maf.autoregressive_net
            made.w_in[member] = net.initial_layer.weight
            made.b_in[member, 0] = net.initial_layer.bias
            for j, block in enumerate(net.blocks):
                for k in range(2):
                    made.w_blocks[2 * j + k][member] = block.linear_layers[k].weight
                    made.b_blocks[2 * j + k][member, 0] = block.linear_layers[k].bias
            made.w_out[member] = net.final_layer.weight
            made.b_out[member, 0] = net.final_layer.bias


@pytest.mark.parametrize("d,layers,hidden,blocks,bins,random,noise", [
    (2, 4, 16, 2, 15, False, 0.3),
    (3, 2, 12, 1, 5, True, 0.3),
    # The paper's architecture: 16 residual blocks of 128 amplify a large perturbation.
    pytest.param(2, 4, 128, 16, 15, False, 0.02, marks=pytest.mark.slow),
])
def test_log_prob_matches_nflows(d: int, layers: int, hidden: int, blocks: int, bins: int,
                                 random: bool, noise: float) -> None:
    tail_bound, m = 3.0, 3
    flows = [nflows_flow(d, layers, hidden, blocks, bins, tail_bound, random, seed=10 * d + i,
                         noise=noise) for i in range(m)]
    ens = FlowEnsemble(d, m, layers, hidden, blocks, bins, tail_bound=tail_bound,
                       permutation="random" if random else "reverse").double()
    if random:  # the members of an ensemble share permutations: give all the first flow's
        for f in flows[1:]:
            for a, b in zip(f._transform._transforms[::2], flows[0]._transform._transforms[::2],
                            strict=True):
                a._permutation.copy_(b._permutation)
    for i, f in enumerate(flows):
        copy_into(ens, i, f)
    ens.loc, ens.scale = np.linspace(-0.5, 0.5, d), np.linspace(0.5, 1.5, d)
    x = np.random.default_rng(0).normal(size=(3000, d)) * 1.2
    x[:5] *= 6  # some events beyond the tail bound (nflows' identity branch)
    ours = ens.log_prob(x)
    y = torch.as_tensor((x - ens.loc) / ens.scale)
    for i, f in enumerate(flows):
        with torch.no_grad():
            ref = f.log_prob(y).numpy() - np.log(ens.scale).sum()
        np.testing.assert_allclose(ours[i], ref, rtol=0, atol=1e-6)
        # and well beyond float32 rounding: the arithmetic is the same
        assert np.abs(ours[i] - ref).max() < 1e-9


def test_initialisation_matches_nflows_distribution() -> None:
    """Our per-member init follows nflows' (nn.Linear default, near-zero last block layer)."""
    ens = FlowEnsemble(2, 8, 1, 64, 2, 8)
    flow = nflows_flow(2, 1, 64, 2, 8, 3.0, False, seed=0)
    net = flow._transform._transforms[1].autoregressive_net
    made = ens.mades[0]
    assert made.w_blocks[1].abs().max() <= 1e-3  # zero-initialised residual output
    bound = 1 / np.sqrt(64)
    assert made.w_blocks[0].abs().max() <= bound and made.w_blocks[0].abs().max() > 0.9 * bound
    assert made.w_out.shape[1:] == net.final_layer.weight.shape
    assert made.w_in.shape[1:] == net.initial_layer.weight.shape
