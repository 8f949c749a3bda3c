"""Safe reading and writing of weights: safetensors, or state dicts loaded with ``weights_only=True``.

No pickle anywhere (docs/design.md, decision 3): a checkpoint that would need arbitrary unpickling is refused,
never loaded with a fallback.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from edgemvp.errors import UsageError
from edgemvp.paths import atomic_write_bytes, read_regular

StateDict = dict[str, torch.Tensor]

# bytes per element of the safetensors dtypes a state dict can hold
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1}
MAX_HEADER_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 8 << 30  # a weights file edgemvp reads whole (ViT-L in float32 is 1.2 GB)


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
    try:
        raw = read_regular(path, MAX_WEIGHTS_BYTES)
    except OSError as exc:
        raise UsageError(f"{path}: unreadable ({exc.strerror or exc})") from exc
    if expected_sha256 is not None and sha256_bytes(raw) != expected_sha256:
        raise UsageError(f"{path}: sha256 mismatch (file changed or corrupt)")
    if path.suffix == ".safetensors":
        return parse_safetensors(raw, str(path))[0]
    return _load_torch_state(path)


def check_safetensors(raw: bytes, source: str) -> dict[str, str]:
    """Check that bytes are a well-formed safetensors file before any library parses them.

    The 8-byte little-endian header length, the JSON header (tensor dtypes, shapes, data offsets) and the
    layout of the data (every byte belongs to exactly one tensor) are checked here, so a pickle, a zip (a
    ``torch.save`` checkpoint), a truncated file or a header that lies about its tensors is refused with one
    line and never reaches a parser.

    Returns:
        The header's ``__metadata__`` (str -> str; empty when there is none).

    Raises:
        UsageError: Anything that is not a well-formed safetensors file.
    """
    def bad(reason: str) -> UsageError:
        return UsageError(f"{source}: corrupt safetensors file ({reason})")

    if len(raw) < 8:
        raise bad("shorter than its 8-byte header length")
    size = struct.unpack("<Q", raw[:8])[0]
    if size > MAX_HEADER_BYTES or 8 + size > len(raw):
        if raw[:4] == b"PK\x03\x04":
            raise bad("it is a zip archive such as a torch.save checkpoint; only safetensors are accepted")
        if raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise bad("it is a pickle, which is never loaded; only safetensors are accepted")
        raise bad(f"header length {size} does not fit the {len(raw)}-byte file")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (ValueError, RecursionError) as exc:
        raise bad(f"header is not JSON: {exc.__class__.__name__}") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("__metadata__ must map strings to strings")
    spans = sorted(_tensor_span(name, info, bad) for name, info in header.items())
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise bad("tensor data overlap or leave gaps")
        end = stop
    if 8 + size + end != len(raw):
        raise bad(f"tensor data take {end} bytes, the file holds {len(raw) - 8 - size}")
    return meta


def _tensor_span(name: str, info: object, bad) -> tuple[int, int]:
    """One header entry's data offsets, checked against its dtype and shape."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"tensor '{name[:80]}' needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise bad(f"tensor '{name[:80]}' has dtype {str(dtype)[:20]!r}; allowed: {', '.join(SAFETENSORS_DTYPES)}")
    ints = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    if not isinstance(shape, list) or not all(ints(d) for d in shape):
        raise bad(f"tensor '{name[:80]}' has a malformed shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(ints(o) for o in offsets):
        raise bad(f"tensor '{name[:80]}' has malformed data_offsets")
    count = 1
    for d in shape:
        count *= d
    if offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[dtype]:
        raise bad(f"tensor '{name[:80]}': data_offsets do not match dtype and shape")
    return offsets[0], offsets[1]


def parse_safetensors(raw: bytes, source: str) -> tuple[StateDict, dict[str, str]]:
    """Checked (:func:`check_safetensors`) safetensors bytes as a state dict and its metadata.

    Raises:
        UsageError: Not a well-formed safetensors file.
    """
    meta = check_safetensors(raw, source)
    try:
        return dict(st_load(raw)), meta
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{source}: corrupt safetensors file ({exc})") from exc


def _load_torch_state(path: Path) -> StateDict:
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
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
