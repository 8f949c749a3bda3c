"""Full validation of an entry that arrives from outside (an upload to the zoo server, or ``zoo import``), before
it is stored.

A bundle's reader (:func:`edgemvp.zoo.store.read_bundle_from`) has already checked the manifest's schema, its
id (sha256) and canonical form, and the weights' sha256 against the manifest. Here the rest: the entry's base
is one this server has (same arch, dataset, weights and input spec, so it can vote from the entry), the masks
fit the arch (checked when the manifest was parsed), the weights are a well-formed safetensors file (header
parsed by hand first, so a pickle or a zip never reaches a parser) whose tensors are finite, whose header's
arch, class count and input spec are the manifest's, and which load with ``strict=True`` into
create(arch) -> shrink(masks) (so another entry's weights under this entry's masks are refused). Nothing is
written anywhere.
"""
from __future__ import annotations

import json
import math
from typing import Mapping

import torch

from edgemvp.errors import UsageError
from edgemvp.models.base import BaseManifest
from edgemvp.models.weights import parse_safetensors
from edgemvp.shrink import rebuild_pruned
from edgemvp.manifest import BaseRef, EntryManifest

MAX_CLASSES = 10_000  # the classifier of an uploaded entry is built before its weights load


def check_entry(manifest: EntryManifest, weights: bytes, bases: Mapping[str, BaseManifest], source: str,
                require_base: bool = True) -> None:
    """Refuse an entry the zoo could not vote from or rebuild.

    Args:
        manifest: The parsed manifest.
        weights: The weights' bytes (sha256 already checked against the manifest).
        bases: The bases this zoo votes with, by weights sha256.
        source: Names the entry in errors.
        require_base: Refuse an entry of a base not in ``bases`` (the server); else (``zoo import``, whose
            cache may not hold the base yet) only an entry whose base is known is compared with it.

    Raises:
        UsageError: Unknown base, a base reference that differs from it, too many classes, malformed or
            non-finite weights, weights made for another model, or weights that do not fit the masks.
    """
    ref = manifest.base
    base = bases.get(ref.weights_sha256)
    if base is None and require_base:
        known = ", ".join(f"{b.arch}/{b.dataset} {sha[:12]}" for sha, b in bases.items()) or "none"
        raise UsageError(f"{source}: base {ref.weights_sha256[:12]} is not a base of this zoo server "
                         f"(it has: {known})")
    if base is not None and ref != BaseRef(base.arch, base.dataset, base.weights_sha256, base.input_spec):
        raise UsageError(f"{source}: base reference (arch, dataset or input spec) differs from the "
                         f"{base.arch}/{base.dataset} base with these weights")
    odd = [k for k, v in manifest.metrics.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if odd:
        raise UsageError(f"{source}: metric '{odd[0]}' is not a finite number")
    if len(manifest.task.classes) > MAX_CLASSES:
        raise UsageError(f"{source}: {len(manifest.task.classes)} classes; at most {MAX_CLASSES}")
    state, meta = parse_safetensors(weights, f"{source}: weights")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UsageError(f"{source}: weights: tensor '{bad[0]}' holds NaN or infinity")
    _check_header(meta, manifest, source)
    rebuild_pruned(manifest.arch, len(manifest.task.classes), ref.input_spec, manifest.masks, state,
                   f"{source}: weights")


def _check_header(meta: Mapping[str, str], manifest: EntryManifest, source: str) -> None:
    """The weights' own header (arch, class count, input spec) must describe the manifest's model."""
    want = {"arch": manifest.arch, "num_classes": str(len(manifest.task.classes)),
            "input_spec": json.loads(json.dumps(manifest.base.input_spec.to_dict()))}
    try:
        got = {"arch": meta.get("arch"), "num_classes": meta.get("num_classes"),
               "input_spec": json.loads(meta["input_spec"]) if "input_spec" in meta else None}
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{source}: weights header has an unreadable input_spec") from exc
    differ = [k for k in want if got[k] != want[k]]
    if differ:
        raise UsageError(f"{source}: the weights were made for another model (their {', '.join(differ)} "
                         "differ from the manifest's)")
