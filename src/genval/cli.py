"""The ``genval`` command line."""

from __future__ import annotations

import click

from genval._version import __version__
from genval.cli_pipeline import register

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genval")
def main() -> None:
    """genval: uncertainty-aware validation of generative models."""


register(main)
