"""The run configuration: a YAML file validated by pydantic.

Every field has a default, so an empty file is a valid configuration (the paper's toy study on
generated Gaussian data). Unknown or mistyped keys are errors that name the key and suggest the
closest valid one; nothing is silently ignored.

Example::

    data:
      path: events.root:Events
      features: [pt, eta]
    members:
      n_members: 20
    gof:
      n_toys: 500

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Sec. 3 (the defaults of :class:`FlowConfig`, :class:`GofConfig` and the demo presets).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genval._paths import check_relative_output
from genval._validation import check_device
from genval.compute import ComputeSettings, SlurmSettings, check_scheduler
from genval.errors import InputError
from genval.paper import PAPER_TOY_MEAN, PAPER_TOY_STD

if TYPE_CHECKING:
    from genval.conditional import ContextBins

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "GaussianSource",
    "SplitsConfig",
    "MembersConfig",
    "FlowConfig",
    "KDEConfig",
    "WifiConfig",
    "SampleConfig",
    "CoverageConfig",
    "GofConfig",
    "ReportConfig",
    "ComputeConfig",
    "SlurmConfig",
    "ContextConfig",
    "load_config",
    "parse_config",
    "dump_config",
    "config_hash",
    "config_schema",
    "RUNTIME_KEYS",
    "AUTO",
    "with_overrides",
]

SplitSpec = float | tuple[float, float]
"""A split given as a fraction of the events, or as a ``[start, stop]`` range of fractions."""
AUTO = "auto"
"""The value of keys whose default adapts to the data (``splits.centres``): resolved by
:mod:`genval.pipeline.adapt` once the number of events is known, and recorded in the run's
metadata."""

SPLIT_NAMES = ("train", "weight_fit", "centres", "test")
RESERVED_SAMPLE_NAMES = ("density.npz", "sampler.json")
"""Files the sample stage writes beside ``sample.output`` (f̂ and σ_f̂; the diagnostics)."""
VARIANTS = ("single", "frozen", "ensemble")
"""GoF variants: one member; the ensemble at ŵ frozen; the ensemble with its uncertainty."""


class ConfigError(InputError):
    """A configuration that cannot be used: unknown key, wrong type, inconsistent sections."""


class _Section(BaseModel):
    # extra="forbid" turns a typo into an error instead of a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class GaussianSource(_Section):
    """Generated events from a diagonal Gaussian (paper Eq. 6), used when ``data.path`` is unset."""

    mean: list[float] = Field(
        default_factory=lambda: list(PAPER_TOY_MEAN), description="per-feature mean (paper Eq. 6)")
    std: list[float] = Field(
        default_factory=lambda: list(PAPER_TOY_STD), description="per-feature standard deviation")
    n_events: int = Field(100_000, gt=0, description="events to generate")

    @model_validator(mode="after")
    def _same_length(self) -> GaussianSource:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean ({len(self.mean)}) and std ({len(self.std)}) must have the "
                             "same non-zero length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class DataConfig(_Section):
    """Where the events come from.

    Attributes:
        path: ``file.npy``, ``file.npz[:key]``, ``file.csv``, ``file.parquet``,
            ``file.h5:dataset`` or ``file.root:tree``, or a list of them (one format), read
            as one table in order; file names may be glob patterns (``dir/*.root:Events``,
            matches in sorted order; a pattern matching nothing is an error). ROOT files are
            read with ``uproot.concatenate``. ``None`` generates :attr:`generate`.
        features: feature (column, branch or alias) names to read, in order; ``None`` reads
            every column of the file (except :attr:`weight`; aliases only when named here).
        weight: the column (branch or alias) of ``path`` holding per-event weights
            (Monte-Carlo weights, finite, possibly negative), read with the features, cut by
            the same selection and never one of them; ``None``: unweighted events.
            ``test_path`` is read with the same column when it has one (the GoF test refuses
            weighted test events), unweighted otherwise.
        test_path: optional separate file (or list) for the test split (then ``splits.test``
            must be unset); it must not be a file the other splits come from.
        tree: the ROOT tree of ``.root`` entries written without ``:tree``.
        aliases: name -> expression of derived columns (``pt_gev: pt / 1000``), usable as
            features, weight and in the selection (uproot's ``aliases=`` for ROOT).
        selection: a cut (``pt > 20 and abs(eta) < 2.4``) applied to every file, the test
            file included: uproot's ``cut=`` for ROOT TTrees, genval's evaluator of the same
            grammar (:mod:`genval.io.expressions`) for every other format.
        generate: the generated source used when ``path`` is ``None``.
        transforms: per-feature maps applied before training (:mod:`genval.transforms`):
            ``{feature: "log" | "identity" | {log: {shift: X0}} | {bounded: [LO, HI]}}``;
            features not named are left unchanged, ``"periodic"`` is refused (drop phi).
            Every density, band, sample and test result stays in physical units.
        labels: display label per feature name for the figures (mathtext allowed);
            features without one are labelled by their name.
        units: unit string per feature name (``"GeV"``); shown as ``label [unit]``.
    """

    path: str | list[str] | None = Field(
        None, description="FILE.{npy,npz,csv,parquet} | FILE.h5:DATASET | FILE.root:TREE, or a "
                          "list of them; globs allowed; null: generate")
    features: list[str] | None = Field(
        None, description="feature (column, branch, alias) names to read, in order; null: all "
                          "columns")
    weight: str | None = Field(
        None, description="column (branch, alias) of per-event weights, possibly negative; not "
                          "a feature; null: unweighted")
    test_path: str | list[str] | None = Field(
        None, description="separate file(s) for the test events (then splits.test must be "
                          "null)")
    tree: str | None = Field(None, description="ROOT tree of .root files given without :TREE")
    aliases: dict[str, str] = Field(
        default_factory=dict, description="NAME: EXPRESSION derived columns, usable as "
                                          "features and in the selection")
    selection: str | None = Field(
        None, description="cut applied to every input, e.g. 'pt > 20 and abs(eta) < 2.4'; "
                          "null: keep all")
    generate: GaussianSource = Field(
        default_factory=GaussianSource, description="the source used when path is null")
    transforms: dict[str, Any] = Field(
        default_factory=dict, description="per-feature map before training, {FEATURE: log | "
        "identity | {log: {shift: X0}} | {bounded: [LO, HI]}}; densities stay in physical units")

    @field_validator("transforms")
    @classmethod
    def _known_maps(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Canonical entries ("log" and {log: {shift: 0}} are one map), each validated here so
        # that a typo fails when the config is read, not after training.
        from genval.transforms import parse_feature_map

        out = {}
        for name, spec in value.items():
            try:
                out[str(name)] = parse_feature_map(spec).to_config()
            except InputError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return out
    labels: dict[str, str] = Field(
        default_factory=dict, description="feature -> axis label in figures (matplotlib "
                                          "mathtext allowed, e.g. '$p_T$ of jet 1')")
    units: dict[str, str] = Field(
        default_factory=dict, description="feature -> unit shown on figure axes, e.g. GeV")

    @field_validator("features")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("features must name at least one feature (or be omitted)")
            dupes = sorted({v for v in value if value.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate feature names {dupes}")
        return value

    @field_validator("path", "test_path")
    @classmethod
    def _known_formats(cls, value: str | list[str] | None) -> str | list[str] | None:
        from genval.io import parse_spec

        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of files; give at least one (or null)")
            if len({parse_spec(v).fmt for v in value}) > 1:
                raise ValueError(f"the files {value} mix formats; give files of one format")
        elif value is not None:
            parse_spec(value)
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases_parse(cls, value: dict[str, str]) -> dict[str, str]:
        from genval.io.expressions import Expression, check_alias_name

        for name, text in value.items():
            check_alias_name(name, "data.aliases")
            Expression(text, what=f"data.aliases.{name}")
        return value

    @field_validator("selection")
    @classmethod
    def _selection_parses(cls, value: str | None) -> str | None:
        from genval.io.expressions import Expression

        if value is not None and not Expression(value, what="data.selection").names:
            raise ValueError(f"data.selection {value!r} uses no column: it would keep every "
                             "event or none")
        return value

    @model_validator(mode="after")
    def _file_keys_need_files(self) -> DataConfig:
        if self.path is None and self.test_path is None:
            unused = [k for k in ("selection", "tree") if getattr(self, k) is not None]
            unused += ["aliases"] if self.aliases else []
            if unused:
                # The generated source has a known truth (the coverage study's O*); a cut
                # would change it, so it is refused rather than silently ignored.
                raise ValueError(f"data.{unused[0]} applies to files, but data.path is null "
                                 "(generated events)")
        return self

    def files(self, which: Literal["path", "test_path"] = "path") -> list[str]:
        """``path`` (or ``test_path``) as a list of specifications (empty when unset)."""
        value = getattr(self, which)
        return [] if value is None else [value] if isinstance(value, str) else list(value)

    @model_validator(mode="after")
    def _weight_is_not_a_feature(self) -> DataConfig:
        if self.weight is not None:
            if self.path is None:
                raise ValueError(f"weight {self.weight!r} needs data.path: generated events "
                                 "are unweighted")
            if self.features is not None and self.weight in self.features:
                raise ValueError(f"{self.weight!r} is both a feature and the weight column")
        return self


class SplitsConfig(_Section):
    """Disjoint train / weight-fit / kernel-centre / test splits (see :mod:`genval.splits`).

    Each split is a fraction of the events (shuffled with ``seed``), or a ``[start, stop]``
    range of fractions of the rows in file order. Fractions may not sum above 1 and ranges may
    not overlap: the test split never reaches training or the weight fit.
    """

    train: SplitSpec = Field(
        0.6, description="fraction (or [start, stop] range) of events to train the members")
    weight_fit: SplitSpec = Field(
        0.2, description="fraction (or range) to fit the weights ŵ and Cov(ŵ)")
    centres: SplitSpec | Literal["auto"] = Field(
        "auto", description="fraction (or range) to draw the GoF kernel centres from; auto: "
                            "0.01, more for small data sets (from train)")
    test: SplitSpec | None = Field(
        0.19, description="fraction (or range) held out for the GoF test; null: data.test_path")
    shuffle: bool = Field(True, description="shuffle the events before cutting the splits")
    min_events: int = Field(20, ge=1, description="the fewest events any split may hold")

    @model_validator(mode="after")
    def _consistent(self) -> SplitsConfig:
        from genval.splits import check_split_specs  # splits imports nothing from config

        specs = {n: getattr(self, n) for n in SPLIT_NAMES}
        auto = specs["centres"] == AUTO
        if auto:
            # auto takes its share from train when the others leave too little (resolved
            # once the number of events is known: genval.pipeline.adapt).
            specs["centres"] = None
        check_split_specs(specs)
        if auto and any(isinstance(v, (tuple, list)) for v in specs.values()):
            raise ValueError("splits.centres: auto needs fractions; with [start, stop] ranges "
                             "give centres a range too")
        return self


class FlowConfig(_Section):
    """Normalizing-flow members (paper Sec. 3: RQ-spline MAF, 4 layers, 16 blocks, 128, 15)."""

    layers: int = Field(4, ge=1, description="autoregressive RQ-spline layers")
    hidden: int = Field(128, ge=1, description="hidden features of each MADE")
    blocks: int = Field(16, ge=1, description="residual blocks of each MADE")
    bins: int = Field(15, ge=2, description="spline bins")
    learning_rate: float = Field(
        5e-6, gt=0, description="Adam learning rate (paper 5e-6 with its architecture)")
    batch_size: int = Field(512, ge=1, description="events per member per optimiser step")
    max_epochs: int = Field(1000, ge=1, description="upper limit on epochs")
    patience: int = Field(
        10, ge=1, description="early stopping: epochs without validation improvement")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="fraction of the train split held out for early stopping")
    bootstrap: bool = Field(
        True, description="train each member on its own bootstrap replica (paper)")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="float32 | bfloat16: network products in bf16 (~3x faster on "
        "CPUs with AVX512-BF16; densities stay float32)")


class KDEConfig(_Section):
    """Gaussian-KDE members on bootstrap replicas (:class:`genval.members.KDEMembers`)."""

    bandwidth: Literal["scott", "silverman"] | float = Field(
        "scott", description="scott | silverman | a width in (transformed) feature units")


class MembersConfig(_Section):
    """The M density estimators combined by the w_i f_i fit."""

    kind: Literal["flow", "kde", "python"] = Field(
        "flow", description="flow (normalizing flows) | kde (Gaussian KDEs, bootstrap replicas) "
                            "| python (members.factory)")
    n_members: int = Field(60, ge=1, description="ensemble size M")
    factory: str | None = Field(
        None, description="kind: python: module:function(x_train, n_members, seed, device) "
                          "returning the members (genval.adapters)",
        json_schema_extra={"pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"})
    flow: FlowConfig = Field(default_factory=FlowConfig, description="settings of kind: flow")
    kde: KDEConfig = Field(default_factory=KDEConfig, description="KDE settings (kind: kde)")

    @model_validator(mode="after")
    def _factory_with_python(self) -> MembersConfig:
        if self.kind == "python" and self.factory is None:
            raise ValueError("kind: python needs members.factory ('module:function')")
        if self.kind != "python" and self.factory is not None:
            raise ValueError(f"members.factory is set but members.kind is {self.kind!r}; set "
                             "kind: python to use it")
        if self.factory is not None and not re.fullmatch(
                r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", self.factory):
            raise ValueError(f"factory {self.factory!r} must be 'module:function'")
        return self


class WifiConfig(_Section):
    """The weight fit of paper Eq. (1)."""

    max_iter: int = Field(100, ge=1, description="Newton iteration cap")
    tol: float = Field(
        1e-14, gt=0, description="stop when the predicted decrease of L falls below this")


class SampleConfig(_Section):
    """Oversampled events drawn from the fitted mixture."""

    n_events: int = Field(200_000, ge=1, description="events to draw from the fitted mixture")
    output: str = Field(
        "samples.npy", description="file under samples/ (relative, no '..'); the extension "
                                   "picks the format")

    @field_validator("output")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from genval.io import FORMATS, parse_spec

        try:
            spec = parse_spec(value)
        except InputError:
            raise ValueError(f"output {value!r} has an unknown format; use one of "
                             f"{FORMATS}") from None
        # A config passed between collaborators must not write outside the run directory.
        check_relative_output(str(spec.path), "path")
        if spec.path.as_posix() in RESERVED_SAMPLE_NAMES:
            raise ValueError(f"output {value!r} is the name of the sample stage's own "
                             f"{spec.path} file; choose another name")
        return value


class Observable(_Section):
    """An observable of the coverage study on file data: the mean of ``feature``, or, with
    ``above``, the fraction of events whose ``feature`` exceeds it (an expectation of the
    indicator, so Eq. 3 applies unchanged)."""

    feature: str = Field(description="the feature the observable is computed from")
    above: float | None = Field(
        None, description="null: the mean of the feature; a number: the fraction above it")


class CoverageConfig(_Section):
    """The optional coverage study (paper Eq. 4, App. A).

    Generated data: synthetic data sets from the known generator, first moments of every
    feature; ``truth`` overrides the generator's mean as O*. File data: the study needs the
    truth of a few ``observables`` (``truth``, a mapping observable -> value, with
    ``truth_std`` its statistical error), taken from an independent, larger sample of the same
    process (the one truth a user of simulated data has); the data sets are ``n_datasets``
    disjoint subsets of the events that trained no member (the weight-fit, centre and test
    splits), ``n_events`` each (default: as many as fit). Per data set the weights are refitted
    and ``n_generated`` events are generated from f(x; ŵ), the one common sample of the
    observables (App. A: 200k for 100k).
    """

    enabled: bool = Field(True, description="run the coverage study")
    n_datasets: int = Field(284, ge=2, description="data sets")
    n_events: int | None = Field(
        None, ge=1, description="weight-fit events per data set; null: the weight-fit split "
                                "size (generated data) or held-out events / n_datasets (file)")
    n_generated: int = Field(
        200_000, ge=1, description="events generated from f(x; ŵ) per data set (App. A)")
    z_alpha: float = Field(1.0, gt=0, description="interval half-width in σ (1: 68.3 %)")
    observables: dict[str, Observable] | None = Field(
        None, description="file data: {NAME: {feature: F}} (mean) or {NAME: {feature: F, "
                          "above: X}} (fraction above X)")
    truth: list[float] | dict[str, float] | None = Field(
        None, description="generated data: true first moments (null: the generator's mean); "
                          "file data: {NAME: value} for every observable")
    truth_std: dict[str, float] | None = Field(
        None, description="file data: statistical error of each truth value, added in "
                          "quadrature to σ when judging coverage")

    @model_validator(mode="after")
    def _observables_have_truth(self) -> CoverageConfig:
        if self.observables is None:
            if isinstance(self.truth, dict) or self.truth_std is not None:
                raise ValueError("coverage.truth as a mapping and coverage.truth_std need "
                                 "coverage.observables")
            return self
        if not self.observables:
            raise ValueError("coverage.observables is empty")
        if not isinstance(self.truth, dict):
            raise ValueError("coverage.observables needs coverage.truth as a mapping "
                             "{observable: true value}")
        names = set(self.observables)
        for key, given in (("truth", self.truth), ("truth_std", self.truth_std or {})):
            unknown = sorted(set(given) - names)
            if unknown:
                raise ValueError(f"coverage.{key} names {unknown}, which are not observables "
                                 f"{sorted(names)}")
        missing = sorted(names - set(self.truth))
        if missing:
            raise ValueError(f"coverage.truth has no value for {missing}")
        bad = {k: v for k, v in {**self.truth, **(self.truth_std or {})}.items()
               if not math.isfinite(v)}
        if bad or any(v < 0 for v in (self.truth_std or {}).values()):
            raise ValueError("coverage.truth must be finite and coverage.truth_std finite and "
                             f"non-negative, got {bad or self.truth_std}")
        return self


class GofConfig(_Section):
    """The learned likelihood-ratio test (paper Eq. 5) and its calibration.

    ``variants``: ``single`` (member ``single_member`` alone), ``frozen`` (the ensemble with
    weights fixed at ŵ, no uncertainty) and ``ensemble`` (with the Cov(ŵ) constraint): the
    paper's Z = 20.29, 4.13 and 0.92. ``constraint_centre``: the toys' constraint centre z₀,
    ``redrawn`` from N(0, C_r) per toy or ``fixed`` at 0 (the paper's text).
    ``max_failed_fraction``: toys whose fits stop before their tolerance or whose t is not
    finite are failed (each with its reason, in ``gof/VARIANT.json``); they are left out of p,
    which is then reported with bounds counting them below and above t_obs, and above this
    fraction of the toys the variant fails (no p, no Z) with the count and the reasons.

    The kernels live in the space the members are trained in (after ``data.transforms``);
    ``kernel_units: standardised`` (default) measures ``sigma`` in each transformed feature's
    standard deviation on the centres split, so a width means the same in every feature;
    ``raw`` measures it in the transformed features' own units (the paper's K = 100,
    σ = 0.05, which the demo presets keep). Choosing K and σ: docs/choosing-kernels.md. The
    older key ``standardize: true | false`` is read as ``kernel_units: standardised | raw``.
    """

    enabled: bool = Field(True, description="run the goodness-of-fit test")
    variants: list[Literal["single", "frozen", "ensemble"]] = Field(
        default_factory=lambda: list(VARIANTS),
        description="single | frozen | ensemble (with uncertainty)")
    single_member: int = Field(0, ge=0, description="the member of the single variant")
    n_kernels: int = Field(10, ge=1, description="Gaussian kernels K of the alternative "
                           "(paper: 100)")
    sigma: float = Field(1.0, gt=0, description="kernel width, in kernel_units (paper: 0.05 raw)")
    kernel_units: Literal["standardised", "raw"] = Field(
        "standardised", description="standardised (sigma in standard deviations of each "
        "transformed feature) | raw (in transformed-feature units, the paper's)")
    lambda_net: float = Field(1e-6, ge=0, description="weak L2 penalty on kernel coefficients")
    n_toys: int = Field(200, ge=1, description="null toys per variant")
    n_pools: int = Field(
        4, ge=1, description="independent toy pools; their spread widens p's interval")
    pool_size: int | None = Field(
        None, ge=1, description="events per toy pool (>= 5 N_test); null: max(5 N_test, 10000)")
    max_negative_mass: float = Field(
        1e-3, ge=0, description="refuse the test above this negative mass of f(x; ŵ)")
    max_failed_fraction: float = Field(
        0.05, ge=0, le=1,
        description="a variant fails above this fraction of failed toys; below, p is bounded "
                    "counting them either way")
    constraint_centre: Literal["redrawn", "fixed"] = Field(
        "redrawn", description="redrawn (z0 ~ N(0, C_r) per toy) | fixed (z0 = 0)")
    toy_size: Literal["fixed", "poisson"] = Field(
        "fixed", description="fixed (N_test events per toy) | poisson")
    n_test_sets: int = Field(1, ge=1, description="disjoint test sets (median Z, 16-84 % band)")
    n_jobs: int = Field(-1, ge=-1, description="threads fitting toys; -1: one per core")

    @model_validator(mode="before")
    @classmethod
    def _standardize_spelling(cls, data: Any) -> Any:
        # Configs (and run directories) written before kernel_units say standardize: true |
        # false; read them as the basis they meant. Both keys at once must agree.
        if isinstance(data, dict) and "standardize" in data:
            data = dict(data)
            old = data.pop("standardize")
            if not isinstance(old, bool):
                raise ValueError(f"standardize (the older spelling of kernel_units) must be "
                                 f"true or false, got {old!r}")
            units = "standardised" if old else "raw"
            if data.setdefault("kernel_units", units) != units:
                raise ValueError(f"standardize: {str(old).lower()} contradicts kernel_units: "
                                 f"{data['kernel_units']}; keep kernel_units only")
        return data

    @field_validator("variants")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"variants must be a non-empty list without repeats, got {value}")
        return value

    @field_validator("n_jobs")
    @classmethod
    def _jobs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("n_jobs must be -1 (one thread per core) or at least 1")
        return value


class ReportConfig(_Section):
    """Figures and the HTML report."""

    formats: list[Literal["png", "pdf"]] = Field(
        default_factory=lambda: ["png", "pdf"], description="figure formats")
    bins: int = Field(40, ge=2, description="bins of the marginal histograms")
    pool_size: int | None = Field(
        None, ge=1000, description="events from f(x; ŵ) for the marginals; null: 20 N_test "
                                   "within [5e4, 2e5]")
    dpi: int = Field(150, ge=20, description="PNG resolution")
    title: str = Field("genval report", description="report title")
    log_y: Literal["auto"] | list[str] = Field(
        "auto", description="features whose marginals get a log y axis; auto: those whose "
                            "spectrum falls steeply")
    pairs: Literal["auto"] | list[tuple[str, str]] = Field(
        "auto", description="feature pairs for the 2D views of data against f(x; ŵ); auto: "
                            "the (up to 3) most correlated pairs; []: none")
    max_columns: int = Field(4, ge=1, description="panels per row of the marginals grid")

    @field_validator("pairs")
    @classmethod
    def _distinct_pairs(cls, value: str | list[tuple[str, str]]
                        ) -> str | list[tuple[str, str]]:
        if isinstance(value, list):
            same = [list(p) for p in value if p[0] == p[1]]
            if same:
                raise ValueError(f"a pair needs two different features, got {same}")
        return value


class SlurmConfig(_Section):
    """SLURM jobs of ``compute.scheduler: slurm``, one Dask worker each (docs/cluster.md)."""

    jobs: int = Field(1, ge=1, description="SLURM jobs (Dask workers) to start")
    cores: int = Field(1, ge=1, description="CPU cores per job (--cpus-per-task)")
    memory: str = Field("4GB", description="memory per job (--mem)")
    walltime: str = Field("01:00:00", description="time limit per job (--time, HH:MM:SS)")
    gpus: int = Field(
        0, ge=0, le=1, description="GPUs per job, 0 or 1 (--gres=gpu:1, worker resource GPU=1)")
    queue: str | None = Field(None, description="partition (-p)")
    account: str | None = Field(None, description="account (-A)")
    job_extra_directives: list[str] = Field(
        default_factory=list, description="more #SBATCH options, e.g. [--constraint=a100]")
    job_script_prologue: list[str] = Field(
        default_factory=list, description="shell lines before the worker starts (module load, "
                                          "activating the environment)")
    interface: str | None = Field(
        None, description="network interface the nodes reach the scheduler on, e.g. ib0")
    local_directory: str | None = Field(None, description="worker scratch on the node")
    log_directory: str | None = Field(None, description="where SLURM writes worker logs")
    python: str | None = Field(None, description="python running the workers; null: this one")
    wait_seconds: float = Field(
        3600.0, gt=0, description="how long to wait for the first worker to start")

    @field_validator("walltime", mode="before")
    @classmethod
    def _sexagesimal(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 12:00:00 as the integer 43200 (base 60): turn it back.
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return f"{value // 3600:02d}:{value // 60 % 60:02d}:{value % 60:02d}"
        return value

    @model_validator(mode="after")
    def _valid(self) -> SlurmConfig:
        try:
            SlurmSettings(**self.model_dump())
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return self


class ComputeConfig(_Section):
    """Where the parallel work runs (:mod:`genval.compute`); never changes a result.

    ``scheduler``: ``local`` (this process, toys in a fork pool), ``processes`` (a Dask
    ``LocalCluster`` on this machine), ``tcp://HOST:PORT`` (a running Dask scheduler) or
    ``slurm`` (SLURM jobs from :class:`SlurmConfig`). Flow members train as sub-ensembles on
    the workers, toys and coverage data sets run as tasks; every choice gives the same numbers,
    so the section is left out of the config hash (like ``device``).
    """

    scheduler: str = Field(
        "local", description="local | processes | tcp://HOST:PORT | slurm (Dask)")
    n_workers: int | None = Field(
        None, ge=1, description="processes: worker processes; null: one per available core")
    threads_per_worker: int = Field(1, ge=1, description="processes: tasks per worker at once")
    retries: int = Field(1, ge=0, description="reruns of a task that raised on a worker")
    train_shards: int | None = Field(
        None, ge=1, description="sub-ensembles trained on workers; null: one per worker or GPU")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig,
                               description="the SLURM jobs of scheduler: slurm")

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        try:
            return check_scheduler(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    def settings(self) -> ComputeSettings:
        """The :class:`~genval.compute.ComputeSettings` of this section."""
        return ComputeSettings.from_mapping(self.model_dump())


class ContextConfig(_Section):
    """Conditional members f(x | c): the context features, their bins, weights and kernels.

    The features named here are the context c (read with ``data.features``, transformed by
    ``data.transforms`` before the members see them); the other features are x. The members
    learn f(x | c), the w_i f_i fit runs on the rows f_k(x_n | c_n) (``weights``: one weight
    vector shared by every context, the paper's formulation, or one per bin), and the
    goodness-of-fit test runs within each context bin with the bins' t combined and the
    smallest p corrected for the look elsewhere, all from the same joint toys
    (:func:`genval.gof.conditional_goodness_of_fit`). ``bins``: edges per context feature in
    its physical units (``.inf`` / ``-.inf`` allowed); features without edges are not binned,
    and no edges at all is one bin. ``kernels``: Gaussians ``fixed`` in x (in the members'
    coordinates), or ``follow`` the conditional mean (in the residual of x given c). Each bin's
    kernels are drawn from the centres split's events of that bin. The coverage study is not
    defined for conditional members (set ``coverage.enabled: false``).
    """

    features: list[str] = Field(
        min_length=1, description="the context features c (among data.features); the other "
                                  "features are x")
    bins: dict[str, list[float | str]] = Field(
        default_factory=dict, description="{FEATURE: [edges]} in physical units (.inf "
                                          "allowed); the test runs per bin; {}: one bin")
    weights: Literal["shared", "per_bin"] = Field(
        "shared", description="shared (one ŵ for every context, the paper) | per_bin")
    kernels: Literal["fixed", "follow"] = Field(
        "fixed", description="fixed (Gaussians in x) | follow (in the residual of x given c)")

    @field_validator("features")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"context.features repeats a feature: {value}")
        return value

    @field_validator("bins")
    @classmethod
    def _edges(cls, value: dict[str, list[float | str]]) -> dict[str, list[float | str]]:
        # Infinite edges are kept as the strings "inf" / "-inf": JSON (the resolved config,
        # the config hash) has no infinity.
        out: dict[str, list[float | str]] = {}
        for name, edges in value.items():
            try:
                numbers = [float(v) for v in edges]
            except (TypeError, ValueError):
                raise ValueError(f"{name}: bin edges must be numbers (or inf), got {edges}"
                                 ) from None
            if len(numbers) < 2 or any(math.isnan(v) for v in numbers) or any(
                    b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
                raise ValueError(f"{name}: bin edges must be at least two strictly increasing "
                                 f"numbers, got {edges}")
            out[str(name)] = [v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
                              for v in numbers]
        return out

    @model_validator(mode="after")
    def _binned_are_context(self) -> ContextConfig:
        unknown = sorted(set(self.bins) - set(self.features))
        if unknown:
            raise ValueError(f"context.bins names {unknown}, not context features "
                             f"{self.features}")
        return self

    def edges(self, name: str) -> list[float]:
        """The bin edges of context feature ``name`` as floats (``±inf`` included)."""
        return [float(v) for v in self.bins[name]]

    def context_bins(self) -> ContextBins:
        """The :class:`~genval.conditional.ContextBins` of the test (physical units); one bin
        holding every context when no feature has edges."""
        from genval.conditional import ContextBins

        binned = [f for f in self.features if f in self.bins]
        if not binned:
            return ContextBins.single(len(self.features), names=self.features)
        return ContextBins([self.features.index(f) for f in binned],
                           [self.edges(f) for f in binned], len(self.features), self.features)


class Config(_Section):
    """A complete run configuration; every field has a default."""

    seed: int = Field(0, ge=0, description="master seed (>= 0); every stage derives its own "
                                           "from it")
    device: str = Field(
        "cpu", description="cpu | cuda | cuda:N | auto (does not change the config hash)",
        json_schema_extra={"pattern": r"^(cpu|cuda(:\d+)?|auto)$"})
    quiet: bool = Field(False, description="no progress bars or stage messages")
    run_dir: str = Field("genval-run", description="run directory")
    data: DataConfig = Field(default_factory=DataConfig)
    splits: SplitsConfig = Field(default_factory=SplitsConfig)
    members: MembersConfig = Field(default_factory=MembersConfig)
    wifi: WifiConfig = Field(default_factory=WifiConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    coverage: CoverageConfig = Field(default_factory=CoverageConfig)
    gof: GofConfig = Field(default_factory=GofConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    context: ContextConfig | None = Field(
        None, description="conditional members f(x | c): context features, bins, weights, "
                          "kernels; null: unconditional")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("run_dir")
    @classmethod
    def _a_folder_name(cls, value: str) -> str:
        # Any folder may hold a run (it is the user's own choice, unlike sample.output), but
        # the name must be one the file system can create.
        if not value.strip() or "\x00" in value:
            raise ValueError(f"run_dir must name a folder, got {value!r}")
        return value

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        if self.data.test_path is not None and self.splits.test is not None:
            raise ValueError("data.test_path is set, so splits.test must be null (the test "
                             "events come from that file)")
        if self.data.test_path is None and self.splits.test is None:
            raise ValueError("splits.test is null but data.test_path is not set: no test events")
        for train_spec in self.data.files("path"):
            for test_spec in self.data.files("test_path"):
                if _same_file(train_spec, test_spec):
                    raise ValueError(f"data.test_path {test_spec!r} is a file the training "
                                     "splits come from: the test split would overlap them")
        names = self.data.features or (None if self.data.path is not None else
                                       [f"x{j}" for j in range(len(self.data.generate.mean))])
        if self.data.transforms and names is not None:
            from genval.transforms import FeatureTransform

            # Feature names read from a file are checked against its columns at the split.
            FeatureTransform.from_spec(self.data.transforms, names)
        self._check_feature_names()
        if self.context is not None:
            self._check_context(names)
        if "single" in self.gof.variants and self.gof.single_member >= self.members.n_members:
            raise ValueError(f"gof.single_member={self.gof.single_member} but there are only "
                             f"{self.members.n_members} members")
        return self

    def _check_context(self, names: list[str] | None) -> None:
        """Context features among the features, x left over, and what conditional runs lack."""
        ctx = self.context
        assert ctx is not None
        if names is not None:
            missing = [f for f in ctx.features if f not in names]
            if missing:
                raise ValueError(f"context.features names {missing}, not features; features: "
                                 f"{', '.join(names)}")
            if len(ctx.features) >= len(names):
                raise ValueError("context.features takes every feature: x needs at least one")
        if self.members.kind == "python":
            raise ValueError("context: members.kind python is not supported for conditional "
                             "members; use flow or kde")
        if self.coverage.enabled:
            raise ValueError("context: the coverage study is not defined for conditional "
                             "members; set coverage.enabled: false")
        if self.gof.n_test_sets != 1 or self.gof.toy_size != "fixed":
            raise ValueError("context: the conditional test uses one test set "
                             "(gof.n_test_sets: 1) and toys of the observed bin sizes "
                             "(gof.toy_size: fixed)")

    def _check_feature_names(self) -> None:
        """Labels, units, log-y and pair features must be features (when they are known)."""
        known = self.data.features
        if known is None and self.data.path is None:  # generated: named as the split stage does
            known = [f"x{i}" for i in range(len(self.data.generate.mean))]
        if known is None:
            return  # every column is read: names are checked when the events are (figures)
        used = {"data.labels": list(self.data.labels), "data.units": list(self.data.units)}
        if isinstance(self.report.log_y, list):
            used["report.log_y"] = self.report.log_y
        if isinstance(self.report.pairs, list):
            used["report.pairs"] = [name for pair in self.report.pairs for name in pair]
        for key, names in used.items():
            for name in names:
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(f"{key} names {name!r}, not a feature{hint}; features: "
                                     f"{', '.join(known)}")


def _same_file(a: str, b: str) -> bool:
    # "file.h5:x" and "file.h5:y" are different datasets of one file; only the same dataset
    # (or the same single-table file) is certain overlap.
    return os.path.realpath(a.split(":", 1)[0]) == os.path.realpath(b.split(":", 1)[0]) and (
        a.partition(":")[2] == b.partition(":")[2])


# --- loading and error messages -----------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):  # "? [a, b]": a list or mapping as a key
            raise ConfigError(f"a key that is a {type(key).__name__}, not a name (line "
                              f"{key_node.start_mark.line + 1})")
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that owns the last key of ``loc`` (for did-you-mean suggestions)."""
    model: type[BaseModel] = Config
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc) or "<config>"
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1,
                                              cutoff=0.6)
            if close:
                hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)"
            else:
                hint = f" (valid keys: {', '.join(model.model_fields)})"
        return f"unknown key {dotted!r}{hint}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "model_type" or not loc or isinstance(err.get("input"), dict):
        return f"{dotted}: {msg}"
    return f"{dotted}: {msg} (got {err.get('input')!r})"


def parse_config(obj: dict[str, Any] | None, *, source: str = "config") -> Config:
    """Validate a mapping (e.g. from YAML) into a :class:`Config`.

    Raises:
        ConfigError: listing every problem, each naming its dotted key.
    """
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got "
                          f"{type(obj).__name__}")
    try:
        return Config.model_validate(obj)
    except ValidationError as exc:
        lines = [_format_error(dict(e)) for e in exc.errors()]
        raise ConfigError(f"{source}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML configuration file (``yaml.safe_load`` semantics).

    Raises:
        ConfigError: if the file is missing, is not valid YAML, or fails validation.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc})") from None
    try:
        obj = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return parse_config(obj, source=str(p))


def dump_config(config: Config, *, comments: bool = False) -> str:
    """The fully resolved configuration as YAML (every default written out).

    With ``comments``, each key carries its description as a trailing comment: the output of
    ``genval config`` and a complete reference of the schema.
    """
    if not comments:
        return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return "\n".join(_commented(config, 0)) + "\n"


def _commented(model: BaseModel, depth: int) -> list[str]:
    pad = "  " * depth
    values = model.model_dump(mode="json")
    lines = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            doc = re.sub(r":\w+:`~?([^`]+)`|``([^`]+)``", lambda m: m[1] or m[2],
                         (type(value).__doc__ or "").strip().splitlines()[0])
            lines.append(f"{pad}{name}:  # {doc}")
            lines += _commented(value, depth + 1)
            continue
        # Lists and mappings inline ("[a, b]", "{pt: log}"), scalars as plain "key: value",
        # so each key is one line.
        flow = isinstance(values[name], list | dict)
        text = f"{name}: " + yaml.safe_dump(values[name], default_flow_style=flow,
                                            width=10_000).removesuffix("\n...\n").strip()
        note = f"  # {field.description}" if field.description else ""
        lines.append(f"{pad}{text}{note}")
    return lines


_HASHED_WHEN_SET = ("context",)
"""Top-level keys hashed only when not null (added after runs were hashed without them)."""

RUNTIME_KEYS = ("device", "quiet", "run_dir", "compute")
"""Top-level keys that change where and how loudly a run executes, not its results: they are
left out of :func:`config_hash`, so a run can resume on another device, executor or from a
moved folder."""


def config_schema() -> dict[str, Any]:
    """The JSON schema of a configuration file (``genval config --schema``), for editors.

    Generated from :class:`Config`, so every key, type, default, bound and description is the
    one the loader enforces; cross-key rules (splits that fit, a factory with ``kind:
    python``) are checked on load only.
    """
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Config.model_json_schema()}


def config_hash(config: Config | dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a config without :data:`RUNTIME_KEYS` (or of a dict)."""
    if isinstance(config, BaseModel):
        # Sections that are null by default and absent from older configs are left out while
        # null, so adding one does not change the hash of every existing run.
        obj = {k: v for k, v in config.model_dump(mode="json").items()
               if k not in RUNTIME_KEYS and not (k in _HASHED_WHEN_SET and v is None)}
    else:
        obj = config
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def with_overrides(config: Config, overrides: dict[str, Any], *, skip_none: bool = True
                   ) -> Config:
    """A new, re-validated config with dotted-key overrides, e.g. ``{"gof.n_toys": 50}``.

    ``None`` values are skipped, so CLI options left unset do not override the file; with
    ``skip_none=False`` they set the key to null.
    """
    tree = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is None and skip_none:
            continue
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(tree, source="config with overrides")
