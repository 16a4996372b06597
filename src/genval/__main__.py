"""``python -m genval``: the same command line as the ``genval`` script."""

from genval.cli import main

main(prog_name="genval")
