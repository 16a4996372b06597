"""``python -m genval``: the same command line as the ``genval`` script."""

from genval.cli import main

# Guarded: Dask's worker processes (compute.scheduler: processes) re-import the main module.
if __name__ == "__main__":
    main(prog_name="genval")
