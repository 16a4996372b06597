"""Bring your own model: members from zuko or nflows flows, torch modules and scikit-learn.

genval combines any M density estimators that give log-densities and samples
(:class:`genval.members.Members`); the paper notes that the method is agnostic to the estimator
(Sec. 5). The adapters here turn models trained elsewhere into members:

* :class:`TorchMembers`: any objects with ``log_prob(x) -> (N,)`` and ``sample(n) -> (n, D)``
  (nflows ``Flow``, a ``torch.distributions.Distribution``, your own ``nn.Module``);
* :class:`NflowsMembers`: nflows flows (the same calls, named for discovery);
* :class:`ZukoMembers`: zuko flows (``flow()`` is the distribution);
* :class:`SklearnMembers`: scikit-learn density estimators with ``score_samples`` and
  ``sample`` (``KernelDensity``, ``GaussianMixture``, ``BayesianGaussianMixture``).

:func:`as_members` picks the adapter from the models. A run directory builds its members from
a config hook, ``members.kind: python`` with ``members.factory: "module:function"``
(:func:`build_members`): the function gets the training events and returns members (or models
for :func:`as_members`). A generator that can only sample (a GAN) has no density to combine:
train density members on its output instead, and test them (docs/pipeline.md, "Bring your own
model").

Sampling is reproducible: each call draws a seed from the numpy generator it is given and runs
the model's own sampler under that seed (torch's RNG forked, scikit-learn's ``random_state``).

References:
    Badaracco et al., Step 1 and Sec. 5 (any density estimator can be a member).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from genval._validation import as_events, as_rng
from genval.errors import InputError
from genval.members import Members

__all__ = [
    "TorchMembers",
    "NflowsMembers",
    "ZukoMembers",
    "SklearnMembers",
    "as_members",
    "FACTORY_PATTERN",
    "load_factory",
    "build_members",
]

BATCH_EVENTS = 65_536
"""Events per model call, bounding the memory of one forward pass."""

FACTORY_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
"""``module:function`` (dotted names on both sides) of ``members.factory``."""


def _models(models: Any) -> list[Any]:
    """``models`` as a list: one model, or a collection of them (a list, an ``nn.ModuleList``)."""
    single = _kind(models) is not None or isinstance(models, (str, bytes, np.ndarray)) \
        or not hasattr(models, "__iter__")
    out = [models] if single else list(models)
    if not out:
        raise InputError("need at least one model")
    return out


class TorchMembers:
    """Members from torch models with ``log_prob(x) -> (N,)`` and ``sample(n) -> (n, D)``.

    Each model is evaluated in ``eval()`` mode (batch-norm layers of flows use their running
    statistics; a model's training flag is restored afterwards), without gradients, on the
    device and in the dtype of its parameters; log-densities come back as float64.
    ``torch.distributions.Distribution`` objects are sampled with ``sample((n,))``.

    Args:
        models: the M models.
        n_features: D; by default inferred from one sample of the first model.
        batch_events: events per model call.
    """

    def __init__(self, models: Any, *, n_features: int | None = None,
                 batch_events: int = BATCH_EVENTS) -> None:
        import torch  # the adapters of torch models load torch only when used

        self._torch = torch
        self._models = _models(models)
        for m, model in enumerate(self._models):
            self._check_model(m, model)
        self._batch = max(1, int(batch_events))
        if n_features is None:
            n_features = int(self._draw(0, 2, 0).shape[1])
        self._n_features = int(n_features)

    def _check_model(self, m: int, model: Any) -> None:
        missing = [name for name in ("log_prob", "sample") if not callable(getattr(model, name,
                                                                                  None))]
        if missing:
            raise InputError(f"model {m} ({type(model).__name__}) has no {' or '.join(missing)}"
                             "; TorchMembers needs log_prob(x) -> (N,) and sample(n) -> (n, D)")

    @property
    def n_members(self) -> int:
        return len(self._models)

    @property
    def n_features(self) -> int:
        return self._n_features

    def _distribution(self, model: Any) -> Any:
        """The object whose ``log_prob`` and ``sample`` are called (the model itself here)."""
        return model

    def _placement(self, model: Any) -> tuple[Any, Any]:
        """Device and dtype of the model's first parameter or buffer, else of the first tensor
        it holds (a torch distribution's ``loc``); the CPU and torch's default dtype without."""
        torch = self._torch
        for name in ("parameters", "buffers"):
            tensors = getattr(model, name, None)
            first = next(iter(tensors()), None) if callable(tensors) else None
            if first is not None:
                return first.device, first.dtype
        for value in vars(model).values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.device, value.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    @contextlib.contextmanager
    def _evaluating(self, model: Any) -> Iterator[None]:
        training = getattr(model, "training", None)
        if training:
            model.eval()
        try:
            with self._torch.no_grad():
                yield
        finally:
            if training:
                model.train()

    def log_prob(self, x: ArrayLike) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features, min_events=0)
        out = np.empty((self.n_members, len(events)))
        for m, model in enumerate(self._models):
            device, dtype = self._placement(model)
            with self._evaluating(model):
                dist = self._distribution(model)
                for start in range(0, len(events), self._batch):
                    block = self._torch.as_tensor(events[start:start + self._batch],
                                                  dtype=dtype, device=device)
                    values = dist.log_prob(block)
                    values = values.detach().cpu().double().numpy().reshape(-1)
                    if values.shape != (len(block),):
                        raise InputError(f"model {m} log_prob returned {values.size} values for "
                                         f"{len(block)} events")
                    out[m, start:start + len(block)] = values
        return out

    def _sample_once(self, dist: Any, n: int) -> Any:
        if isinstance(dist, self._torch.distributions.Distribution):
            return dist.sample((n,))
        return dist.sample(n)

    def _draw(self, member: int, n: int, seed: int) -> NDArray[np.float64]:
        model = self._models[member]
        device, _ = self._placement(model)
        devices = [device] if device.type == "cuda" else []
        parts = []
        with self._torch.random.fork_rng(devices=devices), self._evaluating(model):
            self._torch.manual_seed(seed)
            dist = self._distribution(model)
            for start in range(0, n, self._batch):
                size = min(self._batch, n - start)
                drawn = self._sample_once(dist, size)
                parts.append(np.asarray(drawn.detach().cpu().double().numpy()).reshape(size, -1))
        return np.concatenate(parts) if parts else np.empty((0, 0))

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        """``n`` events of member ``member``, under a seed drawn from ``rng``."""
        if not 0 <= member < self.n_members:
            raise InputError(f"member {member} out of range 0..{self.n_members - 1}")
        seed = int(as_rng(rng).integers(0, 2**63 - 1))
        if int(n) == 0:
            return np.empty((0, self.n_features))
        draws = self._draw(member, int(n), seed)
        return as_events(draws, n_features=self.n_features, min_events=0,
                         name=f"samples of member {member}")


class NflowsMembers(TorchMembers):
    """Members from nflows ``Flow`` objects (``log_prob(x)`` and ``sample(n)``).

    The flows are evaluated in ``eval()`` mode, so nflows' batch-norm transforms use their
    running statistics.
    """


class ZukoMembers(TorchMembers):
    """Members from zuko flows: ``flow()`` is the distribution, ``log_prob`` and ``sample``.

    Unconditional flows only (``flow()`` without a context).
    """

    def _check_model(self, m: int, model: Any) -> None:
        if not callable(model):
            raise InputError(f"model {m} ({type(model).__name__}) is not a zuko flow: calling "
                             "it must return a distribution")

    def _distribution(self, model: Any) -> Any:
        return model()


class SklearnMembers:
    """Members from fitted scikit-learn density estimators (``score_samples`` and ``sample``).

    ``KernelDensity``, ``GaussianMixture`` and ``BayesianGaussianMixture`` qualify.
    ``score_samples`` is the log-density. Samples are drawn under a seed from the generator
    given to :meth:`sample` (through ``random_state``; a mixture's own ``random_state`` is set
    for the call and restored) and shuffled: a mixture returns its draws grouped by component.

    Args:
        estimators: the M fitted estimators.
        n_features: D; by default the estimators' ``n_features_in_``.
    """

    def __init__(self, estimators: Any, *, n_features: int | None = None) -> None:
        self._estimators = _models(estimators)
        for m, est in enumerate(self._estimators):
            missing = [name for name in ("score_samples", "sample")
                       if not callable(getattr(est, name, None))]
            if missing:
                raise InputError(f"estimator {m} ({type(est).__name__}) has no "
                                 f"{' or '.join(missing)}")
        if n_features is None:
            found = {getattr(est, "n_features_in_", None) for est in self._estimators}
            if None in found:
                raise InputError("an estimator is not fitted (no n_features_in_); fit every "
                                 "estimator before wrapping it, or pass n_features")
            if len(found) != 1:
                raise InputError(f"estimators were fitted on different feature counts {found}")
            n_features = int(found.pop())
        self._n_features = int(n_features)

    @property
    def n_members(self) -> int:
        return len(self._estimators)

    @property
    def n_features(self) -> int:
        return self._n_features

    def log_prob(self, x: ArrayLike) -> NDArray[np.float64]:
        events = as_events(x, n_features=self.n_features, min_events=0)
        out = np.empty((self.n_members, len(events)))
        for m, est in enumerate(self._estimators):
            values = np.asarray(est.score_samples(events), dtype=np.float64).reshape(-1)
            if values.shape != (len(events),):
                raise InputError(f"estimator {m} score_samples returned {values.size} values "
                                 f"for {len(events)} events")
            out[m] = values
        return out

    def sample(self, n: int, member: int, rng: np.random.Generator | int | None = None
               ) -> NDArray[np.float64]:
        if not 0 <= member < self.n_members:
            raise InputError(f"member {member} out of range 0..{self.n_members - 1}")
        gen = as_rng(rng)
        seed = int(gen.integers(0, 2**31 - 1))  # scikit-learn seeds are 32-bit
        n = int(n)
        if n == 0:
            return np.empty((0, self.n_features))
        est = self._estimators[member]
        if "random_state" in inspect.signature(est.sample).parameters:
            drawn = est.sample(n, random_state=seed)
        else:
            saved = getattr(est, "random_state", None)
            est.random_state = seed
            try:
                drawn = est.sample(n)
            finally:
                est.random_state = saved
        if isinstance(drawn, tuple):  # mixtures return (X, component labels)
            drawn = drawn[0]
        draws = np.asarray(drawn, dtype=np.float64).reshape(n, self.n_features)
        return as_events(draws[gen.permutation(n)], n_features=self.n_features, min_events=0,
                         name=f"samples of member {member}")


def _is_zuko(model: Any) -> bool:
    """A zuko flow (a lazy distribution: calling it gives the distribution)."""
    return type(model).__module__.split(".", 1)[0] == "zuko" and callable(model) \
        and not callable(getattr(model, "log_prob", None))


def as_members(models: Any, *, n_features: int | None = None) -> Members:
    """Members from ``models``: a :class:`~genval.members.Members` as it is, else a model or a
    sequence of M models of one kind wrapped by its adapter.

    zuko flows give :class:`ZukoMembers`; objects with ``score_samples`` and ``sample``
    (scikit-learn) :class:`SklearnMembers`; objects with ``log_prob`` and ``sample`` (nflows,
    torch distributions, your own modules) :class:`TorchMembers`.

    Raises:
        InputError: models of mixed kinds, or of none of these.
    """
    if isinstance(models, Members):
        return models
    items = _models(models)
    kinds = {_kind(model) for model in items}
    if len(kinds) != 1:
        raise InputError(f"models of different kinds {sorted(k or '?' for k in kinds)}; wrap "
                         "each kind with its adapter and combine them in one Members class")
    kind = kinds.pop()
    if kind is None:
        raise InputError(f"cannot use {type(items[0]).__name__} as a member: it needs "
                         "log_prob and sample (torch, nflows), score_samples and sample "
                         "(scikit-learn), or to be a zuko flow")
    adapter = {"zuko": ZukoMembers, "sklearn": SklearnMembers, "torch": TorchMembers}[kind]
    return adapter(items, n_features=n_features)


def _kind(model: Any) -> str | None:
    if _is_zuko(model):
        return "zuko"
    if callable(getattr(model, "score_samples", None)) and callable(getattr(model, "sample",
                                                                            None)):
        return "sklearn"
    if callable(getattr(model, "log_prob", None)) and callable(getattr(model, "sample", None)):
        return "torch"
    return None


def load_factory(spec: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (``members.factory``).

    Raises:
        InputError: a malformed name, a module that fails to import, or no such function.
    """
    if not FACTORY_PATTERN.fullmatch(spec):
        raise InputError(f"members.factory {spec!r} must be 'module:function'")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 -- any failure of user code is reported as such
        raise InputError(f"members.factory: cannot import {module_name!r}: "
                         f"{type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise InputError(f"members.factory: {module_name!r} has no {attribute!r}")
    if not callable(target):
        raise InputError(f"members.factory {spec!r} is not callable")
    return target


def build_members(spec: str, x_train: NDArray[np.float64], *, n_members: int, seed: int,
                  device: str = "cpu", event_weights: NDArray[np.float64] | None = None
                  ) -> Members:
    """Call the factory ``spec`` and check what it returns.

    The factory is called as ``factory(x_train, n_members=M, seed=S, device=DEVICE)``, each
    keyword passed only if its signature takes it (or ``**kwargs``), and with
    ``event_weights=W`` when the training events are weighted. It may return members or
    models for :func:`as_members`. It is called again whenever a stage needs the members, so
    it must return the same members every time (load trained models from files, or train
    deterministically from ``seed``); the pipeline checks this.

    Raises:
        InputError: the factory fails, returns members of another size or dimension, or the
            events are weighted and it takes no ``event_weights`` (they would be ignored).
    """
    factory = load_factory(spec)
    offered: dict[str, Any] = {"n_members": n_members, "seed": seed, "device": device}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if event_weights is not None:
        if not (takes_any or "event_weights" in parameters):
            raise InputError(f"the training events are weighted but members.factory {spec!r} "
                             "takes no event_weights: the weights would be ignored")
        offered["event_weights"] = event_weights
    kwargs = {k: v for k, v in offered.items() if takes_any or k in parameters}
    members = as_members(factory(x_train, **kwargs), n_features=x_train.shape[1])
    if members.n_members != n_members:
        raise InputError(f"members.factory {spec!r} returned {members.n_members} members but "
                         f"members.n_members is {n_members}")
    if members.n_features != x_train.shape[1]:
        raise InputError(f"members.factory {spec!r} returned members of {members.n_features} "
                         f"features for events of {x_train.shape[1]}")
    return members
