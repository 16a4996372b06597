"""Output paths named by a configuration stay inside the run directory.

A configuration travels between collaborators; a path in it that names an output must not be
able to write anywhere else the user can write (``sample.output: ../../.bashrc``). Two checks:
:func:`check_relative_output` on the text when the configuration is validated (relative, no
``..``), and :func:`resolve_inside` when the file is written (symlinks resolved, so a link
inside the run directory cannot lead out of it). Input paths may be anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from genval.errors import OutputPathError

__all__ = ["check_relative_output", "resolve_inside"]


def check_relative_output(value: str, what: str) -> str:
    """``value`` if it is a relative path without ``..`` components, else an error.

    Both separators count (``a\\..\\b`` is refused on every platform, so a configuration that
    is safe on one machine is safe on all), as do drive letters and home-directory tildes.

    Raises:
        OutputPathError: naming ``what`` (e.g. ``"sample.output"``) and the reason.
    """
    text = str(value)
    if not text.strip():
        raise OutputPathError(f"{what} must name a file, got an empty path")
    if "\x00" in text:
        raise OutputPathError(f"{what} {text!r} contains a NUL character")
    win, posix = PureWindowsPath(text), PurePosixPath(text)
    if posix.is_absolute() or win.is_absolute() or win.drive or win.root:
        raise OutputPathError(f"{what} {text!r} is an absolute path; outputs are written inside "
                              "the run directory, so give a path relative to it")
    if text.startswith("~"):
        raise OutputPathError(f"{what} {text!r} starts with '~'; give a path relative to the "
                              "run directory")
    if ".." in win.parts:  # PureWindowsPath splits on both '/' and '\\'
        raise OutputPathError(f"{what} {text!r} contains '..'; outputs must stay inside the run "
                              "directory")
    return text


def resolve_inside(root: str | os.PathLike[str], relative: str | os.PathLike[str],
                   what: str) -> Path:
    """``root / relative``, after checking that it resolves (symlinks followed) inside ``root``.

    The returned path is the unresolved ``root / relative`` (so messages and records keep the
    run directory's own spelling); only its resolution is checked.

    Raises:
        OutputPathError: if ``relative`` is absolute or has ``..``, or a symlink on the way
            (the file itself or any folder above it) leads outside ``root``.
    """
    check_relative_output(str(relative), what)
    base = Path(root)
    path = base / relative
    real_root = base.resolve()
    real = path.resolve()  # non-strict: missing trailing parts are kept as written
    if real != real_root and real_root not in real.parents:
        raise OutputPathError(f"{what} {str(relative)!r} resolves to {real}, outside the run "
                              f"directory {real_root} (a symbolic link leads out of it)")
    return path
