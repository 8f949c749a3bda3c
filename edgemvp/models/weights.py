"""Safe reading and writing of weights: safetensors, or state dicts loaded with ``weights_only=True``.

No pickle anywhere (DESIGN.md decision 3): a checkpoint that would need arbitrary unpickling is refused,
never loaded with a fallback.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from edgemvp.errors import UsageError
from edgemvp.paths import atomic_write_bytes

StateDict = dict[str, torch.Tensor]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_bytes(state: StateDict, metadata: dict[str, str] | None = None) -> bytes:
    """A state dict as safetensors bytes, byte-for-byte deterministic for equal tensors and metadata.

    safetensors writes its JSON header from a hash map, so key order (of the metadata in particular) varies
    between processes; the header is rewritten with sorted keys, keeping the format's 8-byte alignment, so
    content addressing (zoo entry ids) does not depend on the process that wrote the file.
    """
    raw = st_save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=metadata)
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + raw[8 + size :]


def save_weights(state: StateDict, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write a state dict as safetensors atomically.

    Returns:
        The sha256 of the written file.
    """
    data = weights_bytes(state, metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_weights(path: Path, expected_sha256: str | None = None) -> StateDict:
    """Read weights from safetensors or a plain tensor state dict, never unpickling objects.

    Args:
        path: A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` state dict.
        expected_sha256: When given, the file's sha256 must match.

    Returns:
        The state dict (tensors on CPU). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        UsageError: Missing, corrupt, mismatching or pickle-bearing files.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    raw = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(raw) != expected_sha256:
        raise UsageError(f"{path}: sha256 mismatch (file changed or corrupt)")
    if path.suffix == ".safetensors":
        try:
            return dict(st_load(raw))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise UsageError(f"{path}: corrupt safetensors file ({exc})") from exc
    return _load_torch_state(path)


def _load_torch_state(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(f"{path}: checkpoint holds pickled objects beyond tensors; refusing to unpickle it "
                         "(convert it to safetensors)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"{path}: corrupt or unreadable checkpoint ({exc.__class__.__name__})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path}: not a state dict of tensors")
    return obj
