"""The compute device a run trains and evaluates its flows on."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(requested: str) -> str:
    """``requested`` as given, or for ``"auto"`` CUDA when available and the CPU otherwise."""
    if requested != "auto":
        return requested
    import torch  # only here: the KDE pipeline never loads torch

    return "cuda" if torch.cuda.is_available() else "cpu"
