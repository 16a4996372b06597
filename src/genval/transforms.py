"""Per-feature transforms: the members learn ``y = T(x)``, every density stays in units of ``x``.

Collider features are far from the Gaussians a flow or a kernel handles well: a transverse
momentum falls steeply over decades and is positive, a pseudorapidity is cut to a window. A
bijection per feature — ``log`` for a positive spectrum, ``bounded`` (a logit) for a feature on
an interval — maps them to the real line, where the members are trained. Densities change by
the Jacobian of the map,

    f_x(x) = f_y(T(x)) · |det dT/dx| = f_y(T(x)) · Π_j |dT_j/dx_j|,

so :class:`TransformedMembers` returns log f_x: the weight fit (Eqs. 1–2), the band (Eq. 3),
sampling, coverage (Eq. 4) and the test (Eq. 5) all work in physical units without change, and
samples come back as ``x = T⁻¹(y)``. The Jacobian is a common factor per event: it cancels in
every ratio ``F_n,k / f_n``, so ŵ and Cov(ŵ) do not depend on it, and with the kernels of the
alternative defined in the same transformed space (:class:`genval.gof.KernelBasis` with a
``transform``) neither does the test statistic t (docs/method.md, "Feature transforms").

Maps (the ``data.transforms`` entries of the configuration):

* ``identity``: ``y = x``.
* ``log``: ``y = log(x − x0)`` on ``x > x0`` (``x0 = 0`` unless ``{log: {shift: x0}}``).
* ``bounded: [lo, hi]``: ``y = log((x − lo) / (hi − x))``, the logit of ``(x − lo)/(hi − lo)``,
  on ``lo < x < hi``.

A periodic treatment is refused (:data:`PERIODIC_MESSAGE`): no bijection maps a circle onto the
real line, and the usual periodic feature, a jet's azimuth φ, carries no information.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1 (the members' densities) and Eqs. (1)–(5) (every density enters through F).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_events, as_rng
from genval.errors import InputError
from genval.members import Members, check_context, n_context_of

__all__ = [
    "FeatureMap",
    "Identity",
    "Log",
    "Bounded",
    "FeatureTransform",
    "TransformedMembers",
    "parse_feature_map",
    "PERIODIC_MESSAGE",
    "TRANSFORM_FORMAT",
]

TRANSFORM_FORMAT = "genval.transform/1"
"""The ``format`` tag of a saved :class:`FeatureTransform` (``models/transform.json``)."""

PERIODIC_MESSAGE = (
    "a periodic transform is not supported: no bijection maps a circle onto the real line "
    "that the members' densities live on (any cut leaves a seam the flow must model). For a "
    "jet's azimuth phi, drop the feature from data.features: the physics is symmetric under a "
    "rotation about the beam, so a single object's phi is uniform and carries no information "
    "about the model. If an azimuthal difference matters, use |delta phi| with "
    "{bounded: [0, 3.1416]}, or phi itself with {bounded: [-3.1416, 3.1416]} (a density on an "
    "interval, not on a circle)."
)


class FeatureMap(Protocol):
    """A strictly increasing bijection of one feature's open domain onto the real line."""

    def forward(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """``y = T(x)`` for ``x`` inside the domain."""
        ...

    def inverse(self, y: NDArray[np.float64]) -> NDArray[np.float64]:
        """``x = T⁻¹(y)``, kept strictly inside the domain (rounding never reaches an edge)."""
        ...

    def log_abs_det(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """``log |dT/dx|`` at ``x`` inside the domain."""
        ...

    def outside(self, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Which values lie outside the open domain."""
        ...

    @property
    def domain(self) -> str:
        """The open domain, for messages."""
        ...

    def to_config(self) -> str | dict[str, Any]:
        """The canonical ``data.transforms`` entry of this map."""
        ...

    def describe(self, name: str) -> str:
        """The transformed coordinate in words, e.g. ``log(pt)``."""
        ...


@dataclass(frozen=True)
class Identity:
    """``y = x`` on the real line."""

    def forward(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array(x, dtype=np.float64, copy=True)

    def inverse(self, y: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array(y, dtype=np.float64, copy=True)

    def log_abs_det(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.zeros(np.shape(x))

    def outside(self, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        return ~np.isfinite(x)

    @property
    def domain(self) -> str:
        return "(-inf, inf)"

    def to_config(self) -> str:
        return "identity"

    def describe(self, name: str) -> str:
        return name


@dataclass(frozen=True)
class Log:
    """``y = log(x − shift)`` on ``x > shift``; ``log |dT/dx| = −log(x − shift)``.

    For a steeply falling positive spectrum (pT, a mass): the members see a smooth, nearly
    symmetric distribution, and a kernel of fixed width in ``y`` has a width proportional to
    ``x − shift`` in ``x``, a relative resolution.
    """

    shift: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.shift):
            raise InputError(f"log shift must be finite, got {self.shift}")

    def forward(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.log(np.asarray(x, dtype=np.float64) - self.shift)

    def inverse(self, y: NDArray[np.float64]) -> NDArray[np.float64]:
        with np.errstate(over="ignore"):
            x = self.shift + np.exp(np.asarray(y, dtype=np.float64))
        # exp underflows to 0 (or the sum rounds to the shift) far in the lower tail, and
        # overflows beyond y = 709.8: the nearest representable value in the domain stands in.
        return np.clip(x, np.nextafter(self.shift, np.inf), np.finfo(np.float64).max)

    def log_abs_det(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return -np.log(np.asarray(x, dtype=np.float64) - self.shift)

    def outside(self, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        x = np.asarray(x, dtype=np.float64)
        # x - shift can round to 0 for x just above a large shift: outside for the log.
        return ~(np.isfinite(x) & (x - self.shift > 0))

    @property
    def domain(self) -> str:
        return f"({self.shift:g}, inf)"

    def to_config(self) -> str | dict[str, Any]:
        return "log" if self.shift == 0 else {"log": {"shift": self.shift}}

    def describe(self, name: str) -> str:
        if self.shift == 0:
            return f"log({name})"
        return f"log({name} {'-' if self.shift > 0 else '+'} {abs(self.shift):g})"


@dataclass(frozen=True)
class Bounded:
    """``y = log((x − lo) / (hi − x))`` (the logit of ``(x − lo)/(hi − lo)``) on ``lo < x < hi``.

    ``log |dT/dx| = log(hi − lo) − log(x − lo) − log(hi − x)``. For a feature cut to a window
    (``|eta| < 2.5``): choose the bounds at (or slightly beyond) the selection cut, so that
    every event lies strictly inside.
    """

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise InputError(f"bounded needs finite lo < hi, got [{self.lo}, {self.hi}]")

    def forward(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        x = np.asarray(x, dtype=np.float64)
        # Both distances to the edges directly: logit((x - lo)/(hi - lo)) would lose the
        # digits of hi - x near hi.
        return np.log(x - self.lo) - np.log(self.hi - x)

    def inverse(self, y: NDArray[np.float64]) -> NDArray[np.float64]:
        y = np.asarray(y, dtype=np.float64)
        width = self.hi - self.lo
        # Measured from the nearer edge, so that the last digits are not lost near hi.
        with np.errstate(over="ignore"):
            near_lo = self.lo + width / (1.0 + np.exp(-y))
            near_hi = self.hi - width / (1.0 + np.exp(y))
        x = np.where(y < 0, near_lo, near_hi)
        return np.clip(x, np.nextafter(self.lo, self.hi), np.nextafter(self.hi, self.lo))

    def log_abs_det(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        x = np.asarray(x, dtype=np.float64)
        return np.log(self.hi - self.lo) - np.log(x - self.lo) - np.log(self.hi - x)

    def outside(self, x: NDArray[np.float64]) -> NDArray[np.bool_]:
        x = np.asarray(x, dtype=np.float64)
        return ~(np.isfinite(x) & (x - self.lo > 0) & (self.hi - x > 0))

    @property
    def domain(self) -> str:
        return f"({self.lo:g}, {self.hi:g})"

    def to_config(self) -> dict[str, Any]:
        return {"bounded": [self.lo, self.hi]}

    def describe(self, name: str) -> str:
        return f"logit({name} in ({self.lo:g}, {self.hi:g}))"


_FORMS = ('"identity", "log", {log: {shift: X0}} or {bounded: [LO, HI]} ("periodic" is '
          "refused: drop phi)")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{what} must be a number, got {value!r}")
    return float(value)


def parse_feature_map(spec: Any) -> FeatureMap:
    """The map of one ``data.transforms`` entry.

    Accepts ``"identity"``, ``"log"``, ``{"log": {"shift": x0}}`` and
    ``{"bounded": [lo, hi]}``.

    Raises:
        InputError: for ``"periodic"`` (with :data:`PERIODIC_MESSAGE`) and any other form.
    """
    if isinstance(spec, str):
        if spec == "identity":
            return Identity()
        if spec == "log":
            return Log()
        if spec == "periodic":
            raise InputError(PERIODIC_MESSAGE)
        if spec == "bounded":
            raise InputError("bounded needs its interval: {bounded: [LO, HI]}")
        raise InputError(f"unknown transform {spec!r}; use {_FORMS}")
    if isinstance(spec, Mapping) and len(spec) == 1:
        (kind, args), = spec.items()
        if kind == "log":
            if args is None:
                return Log()
            if not isinstance(args, Mapping) or set(args) - {"shift"}:
                raise InputError(f"log takes {{shift: X0}}, got {args!r}")
            return Log(_number(args.get("shift", 0.0), "log shift"))
        if kind == "bounded":
            if not isinstance(args, Sequence) or isinstance(args, str) or len(args) != 2:
                raise InputError(f"bounded takes [LO, HI], got {args!r}")
            return Bounded(_number(args[0], "bounded lo"), _number(args[1], "bounded hi"))
        if kind == "periodic":
            raise InputError(PERIODIC_MESSAGE)
    raise InputError(f"unknown transform {spec!r}; use {_FORMS}")


class FeatureTransform:
    """The per-feature maps of all D features, ``T(x) = (T_1(x_1), ..., T_D(x_D))``.

    Args:
        maps: one :class:`FeatureMap` per feature, in the events' column order.
        names: the feature names (for messages and descriptions); default ``x0, x1, ...``.

    Example:
        >>> t = FeatureTransform.from_spec({"pt": "log", "eta": {"bounded": [-2.5, 2.5]}},
        ...                                ["pt", "eta", "mass"])
        >>> y = t.forward(x)               # (N, 3); raises InputError outside the domains
        >>> log_jac = t.log_abs_det(x)     # (N,): log |det dT/dx|
    """

    def __init__(self, maps: Sequence[FeatureMap], names: Sequence[str] | None = None) -> None:
        if len(maps) < 1:
            raise InputError("a transform needs at least one feature")
        names = [f"x{j}" for j in range(len(maps))] if names is None else [str(n) for n in names]
        if len(names) != len(maps):
            raise InputError(f"{len(names)} names for {len(maps)} feature maps")
        self.maps: tuple[FeatureMap, ...] = tuple(maps)
        self.names: tuple[str, ...] = tuple(names)

    @classmethod
    def identity(cls, names: Sequence[str]) -> FeatureTransform:
        """No transform of any of ``names``."""
        return cls([Identity() for _ in names], names)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], names: Sequence[str]) -> FeatureTransform:
        """Maps for the features ``names`` from a ``data.transforms`` mapping (others identity).

        Raises:
            InputError: ``spec`` names a feature not in ``names`` (with the closest one), or
                an entry is not a valid map (:func:`parse_feature_map`, naming the feature).
        """
        unknown = [k for k in spec if k not in names]
        if unknown:
            lower = {n.lower(): n for n in names}
            hints = [f" (did you mean {lower[close[0]]!r}?)" if (
                close := difflib.get_close_matches(k.lower(), list(lower), n=1, cutoff=0.6))
                else "" for k in unknown]
            raise InputError("data.transforms names feature(s) not in the events: " + ", ".join(
                f"{k!r}{h}" for k, h in zip(unknown, hints, strict=True))
                + f"; features: {', '.join(names)}")
        maps: list[FeatureMap] = []
        for name in names:
            try:
                maps.append(parse_feature_map(spec[name]) if name in spec else Identity())
            except InputError as exc:
                raise InputError(f"data.transforms.{name}: {exc}") from None
        return cls(maps, names)

    @property
    def n_features(self) -> int:
        return len(self.maps)

    @property
    def is_identity(self) -> bool:
        """Whether every feature is left unchanged (then nothing needs wrapping)."""
        return all(isinstance(m, Identity) for m in self.maps)

    def check(self, x: ArrayLike, *, name: str = "events") -> NDArray[np.float64]:
        """``x`` as finite (N, D) float64 events inside every feature's domain.

        Raises:
            InputError: naming each feature with values outside its domain, how many, and
                the range they span.
        """
        events = as_events(x, n_features=self.n_features, min_events=0, name=name)
        problems = []
        for j, fmap in enumerate(self.maps):
            bad = fmap.outside(events[:, j])
            if bad.any():
                values = events[bad, j]
                problems.append(f"feature {self.names[j]!r}: {int(bad.sum())} of "
                                f"{events.shape[0]} values outside {fmap.domain} "
                                f"(they span [{values.min():.6g}, {values.max():.6g}])")
        if problems:
            raise InputError(f"{name} do not fit the feature transforms: " + "; ".join(problems)
                             + ". Fix data.transforms (e.g. bounds beyond the selection cut, a "
                             "log shift below the smallest value) or the selection")
        return events

    def forward(self, x: ArrayLike, *, name: str = "events") -> NDArray[np.float64]:
        """``y = T(x)``, (N, D), after :meth:`check`."""
        return self._forward(self.check(x, name=name))

    def _forward(self, events: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.is_identity:
            return events
        y = np.empty_like(events)
        for j, fmap in enumerate(self.maps):
            y[:, j] = fmap.forward(events[:, j])
        return y

    def inverse(self, y: ArrayLike) -> NDArray[np.float64]:
        """``x = T⁻¹(y)``, (N, D), every value strictly inside its feature's domain."""
        values = as_events(y, n_features=self.n_features, min_events=0, name="transformed events")
        if self.is_identity:
            return values
        x = np.empty_like(values)
        for j, fmap in enumerate(self.maps):
            x[:, j] = fmap.inverse(values[:, j])
        return x

    def log_abs_det(self, x: ArrayLike, *, name: str = "events") -> NDArray[np.float64]:
        """``log |det dT/dx|`` per event, (N,): the sum of the features' log-derivatives."""
        return self._log_abs_det(self.check(x, name=name))

    def _log_abs_det(self, events: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.zeros(events.shape[0])
        for j, fmap in enumerate(self.maps):
            if not isinstance(fmap, Identity):
                out += fmap.log_abs_det(events[:, j])
        return out

    def forward_log_det(self, x: ArrayLike, *, name: str = "events"
                        ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(T(x), log |det dT/dx|)`` with one domain check: what a density needs."""
        events = self.check(x, name=name)
        return self._forward(events), self._log_abs_det(events)

    def describe(self) -> list[str]:
        """The transformed coordinates in words, e.g. ``["log(pt)", "eta"]``."""
        return [m.describe(n) for m, n in zip(self.maps, self.names, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the schema of ``models/transform.json``)."""
        return {"format": TRANSFORM_FORMAT,
                "features": [{"name": n, "map": m.to_config()}
                             for n, m in zip(self.names, self.maps, strict=True)]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureTransform:
        """The transform :meth:`to_dict` wrote.

        Raises:
            InputError: not a genval transform, or an entry that is not a valid map.
        """
        if not isinstance(data, Mapping) or data.get("format") != TRANSFORM_FORMAT:
            raise InputError(f"not a genval feature transform (format "
                             f"{data.get('format') if isinstance(data, Mapping) else None!r}, "
                             f"expected {TRANSFORM_FORMAT!r})")
        try:
            features = list(data["features"])
            names = [str(f["name"]) for f in features]
            return cls([parse_feature_map(f["map"]) for f in features], names)
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed feature transform: {exc!r}") from None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, FeatureTransform) and self.maps == other.maps
                and self.names == other.names)

    def __repr__(self) -> str:
        return f"FeatureTransform({', '.join(self.describe())})"


class TransformedMembers:
    """Members on ``y = T(x)`` seen in physical units: ``log f_x(x) = log f_y(T(x)) + log|J(x)|``.

    Implements the :class:`~genval.members.Members` protocol in ``x``, so every statistic of
    genval (ŵ, Cov(ŵ), the band, sampling, coverage, the GoF) works on physical events and
    reports physical densities. Samples are ``T⁻¹`` of the base members' samples.

    Conditional members ``f_y(y | u)`` trained on transformed contexts ``u = T_c(c)`` take a
    ``context_transform`` T_c: contexts are given in physical units and mapped by it before
    they reach the base members. The density stays one in x (no Jacobian of c: ``f(x | c)``
    is ``f_y(T(x) | T_c(c)) |J(x)|``, normalised in x at every c).

    Args:
        base: members trained on transformed events ``T(x)``.
        transform: the transform ``T`` they were trained under.
        context_transform: the transform of the contexts (None: contexts passed unchanged).

    Raises:
        InputError: the feature counts differ; in :meth:`log_prob`, events outside a feature's
            domain (a density of zero there would be a configuration error, not a value).
    """

    def __init__(self, base: Members, transform: FeatureTransform,
                 context_transform: FeatureTransform | None = None) -> None:
        if base.n_features != transform.n_features:
            raise InputError(f"members have {base.n_features} features, the transform "
                             f"{transform.n_features}")
        if context_transform is not None and context_transform.n_features != n_context_of(base):
            raise InputError(f"members take {n_context_of(base)} context features, the context "
                             f"transform {context_transform.n_features}")
        self.base = base
        self.transform = transform
        self.context_transform = (None if context_transform is None
                                  or context_transform.is_identity else context_transform)

    @property
    def n_members(self) -> int:
        return self.base.n_members

    @property
    def n_features(self) -> int:
        return self.base.n_features

    @property
    def n_context(self) -> int:
        """The base members' context features (0: unconditional). Contexts are mapped by
        ``context_transform`` alone: T acts on x, so the Jacobian is that of x."""
        return n_context_of(self.base)

    def _context(self, ctx: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
        if ctx is None or self.context_transform is None:
            return ctx
        return self.context_transform.forward(ctx, name="contexts")

    def log_prob(self, x: ArrayLike, *, context: ArrayLike | None = None
                 ) -> NDArray[np.float64]:
        y, log_det = self.transform.forward_log_det(x)
        ctx = self._context(check_context(self.n_context, context, y.shape[0]))
        log_f = np.asarray(self.base.log_prob(y) if ctx is None
                           else self.base.log_prob(y, context=ctx), dtype=np.float64)
        # The Jacobian is one factor per event, the same for every member.
        return log_f + log_det[None, :]

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None, *,
               context: ArrayLike | None = None) -> NDArray[np.float64]:
        ctx = self._context(check_context(self.n_context, context, int(n), broadcast=True))
        draws = (self.base.sample(n, member, as_rng(rng)) if ctx is None
                 else self.base.sample(n, member, as_rng(rng), context=ctx))
        return self.transform.inverse(draws)

    def __repr__(self) -> str:
        ctx = "" if self.context_transform is None else f", {self.context_transform!r}"
        return f"TransformedMembers({self.base!r}, {self.transform!r}{ctx})"
