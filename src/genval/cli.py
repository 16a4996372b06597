"""The ``genval`` command line: ``run``, ``demo``, ``config`` and one command per stage.

::

    genval run CONFIG.yaml [--run-dir DIR] [--force] [--seed N] [--device D] [--quiet]
    genval demo [--preset quick|paper] [--run-dir DIR] [--force] [--seed N] [--device D]
    genval config [--preset NAME]            # print a full, commented-free default config
    genval train|fit|sample|coverage|gof|report RUN_DIR [-c CONFIG] [--force] [--device D]
    genval gof RUN_DIR --toys A:B            # toys A..B-1 into a part file (array jobs)
    genval merge RUN_DIR                     # the gof stage from its parts

``--scheduler local|processes|tcp://HOST:PORT|slurm`` (``run``, ``demo``, ``train``,
``coverage``, ``gof``) says where the parallel work runs (config ``compute.scheduler``).

Progress and stage messages go to stderr; a genval error prints its message (no traceback)
and exits with status 1, a usage error with status 2. :func:`register` adds the commands to
any click group (the tests use a fresh one); :func:`main` is the ``genval`` entry point.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from genval._version import __version__
from genval.config import Config, config_hash, dump_config, load_config, with_overrides
from genval.errors import GenvalError
from genval.presets import preset
from genval.rundir import STAGES, RunDir

__all__ = ["main", "register"]

F = TypeVar("F", bound=Callable[..., Any])


def _log(quiet: bool) -> Callable[[str], None]:
    return (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


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
_device = click.option("--device", default=None, help="cpu, cuda, cuda:1, mps or auto.")
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
    click.echo(str(run.report_path))


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
    def config_cmd(preset_name: str) -> None:
        """Print a complete configuration, every key with its default and meaning."""
        cfg = Config() if preset_name == "default" else preset(preset_name)
        click.echo(dump_config(cfg, comments=True), nl=False)

    for stage in STAGES[1:]:
        group.add_command(_stage_command(stage))

    @group.command("merge", short_help="Complete the gof stage from its toy parts.")
    @click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
    @_quiet
    @_errors
    def merge_cmd(run_dir: Path, quiet: bool | None) -> None:
        """Complete the gof stage of RUN_DIR from the toy parts written by `genval gof RUN_DIR
        --toys A:B`: merged bit for bit as one run; parts of another config, overlapping
        ranges and missing toys are refused (the missing ranges are named)."""
        from genval.pipeline import merge_gof

        run = RunDir.open(run_dir)
        cfg = with_overrides(run.config(), {"quiet": quiet})
        with run.lock():
            merge_gof(run, log=_log(cfg.quiet))

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genval")
def main() -> None:
    """genval: uncertainty-aware validation of generative models."""


register(main)
