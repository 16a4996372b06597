"""Progress messages through the standard library's :mod:`logging`.

The pipeline reports progress as one-line messages (``"[fit] converged in 7 Newton steps"``).
:func:`to_logger` sends each to the ``genval`` logger hierarchy: a message that starts with
``[STAGE]`` goes to ``genval.pipeline.STAGE`` (``genval.pipeline`` otherwise), at INFO, or at
WARNING for a warning recorded in a stage (``"[STAGE] warning: ..."``). The package logger
has a :class:`logging.NullHandler` (``genval/__init__.py``), so library code prints nothing
unless the application configures logging, the standard behaviour of a library:

    logging.basicConfig(level=logging.INFO)          # every genval message, on stderr
    logging.getLogger("genval.pipeline.gof").setLevel(logging.WARNING)  # quieter GoF stage

The ``genval`` command and :func:`genval.run` show the messages on stderr unless ``quiet``,
through :func:`messages_to` (``genval.run`` only when the application has not configured a
handler of its own, which then receives them instead).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator

__all__ = ["LOGGER_NAME", "Log", "to_logger", "messages_to", "handlers_configured"]

LOGGER_NAME = "genval"
"""The package logger; stage messages go to its child ``genval.pipeline.STAGE``."""

Log = Callable[[str], None]
"""Receives one-line progress messages (default :func:`to_logger`)."""

_STAGE_PREFIX = re.compile(r"\[(\w+)\] ")
_WARNING = "warning:"


def to_logger(message: str) -> None:
    """Log one progress message: ``"[STAGE] ..."`` to ``genval.pipeline.STAGE`` at INFO, or
    at WARNING when the text after the prefix starts with ``warning:``."""
    match = _STAGE_PREFIX.match(message)
    name = f"{LOGGER_NAME}.pipeline" + (f".{match.group(1)}" if match else "")
    body = message[match.end():] if match else message
    level = logging.WARNING if body.startswith(_WARNING) else logging.INFO
    logging.getLogger(name).log(level, message)


def handlers_configured() -> bool:
    """Whether a handler other than the package's :class:`~logging.NullHandler` receives the
    ``genval`` logger's records (one on it or, while it propagates, on an ancestor)."""
    logger: logging.Logger | None = logging.getLogger(LOGGER_NAME)
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


class _WriteHandler(logging.Handler):
    """Passes each formatted record to a callable (``click.echo``, a print to stderr): the
    stream is looked up at every message, so a redirected stderr is honoured."""

    def __init__(self, write: Callable[[str], None], level: int) -> None:
        super().__init__(level)
        self._write = write
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


@contextlib.contextmanager
def messages_to(write: Callable[[str], None], *, level: int = logging.INFO) -> Iterator[None]:
    """Within the block, genval's messages at ``level`` and above are passed to ``write`` as
    their bare text (what the command line prints); the logger is restored afterwards.

    The ``genval`` logger is lowered to ``level`` for the block when it would drop such
    records; handlers an application put on an ancestor logger then receive them too, so
    :func:`genval.run` uses this only when :func:`handlers_configured` is false.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = _WriteHandler(write, level)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
