"""Progress messages of the pipeline stages, through ``logging.getLogger("genval")``.

Every stage takes ``log: Log``, a callable that receives one-line messages such as
``"[fit] converged in 7 Newton steps"``. The default sends them to the ``genval`` logger
(``genval.pipeline.STAGE`` for a message that starts with ``[STAGE]``; :mod:`genval._logging`),
so they follow the application's logging configuration; any other callable (a list's
``append`` in the tests) receives them instead.
"""

from __future__ import annotations

from genval._logging import Log, to_logger

__all__ = ["Log", "quiet", "to_logger"]


def quiet(message: str) -> None:
    """The stage functions' default :data:`Log`: the message goes to the ``genval`` logger
    only (:func:`to_logger`), which prints nothing unless logging is configured (the command
    line and :func:`genval.run` configure it unless ``quiet``)."""
    to_logger(message)
