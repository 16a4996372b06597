"""The compute device a run trains and evaluates its flows on.

Every stage that touches the flows resolves the device from the run's configuration as the
current process sees it (``--device`` is a runtime key, not part of the config hash), so a
resumed run or a single stage run with ``--device cuda`` loads its members there.
"""

from __future__ import annotations

from genval._validation import check_device
from genval.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(requested: str) -> str:
    """``requested`` checked, or for ``"auto"`` CUDA when available and the CPU otherwise.

    Raises:
        InputError: ``mps`` (its float64 is missing), an unknown name, or CUDA requested on a
            machine without it.
    """
    check_device(requested)
    if requested == "cpu":
        return requested
    import torch  # only here: the KDE pipeline never loads torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise InputError(f"device {requested!r} requested but CUDA is not available to this "
                         "PyTorch; use --device cpu (or auto)")
    return requested
