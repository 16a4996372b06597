"""More events than the training set: exact draws from f(x; ŵ) with the density and its band.

The band is paper Eq. (3), ``σ(x) = sqrt(F(x)ᵀ Cov(ŵ) F(x))``, at every drawn event.

References:
    Badaracco et al., Eq. (3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genval.identification import PRIOR_SHARE_FLAG
from genval.members import Members
from genval.row_scaling import scale_log_rows
from genval.sampling import sample_mixture
from genval.wifi import WeightFit

__all__ = ["OversampledEvents", "oversample"]


@dataclass(frozen=True)
class OversampledEvents:
    """Events drawn from the fitted mixture with the density and its σ (Eq. 3) at each event.

    Attributes:
        x, density, density_std: the events, f̂ and σ_f̂ (Eq. 3) at each.
        acceptance_rate: events per proposal of the sampler.
        negative_mass: fraction of ``∫|f̂|`` where ``f̂ < 0`` (events there follow ``max(f̂, 0)``).
        negative_mass_error: its Monte-Carlo standard error.
        sampler: :meth:`genval.sampling.MixtureSample.diagnostics` (envelope, violations, ...).
        prior_share: share of σ_f̂² that comes from the weight fit's ridge prior at each event
            (:meth:`genval.wifi.WeightFit.density_band`; 0 for a plain fit).
    """

    x: NDArray[np.float64]
    density: NDArray[np.float64]
    density_std: NDArray[np.float64]
    acceptance_rate: float
    negative_mass: float = 0.0
    negative_mass_error: float = 0.0
    sampler: dict[str, Any] = field(default_factory=dict)
    prior_share: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    @property
    def flagged(self) -> NDArray[np.bool_]:
        """Events whose band is mostly the ridge prior's."""
        return self.prior_share > PRIOR_SHARE_FLAG


def oversample(members: Members, fit: WeightFit, n: int,
               rng: np.random.Generator | int | None = None) -> OversampledEvents:
    """Draw ``n`` events exactly from ``f(x; ŵ)`` and attach ``f̂(x)`` and ``σ_f̂(x)``.

    Uses the exact signed-mixture sampler (:func:`genval.sampling.sample_mixture`); the member
    densities it computed for the acceptance test are reused for the density and its band.
    Where f̂ < 0 the events follow its positive part; the sampler measures that negative mass
    and warns (:class:`~genval.errors.NegativeDensityWarning`).
    """
    drawn = sample_mixture(members, fit.weights, n, rng)
    # Row-scaled member densities avoid underflow; f̂ and σ are linear in the row scale.
    scaled, log_scale = scale_log_rows(drawn.log_f)
    scale = np.exp(log_scale)
    band = fit.density_band(scaled)
    return OversampledEvents(x=drawn.x, density=fit.density(scaled) * scale,
                             density_std=band.std * scale,
                             acceptance_rate=drawn.acceptance_rate,
                             negative_mass=drawn.negative_mass,
                             negative_mass_error=drawn.negative_mass_error,
                             sampler=drawn.diagnostics(), prior_share=band.prior_share)
