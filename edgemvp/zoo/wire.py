"""What the zoo server and its client exchange, encoded and decoded in one place.

The voter's answer travels as one self-describing safetensors file: the initial weights of the target's
shrunk model, and in its header (``__metadata__``, string -> string) the arch, class count and input spec
(as in every pruned model edgemvp writes), the masks, the seed, the vote's report fields and the neighbours
with their canonical manifests (each checked against its id on arrival). No pickle, no second request.
"""
from __future__ import annotations

import json
from typing import Any

from edgemvp.data.tasks import TaskSpec, task_name
from edgemvp.errors import UsageError
from edgemvp.masks import Masks
from edgemvp.models.weights import parse_safetensors, sha256_bytes, weights_bytes
from edgemvp.shrink import pruned_metadata, rebuild_pruned
from edgemvp.spec import InputSpec
from edgemvp.mvp.voter import Initial, Neighbour
from edgemvp.manifest import EntryManifest

SHA_HEADER = "X-Edgemvp-Sha256"  # sha256 of a response body (entry weights, base weights, vote payload)
SEED_HEADER = "X-Edgemvp-Seed"
VOTE_MEDIA_TYPE = "application/vnd.edgemvp.vote+safetensors"
BUNDLE_MEDIA_TYPE = "application/x-tar"


def task_json(task: TaskSpec) -> dict[str, Any]:
    """A task for a request body."""
    return {"name": task.name, "dataset": task.dataset, "classes": list(task.classes),
            "synsets": list(task.synsets)}


def task_from_json(dataset: str, classes: list[str], synsets: list[str | None] | None = None,
                   name: str | None = None) -> TaskSpec:
    """The task a request names (its synsets default to the dataset's shipped map).

    Raises:
        UsageError: Fewer than 2 classes, a class twice, or synsets that do not match the classes.
    """
    if synsets is not None and len(synsets) != len(classes):
        raise UsageError(f"task: {len(synsets)} synsets for {len(classes)} classes")
    picked = tuple(classes)
    return TaskSpec(name or task_name(dataset, picked), dataset, picked, tuple(synsets or ()))


def initial_bytes(init: Initial, spec: InputSpec, num_classes: int, seed: int, kind: str) -> bytes:
    """The voter's answer as safetensors bytes (weights + header metadata)."""
    neighbours = [{"id": n.id, "similarity": n.similarity, "manifest": n.manifest.to_bytes().decode()}
                  for n in init.neighbours]
    meta = {**pruned_metadata(init.masks, spec, num_classes), "masks": init.masks.to_json(), "seed": str(seed),
            "info": json.dumps(init.info, sort_keys=True), "neighbours": json.dumps(neighbours),
            "similarity": kind}
    return weights_bytes(init.model.state_dict(), meta)


def initial_from_bytes(raw: bytes, spec: InputSpec, base_sha256: str, source: str) -> tuple[Initial, int]:
    """Rebuild the voter's answer: create(arch) -> shrink(masks) -> load_state_dict(strict=True).

    Args:
        raw: What :func:`initial_bytes` wrote.
        spec: The base's input spec (the payload must agree).
        base_sha256: The base the masks must refer to.
        source: Names the payload in errors.

    Returns:
        The initial model with its masks, neighbours and report fields; and the seed used.

    Raises:
        UsageError: A malformed payload, masks of another base, or a neighbour manifest not matching its id.
    """
    state, meta = parse_safetensors(raw, source)
    try:
        arch, num_classes = meta["arch"], int(meta["num_classes"])
        if InputSpec.from_dict(json.loads(meta["input_spec"])) != spec:
            raise UsageError(f"{source}: input spec differs from the base's")
        masks = Masks.from_json(meta["masks"], f"{source}: masks", arch=arch)
        seed, info, listed = int(meta["seed"]), json.loads(meta["info"]), json.loads(meta["neighbours"])
        neighbours = [_neighbour(n, source) for n in listed]
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"{source}: malformed vote payload ({exc.__class__.__name__}: {exc})") from exc
    if masks.base_sha256 != base_sha256:
        raise UsageError(f"{source}: masks refer to base {masks.base_sha256[:12]}, not {base_sha256[:12]}")
    return Initial(rebuild_pruned(arch, num_classes, spec, masks, state, source), masks, neighbours, info), seed


def _neighbour(item: dict[str, Any], source: str) -> Neighbour:
    raw = item["manifest"].encode()
    if sha256_bytes(raw) != item["id"]:
        raise UsageError(f"{source}: neighbour {str(item['id'])[:12]}: manifest does not match its id")
    return Neighbour(item["id"], EntryManifest.from_bytes(raw, f"{source}: neighbour"), float(item["similarity"]))
