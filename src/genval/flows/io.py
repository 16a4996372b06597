"""Saving and loading flow ensembles: one safetensors file, never a pickle.

The file holds the tensors (weights, permutations, standardisation in float64) and, in the
safetensors header metadata under the key ``"genval"``, a JSON document with a format tag and
version, the architecture, the standardisation, the member seeds, the training summary and a
SHA-256 of the tensor bytes (safetensors itself has no checksum, so a flipped byte in the data
would otherwise load silently). Reading goes through ``safetensors.safe_open`` only: loading an
artifact cannot execute code, unlike ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from genval._atomic import atomic_path
from genval._version import __version__
from genval.errors import ArtifactError
from genval.flows.ensemble import FlowEnsemble

__all__ = ["FORMAT", "FORMAT_VERSION", "save", "load", "read_metadata"]

FORMAT = "genval.flows.FlowEnsemble"
FORMAT_VERSION = 1
_META_KEY = "genval"


def _tensors(ensemble: FlowEnsemble) -> dict[str, torch.Tensor]:
    out = {name: p.detach().to("cpu").contiguous() for name, p in ensemble.named_parameters()}
    out["permutations"] = ensemble.permutations.detach().to("cpu").contiguous()
    out["standardisation.loc"] = torch.as_tensor(ensemble.loc, dtype=torch.float64)
    out["standardisation.scale"] = torch.as_tensor(ensemble.scale, dtype=torch.float64)
    return out


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(ensemble: FlowEnsemble, path: str | os.PathLike[str]) -> Path:
    """Write ``ensemble`` to ``path`` atomically (safetensors + JSON metadata).

    Returns:
        The path written.
    """
    tensors = _tensors(ensemble)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genval_version": __version__,
        "config": ensemble.config,
        "dtype": str(ensemble.dtype).removeprefix("torch."),
        "member_seeds": ensemble.member_seeds,
        "standardisation": {"loc": ensemble.loc.tolist(), "scale": ensemble.scale.tolist()},
        "training": ensemble.training_summary,
        "sha256": _digest(tensors),
    }
    text = json.dumps(meta, allow_nan=False)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: text})
    return Path(path)


def _open(path: Path) -> tuple[dict[str, Any], Any]:
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{path} is not a readable safetensors file (truncated, corrupted or another "
            f"format): {exc}") from exc
    if _META_KEY not in header:
        raise ArtifactError(f"{path} is a safetensors file but not a genval flow ensemble "
                            f"(no '{_META_KEY}' metadata)")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupted genval metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{path} holds {found!r}, not a {FORMAT}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {version!r} is not supported by genval "
                            f"{__version__} (reads up to {FORMAT_VERSION}); upgrade genval")
    return meta, handle


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a saved ensemble (architecture, training summary), tensors unread."""
    meta, _ = _open(Path(path))
    return meta


def load(path: str | os.PathLike[str], *, device: str | torch.device | None = None
         ) -> FlowEnsemble:
    """Read an ensemble written by :func:`save`.

    Args:
        path: the file.
        device: where to put the ensemble (default CPU).

    Raises:
        ArtifactError: missing, truncated, corrupted or foreign file, unsupported version,
            or tensors that do not match the recorded architecture or checksum.
    """
    path = Path(path)
    meta, handle = _open(path)
    try:
        cfg = dict(meta["config"])
        n_features, n_members = cfg.pop("n_features"), cfg.pop("n_members")
        ensemble = FlowEnsemble(n_features, n_members, **cfg, member_seeds=meta["member_seeds"])
        dtype = getattr(torch, meta["dtype"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (KeyError, TypeError, ValueError, AttributeError, SafetensorError) as exc:
        raise ArtifactError(f"{path}: inconsistent genval metadata or tensors: {exc}") from exc
    if _digest(tensors) != meta.get("sha256"):
        raise ArtifactError(f"{path}: checksum mismatch, the tensor data is corrupted")
    ensemble.to(dtype=dtype)
    expected = _tensors(ensemble)
    if set(expected) != set(tensors):
        missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
        raise ArtifactError(f"{path}: tensors do not match the architecture "
                            f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
    for name, ref in expected.items():
        if tensors[name].shape != ref.shape or tensors[name].dtype != ref.dtype:
            raise ArtifactError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)} "
                                f"{tensors[name].dtype}, expected {tuple(ref.shape)} {ref.dtype}")
    with torch.no_grad():
        for name, p in ensemble.named_parameters():
            p.copy_(tensors[name])
        ensemble.permutations.copy_(tensors["permutations"])
    ensemble.loc = tensors["standardisation.loc"].numpy().copy()
    ensemble.scale = tensors["standardisation.scale"].numpy().copy()
    ensemble.training_summary = meta.get("training")
    if device is not None:
        ensemble.to(device)
    return ensemble

