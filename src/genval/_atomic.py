"""Atomic file writes: a crash never leaves a half-written artifact behind.

Files are created with mode ``0o666`` and folders with ``0o777``, both less the process umask,
as ``open`` and ``mkdir`` would create them: a run directory is as readable to collaborators as
the user's umask allows (``tempfile.mkstemp`` would make every artifact owner-only, 0600).

A process killed between creating its temporary and the rename (SIGKILL runs no cleanup)
leaves the temporary behind: a hidden ``.NAME.PID-TOKEN.tmp`` that no reader takes for an
artifact. The writer's process id in the name lets :func:`remove_stale_temporaries` (called by
the run directory's lock, docs/reliability.md) delete those of processes that no longer run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "remove_stale_temporaries"]

_FILE_MODE = 0o666  # the kernel removes the umask's bits, exactly as for open(path, "w")
_ATTEMPTS = 100
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{12}\.tmp$")
"""The name of a temporary of :func:`atomic_path`: ``.NAME.PID-TOKEN.tmp``."""


def _create_temporary(target: Path) -> Path:
    """A new, empty file beside ``target`` with an unpredictable name, created exclusively.

    ``O_EXCL`` makes creation fail rather than follow a symlink or reuse a file someone else
    placed there; the mode is ``0o666 & ~umask`` (the kernel applies the umask).
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        tmp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, _FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {target}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The rename is atomic on POSIX file systems, so readers see either the old file or the
    complete new one. On an exception the temporary file is removed and ``path`` is untouched.
    Missing parent folders are created (mode ``0o777 & ~umask``); the file gets
    ``0o666 & ~umask``. A symlink at ``path`` is replaced, never followed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temporary(target)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:  # flush to disk before the rename
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON (NaN/inf rejected) and write it atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(root: str | os.PathLike[str], *, skip: Sequence[str] = ()
                             ) -> list[Path]:
    """Delete the temporaries of :func:`atomic_path` under ``root`` whose writer is gone.

    A temporary is stale when the process id in its name no longer runs on this host: that
    writer was killed before its rename. Only call this while no process on another host can
    be writing under ``root`` (a remote writer's id cannot be checked here): the run
    directory calls it once it holds its lock.

    Args:
        root: the folder to sweep, recursively.
        skip: folders under ``root`` (relative, ``/``-separated) written without the lock
            (``gof/parts``: array jobs on other hosts), left alone.

    Returns:
        The temporaries removed.
    """
    base = Path(root)
    skipped = [base / s for s in skip]
    removed = []
    for path in sorted(base.rglob(".*.tmp")):
        match = _TEMPORARY.match(path.name)
        if match is None or any(folder in path.parents for folder in skipped):
            continue
        if not _running(int(match["pid"])) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
