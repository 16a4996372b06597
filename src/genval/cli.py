"""The ``genval`` command line: ``run``, ``demo``, ``config`` and one command per stage.

::

    genval run CONFIG.yaml [--run-dir DIR] [--force] [--seed N] [--device D] [--quiet]
    genval demo [--preset quick|paper] [--run-dir DIR] [--force] [--seed N] [--device D]
    genval config [--preset NAME] [--schema] # a full, commented default config (or its schema)
    genval train|fit|sample|coverage|gof|report RUN_DIR [-c CONFIG] [--force] [--device D]
    genval gof RUN_DIR --toys A:B            # toys A..B-1 into a part file (array jobs)
    genval merge RUN_DIR                     # the gof stage from its parts
    genval results RUN_DIR [--json]          # Z, p and intervals per variant, coverage, fit
    genval status RUN_DIR [--json]           # which stages finished, when, warnings

``--scheduler local|processes|tcp://HOST:PORT|slurm`` (``run``, ``demo``, ``train``,
``coverage``, ``gof``) says where the parallel work runs (config ``compute.scheduler``).

Progress and stage messages go to stderr; a genval error prints its message (no traceback)
and exits with status 1, a usage error with status 2. A GoF variant that failed or is
undefined does not stop the run (the report shows it): one line per such variant goes to
stderr, ``--quiet`` or not. :func:`register` adds the commands to
any click group (the tests use a fresh one); :func:`main` is the ``genval`` entry point.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from genval._logging import Log, messages_to, to_logger
from genval._version import __version__
from genval.config import (
    Config,
    config_hash,
    config_schema,
    dump_config,
    load_config,
    with_overrides,
)
from genval.errors import GenvalError
from genval.presets import preset
from genval.rundir import STAGES, RunDir

__all__ = ["main", "register"]

F = TypeVar("F", bound=Callable[..., Any])


def _log(quiet: bool) -> Log:
    """The stages' :data:`~genval._logging.Log` for this command: the ``genval`` logger, whose
    messages are echoed on stderr (unless ``quiet``) until the command ends."""
    ctx = click.get_current_context(silent=True)
    if not quiet and ctx is not None and not ctx.meta.get(_ECHOING):
        ctx.meta[_ECHOING] = True
        ctx.with_resource(messages_to(functools.partial(click.echo, err=True)))
    return to_logger


_ECHOING = "genval.messages_echoed"


def _errors(fn: F) -> F:
    """Turn genval errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GenvalError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


_force = click.option("--force", is_flag=True,
                      help="Re-run finished stages (and overwrite a run of another config).")
_device = click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto.")
_quiet = click.option("--quiet", "-q", is_flag=True, default=None,
                      help="No progress bars or stage messages.")
_seed = click.option("--seed", type=int, default=None, help="Master seed (overrides config).")
_run_dir = click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=None, help="Run directory (overrides config run_dir).")
_scheduler = click.option(
    "--scheduler", default=None, metavar="NAME",
    help="Where parallel work runs: local, processes, tcp://HOST:PORT or slurm (overrides "
         "compute.scheduler; same results).")


def _toy_range(_ctx: click.Context, _param: click.Parameter, value: str | None
               ) -> tuple[int, int] | None:
    if value is None:
        return None
    first, sep, stop = value.partition(":")
    try:
        a, b = int(first), int(stop)
    except ValueError:
        a = b = -1
    if not sep or a < 0 or b <= a:
        raise click.BadParameter(f"{value!r} is not a range A:B of toy indices with A < B")
    return a, b


_toys = click.option(
    "--toys", default=None, metavar="A:B", callback=_toy_range,
    help="Only toys A..B-1 of every variant, into gof/parts/ (array jobs; no run lock); "
         "`genval merge RUN_DIR` completes the stage.")


def _pipeline_options(fn: F) -> F:
    """The options shared by ``run`` and ``demo``, in the order ``--help`` lists them."""
    for option in (_errors, _quiet, _scheduler, _device, _seed, _force, _run_dir):
        fn = option(fn)
    return fn


def _execute(config: Config, run_dir: Path | None, force: bool, seed: int | None,
             device: str | None, quiet: bool | None, scheduler: str | None) -> None:
    from genval.pipeline import run_pipeline

    config = with_overrides(config, {"seed": seed, "device": device, "quiet": quiet,
                                     "compute.scheduler": scheduler})
    run = run_pipeline(config, run_dir=run_dir, force=force, log=_log(config.quiet))
    _echo_gof_failures(run)
    click.echo(str(run.report_path))


def _echo_gof_failures(run: RunDir) -> None:
    """One line on stderr per GoF variant without a p-value, saying why (even with --quiet:
    a failure is not progress)."""
    from genval.pipeline.artifacts import load_gof

    if not run.has_results("gof"):
        return  # no finished results: files of a killed or stale gof stage say nothing
    for variant in run.config().gof.variants:
        record = load_gof(run, variant)
        if record is not None and record.error is not None:
            what = "undefined" if record.result is None else "failed"
            message = " ".join(record.error.split())
            click.echo(f"genval: GoF variant {variant!r} {what}: {message}", err=True)


def register(group: click.Group) -> click.Group:
    """Add the pipeline commands to ``group`` (the ``genval`` click group); return it."""

    @group.command("run")
    @click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
    @_pipeline_options
    def run_cmd(config_file: Path, run_dir: Path | None, force: bool, seed: int | None,
                device: str | None, scheduler: str | None, quiet: bool | None) -> None:
        """Run every stage of CONFIG_FILE; finished stages are skipped (resume)."""
        _execute(load_config(config_file), run_dir, force, seed, device, quiet, scheduler)

    @group.command("demo")
    @click.option("--preset", "preset_name", type=click.Choice(["quick", "paper"]),
                  default="quick", show_default=True,
                  help="quick: minutes on 2 CPU cores; paper: the paper's sizes, for a GPU.")
    @_pipeline_options
    def demo_cmd(preset_name: str, run_dir: Path | None, force: bool, seed: int | None,
                 device: str | None, scheduler: str | None, quiet: bool | None) -> None:
        """The paper's toy study: a 2D Gaussian, three GoF variants and a coverage study."""
        _execute(preset(preset_name), run_dir, force, seed, device, quiet, scheduler)

    @group.command("config")
    @click.option("--preset", "preset_name", type=click.Choice(["default", "quick", "paper"]),
                  default="default", show_default=True)
    @click.option("--schema", is_flag=True,
                  help="Print the JSON schema of a config file instead (for editors).")
    def config_cmd(preset_name: str, schema: bool) -> None:
        """Print a complete configuration, every key with its default and meaning."""
        if schema:
            click.echo(json.dumps(config_schema(), indent=2, ensure_ascii=False))
            return
        cfg = Config() if preset_name == "default" else preset(preset_name)
        click.echo(dump_config(cfg, comments=True), nl=False)

    group.add_command(_results_command())
    group.add_command(_status_command())

    for stage in STAGES[1:]:
        group.add_command(_stage_command(stage))

    @group.command("merge", short_help="Complete the gof stage from its toy parts.")
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
    @_device
    @_quiet
    @_errors
    def merge_cmd(run_dir: Path, device: str | None, quiet: bool | None) -> None:
        """Complete the gof stage of RUN_DIR from the toy parts written by `genval gof RUN_DIR
        --toys A:B`: merged bit for bit as one run; parts of another config, overlapping
        ranges and missing toys are refused (the missing ranges are named)."""
        from genval.pipeline import merge_gof

        cfg = with_overrides(RunDir.open(run_dir).config(), {"quiet": quiet, "device": device})
        run = RunDir.create(run_dir, cfg)  # runtime keys only: the same configuration
        with run.lock():
            merge_gof(run, log=_log(cfg.quiet))
        _echo_gof_failures(run)

    return group


def _stage_command(stage: str) -> click.Command:
    from genval.pipeline import PARALLEL_STAGES, STAGE_FUNCTIONS

    doc = (STAGE_FUNCTIONS[stage].__doc__ or "").strip().splitlines()[0]

    def command(run_dir: Path, config_file: Path | None, force: bool, device: str | None,
                quiet: bool | None, scheduler: str | None = None,
                toys: tuple[int, int] | None = None) -> None:
        from genval.pipeline import run_stage, stage_executor

        if toys is not None:
            _gof_part(run_dir, config_file, toys, device, quiet, scheduler)
            return
        if config_file is not None:
            cfg = load_config(config_file)
        else:
            cfg = RunDir.open(run_dir).config()
        # Runtime keys only: the config hash, and so the finished stages, are unchanged.
        cfg = with_overrides(cfg, {"device": device, "quiet": quiet,
                                   "compute.scheduler": scheduler})
        run = RunDir.create(run_dir, cfg, force=force)
        stages = ["split", stage] if stage == "train" else [stage]
        with run.lock(), stage_executor(run, cfg, stages, force=force) as executor:
            if stage == "train":
                run_stage(run, "split", log=_log(cfg.quiet))  # first stage after a fresh start
            run_stage(run, stage, force=force, log=_log(cfg.quiet), executor=executor)
        if stage in ("gof", "report"):
            _echo_gof_failures(run)

    options = [_errors, _quiet]
    if stage in PARALLEL_STAGES:
        options.append(_scheduler)
    if stage == "gof":
        options.append(_toys)
    options += [_device, _force, click.option(
        "--config", "-c", "config_file", default=None,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Create (or resume) RUN_DIR with this config."),
        click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))]
    for option in options:
        command = option(command)
    return click.command(stage, short_help=doc,
                         help=f"{doc} Reads and writes RUN_DIR (start one with --config).")(
        command)


def _gof_part(run_dir: Path, config_file: Path | None, toys: tuple[int, int],
              device: str | None, quiet: bool | None, scheduler: str | None) -> None:
    """``genval gof RUN --toys A:B``: one toy range into a part file, without the run lock and
    without writing anything else of the run (parallel array jobs share it)."""
    from genval.compute import open_executor
    from genval.pipeline import run_gof_part

    run = RunDir.open(run_dir)
    if config_file is not None and config_hash(load_config(config_file)) != config_hash(
            run.config()):
        raise GenvalError(f"{config_file} is not the configuration of {run_dir}")
    cfg = with_overrides(run.config(), {"device": device, "quiet": quiet,
                                        "compute.scheduler": scheduler})
    with open_executor(cfg.compute.settings()) as executor:
        path = run_gof_part(run, *toys, log=_log(cfg.quiet), executor=executor, config=cfg)
    click.echo(str(path))


_json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")


def _results_command() -> click.Command:
    @click.command("results")
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
    @_json_flag
    @_errors
    def results_cmd(run_dir: Path, as_json: bool) -> None:
        """Print a run's results: Z, p and their intervals per GoF variant, coverage, fit."""
        from genval.runs import load_run

        summary = load_run(run_dir).summary()
        if as_json:
            click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        else:
            click.echo(_results_text(summary))

    return results_cmd


def _status_command() -> click.Command:
    @click.command("status")
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
    @_json_flag
    @_errors
    def status_cmd(run_dir: Path, as_json: bool) -> None:
        """Print which stages of a run have finished, when, how long they took, warnings."""
        from genval.runs import load_run

        run = load_run(run_dir)
        status = run.status
        holder = run.run_dir.lock_holder()
        if as_json:
            click.echo(json.dumps({"run": str(run.root), "lock": holder, "stages": {
                s: {"state": st.state, "finished": st.finished, "seconds": st.seconds,
                    "warnings": list(st.warnings), "skipped": st.skipped}
                for s, st in status.items()}}, indent=2, ensure_ascii=False))
            return
        lines = [f"run: {run.root}", f"{'stage':<9} {'state':<8} {'finished':<26} "
                 f"{'seconds':>8}  notes"]
        for stage, st in status.items():
            notes = [f"{len(st.warnings)} warning(s)"] if st.warnings else []
            notes += [st.skipped] if st.skipped else []
            seconds = "" if st.seconds is None else f"{float(st.seconds):.1f}"
            lines.append(f"{stage:<9} {st.state:<8} {st.finished or '':<26} {seconds:>8}  "
                         + "; ".join(notes))
        if holder is not None:
            lines.append(f"in use by process {holder.get('pid')} on {holder.get('host')} since "
                         f"{holder.get('since')}")
        click.echo("\n".join(lines))

    return status_cmd


def _results_text(summary: dict[str, Any]) -> str:
    """``genval results`` as text: numbers rounded by the PDG rule (genval.display)."""
    from genval.display import format_interval
    from genval.gof.statistic import VARIANT_LABELS

    lines = [f"run: {summary['run']}",
             "stages: " + ", ".join(f"{s} {state}" for s, state in summary["status"].items())]
    fit = summary.get("fit")
    if fit is not None:
        state = "converged" if fit["converged"] else "NOT converged"
        lines.append(f"w_i f_i fit (Eqs. 1-2): {state} in {fit['n_iter']} iterations, "
                     f"M = {fit['n_members']}, N = {fit['n_events']}, "
                     f"sum|w| = {float(fit['abs_weight_sum']):.3g}, "
                     f"cond(V) = {float(fit['hessian_condition']):.3g}"
                     + (f", {len(fit['warnings'])} warning(s)" if fit["warnings"] else ""))
    gof = summary.get("gof", {})
    if gof:
        cl = next((f"{100 * v['cl']:.1f} %" for v in gof.values() if "cl" in v), "")
        lines.append(f"goodness of fit (Eq. 5), intervals at {cl} CL:")
        for variant, entry in gof.items():
            label = VARIANT_LABELS.get(variant, variant)
            if "error" in entry:
                what = "FAILED" if entry.get("failed") else "undefined"
                lines.append(f"  {label}: {what}: {entry['error']}")
                continue
            z, (z_lo, z_hi) = float(entry["z"]), (float(v) for v in entry["z_interval"])
            z_text = f">= {z:.2f} (t_obs beyond every toy)" if entry["z_is_lower_bound"] \
                else format_interval(z, z_lo, z_hi)
            p_text = format_interval(float(entry["p_value"]), *map(float, entry["p_interval"]))
            extra = entry["z_chi2_extrapolated"]
            lines.append(f"  {label}: t_obs = {float(entry['t_obs']):.4g}, p = {p_text}, "
                         f"Z = {z_text}"
                         + ("" if extra is None else f", Z (chi2 extrapolation) = "
                                                     f"{float(extra):.2f}")
                         + f", {entry['n_toys']} toys"
                         + (f" ({entry['n_failed']} failed, left out of p; p in "
                            f"[{float(entry['p_bounds'][0]):.3g}, "
                            f"{float(entry['p_bounds'][1]):.3g}] counting them below or above "
                            "t_obs)" if entry["n_failed"] else ""))
            if entry.get("context"):
                lines += _context_lines(entry["context"])
            band = entry.get("z_summary")
            if band:
                lines.append(f"    median Z over {band['n_sets']} test sets = "
                             f"{float(band['median']):.2f} (16-84 %: "
                             f"{float(band['lower']):.2f} to {float(band['upper']):.2f})")
    for entry in summary.get("fit_per_bin", []):
        lines.append(f"  w_i f_i fit in {entry['bin']}: "
                     f"{'converged' if entry['converged'] else 'NOT converged'} in "
                     f"{entry['n_iter']} iterations, N = {entry['n_events']}, "
                     f"sum|w| = {float(entry['abs_weight_sum']):.3g}")
    coverage = summary.get("coverage")
    if coverage is not None:
        lines.append(f"coverage (Eq. 4) over {coverage['n_datasets']} data sets, intervals at "
                     f"{100 * coverage['cl']:.1f} % CL:")
        for name, entry in coverage["features"].items():
            cells = [f"{100 * float(level):.1f} %: "
                     + format_interval(float(f), *map(float, bounds), scale=100.0) + " %"
                     for level, f, bounds in zip(coverage["levels"], entry["fractions"],
                                                 entry["intervals"], strict=True)]
            lines.append(f"  {name} (O* = {float(entry['truth']):.4g}): " + "; ".join(cells))
    return "\n".join(lines)


def _context_lines(context: dict[str, Any]) -> list[str]:
    """A conditional run's test: Z per context bin beside the combined Z, and the smallest p
    corrected for the look elsewhere."""
    lines = []
    for entry in context["bins"]:
        if "error" in entry:
            lines.append(f"    {entry['bin']}: N = {entry['n_test']}, FAILED: {entry['error']}")
            continue
        bound = ">= " if entry["z_is_lower_bound"] else ""
        lines.append(f"    {entry['bin']}: N = {entry['n_test']}, "
                     f"t_obs = {float(entry['t_obs']):.4g}, p = {float(entry['p_value']):.3g}, "
                     f"Z = {bound}{float(entry['z']):.2f}")
    bound = ">= " if context.get("z_combined_is_lower_bound") else ""
    lines.append(f"    combined (sum of the bins' t): Z = {bound}"
                 f"{float(context['z_combined']):.2f}")
    if context["bin_min"] is not None:
        lines.append(f"    smallest p = {float(context['p_min']):.3g} in {context['bin_min']}; "
                     f"look-elsewhere corrected p = {float(context['p_global']):.3g}, "
                     f"Z = {float(context['z_global']):.2f}")
    return lines


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genval")
def main() -> None:
    """genval: uncertainty-aware validation of generative models."""


register(main)
