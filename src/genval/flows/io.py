"""The flow-ensemble file format: one safetensors file, never a pickle.

The file holds named tensors and, in the safetensors header metadata under the key
``"genval"``, a JSON document: a format tag and version, the genval version, the fields given
by the writer and a SHA-256 of the tensor bytes (safetensors itself has no checksum, so a
flipped byte in the data would otherwise load silently). Reading goes through
``safetensors.safe_open`` only: loading an artifact cannot execute code, unlike ``torch.load``.

This module knows the container and its integrity checks, not what the tensors mean: the
ensemble turns itself into tensors and metadata (:meth:`genval.flows.FlowEnsemble.to_state`)
and rebuilds itself from them (:meth:`genval.flows.FlowEnsemble.from_state`). Those, with
:func:`genval.flows.save` / :func:`genval.flows.load`, are the entry points; this module never
imports the ensemble.

References:
    Badaracco et al., "An end-to-end pipeline for uncertainty-aware validation of generative
    AI", Step 1 (the trained ensemble is the artifact reused by every later step).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from safetensors.torch import save_file

from genval._atomic import atomic_path
from genval._version import __version__
from genval.errors import ArtifactError

__all__ = ["FORMAT", "FORMAT_VERSION", "tensor_digest", "write", "read", "read_metadata",
           "to_bytes", "from_bytes"]

FORMAT = "genval.flows.FlowEnsemble"
FORMAT_VERSION = 1
_META_KEY = "genval"


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and bytes of each.

    Args:
        tensors: contiguous CPU tensors.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
          fields: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and their metadata to ``path`` atomically.

    Args:
        path: the file; its directory is created if needed.
        tensors: contiguous CPU tensors, by name.
        fields: JSON-serialisable metadata (no NaN), stored between the format header
            (``format``, ``format_version``, ``genval_version``) and the checksum
            (``sha256``), in the given order.

    Returns:
        The path written.
    """
    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata={_META_KEY: _meta_text(tensors, fields)})
    return Path(path)


def _meta_text(tensors: Mapping[str, torch.Tensor], fields: Mapping[str, Any]) -> str:
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                            "genval_version": __version__, **fields,
                            "sha256": tensor_digest(tensors)}
    return json.dumps(meta, allow_nan=False)


def to_bytes(tensors: Mapping[str, torch.Tensor], fields: Mapping[str, Any]) -> bytes:
    """The file :func:`write` writes, in memory: how an ensemble travels between processes
    (the shards of :mod:`genval.flows.shards`), never as a pickle."""
    return save_bytes(dict(tensors), metadata={_META_KEY: _meta_text(tensors, fields)})


def from_bytes(data: bytes, *, source: str = "ensemble bytes"
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and checksum-verified tensors of :func:`to_bytes` output.

    Raises:
        ArtifactError: not a genval ensemble, unsupported version or corrupted tensors.
    """
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size]).get("__metadata__") or {}
        tensors = load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, AttributeError) as exc:
        raise ArtifactError(f"{source}: not a readable safetensors buffer: {exc}") from exc
    meta = _check_header(header, source)
    if tensor_digest(tensors) != meta.get("sha256"):
        raise ArtifactError(f"{source}: checksum mismatch, the tensor data is corrupted")
    return meta, tensors


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
    return _check_header(header, str(path)), handle


def _check_header(header: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The genval metadata of a safetensors header, checked for format and version."""
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
    return meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a saved ensemble (architecture, training summary), tensors unread.

    Raises:
        ArtifactError: missing, unreadable or foreign file, or unsupported version.
    """
    meta, _ = _open(Path(path))
    return meta


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and the checksum-verified CPU tensors of a file written by :func:`write`.

    Raises:
        ArtifactError: missing, truncated, corrupted or foreign file, unsupported version, or
            tensor data that do not match the recorded checksum.
    """
    path = Path(path)
    meta, handle = _open(path)
    try:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: inconsistent genval metadata or tensors: {exc}") from exc
    if tensor_digest(tensors) != meta.get("sha256"):
        raise ArtifactError(f"{path}: checksum mismatch, the tensor data is corrupted")
    return meta, tensors
