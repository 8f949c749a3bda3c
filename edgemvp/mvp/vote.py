"""The vote (the paper's Eq. 1; docs/design.md, decision 8).

For each unit group of ``n`` units, every neighbour that kept unit ``k`` gives it a vote: ``v_k`` in
``0..N``. The group keeps ``max(1, round((1 - r) n))`` units drawn without replacement from
``p(k) = softmax(v_k / tau)``. Sampling uses the Gumbel top-k trick: keep the ``m`` largest
``v_k / tau + g_k`` with ``g_k`` i.i.d. standard Gumbel. This is exactly successive sampling without
replacement from ``p`` (the first pick is distributed as ``p``; each next one as ``p`` renormalised over the
rest), and it is one vectorised draw for the whole model, reproducible from the recorded seed.

``tau -> 0`` keeps the most-voted units (ties broken at random); ``tau -> inf`` is random pruning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemvp.errors import UsageError
from edgemvp.masks import Masks, group_keep
from edgemvp.units import unit_space

DEFAULT_NEIGHBOURS = 3
DEFAULT_RATIO = 0.9  # the paper's: 90% of every unit group removed
# tau: measured on fashion5 with 3 neighbours from a 12-task zoo (docs/results.md): at tau = 1 about half the
# kept units have no vote and J=100 reaches 89.8%; at tau = 0.25 it reaches 92.4-92.5% over 3 seeds.
DEFAULT_TEMPERATURE = 0.25


def _top_k(keys: np.ndarray, k: int) -> tuple[int, ...]:
    """Positions of the ``k`` largest keys, ascending (with Gumbel-perturbed keys: a sample without replacement)."""
    return tuple(int(i) for i in np.sort(np.argpartition(-keys, k - 1)[:k]))


@dataclass(frozen=True)
class VoteResult:
    """The sampled masks with the vote behind them."""

    masks: Masks
    votes: dict[str, np.ndarray]  # per unit group, (n,) int votes
    seed: int
    temperature: float
    neighbours: int
    filled: int = 0  # units no neighbour kept, taken by the prior's ranking

    def agreement(self) -> float:
        """Fraction of kept units that every neighbour kept (how unanimous the sample is)."""
        kept = sum(int((self.votes[u][list(k)] == self.neighbours).sum()) for u, k in self.masks.kept.items())
        return kept / sum(len(k) for k in self.masks.kept.values())


def _fill(votes: np.ndarray, prior: np.ndarray, k: int) -> tuple[int, ...]:
    """Every voted unit, then the ``k - voted`` unvoted units the prior ranks highest (ties: lower index)."""
    voted = np.flatnonzero(votes > 0)
    rest = np.flatnonzero(votes == 0)
    order = rest[np.argsort(-prior[rest], kind="stable")][:k - len(voted)]
    return tuple(int(i) for i in np.sort(np.concatenate([voted, order])))


def vote(arch: str, neighbour_masks: np.ndarray, ratio: float, temperature: float = DEFAULT_TEMPERATURE,
         seed: int = 0, base_sha256: str = "", round_to: int = 1, prior: np.ndarray | None = None,
         counts: tuple[int, ...] | None = None) -> VoteResult:
    """Sample target masks from the neighbours' kept units.

    Args:
        arch: Architecture (its unit space orders the columns).
        neighbour_masks: ``(N, units)`` bool, one row per neighbour, unit-space order (``ZooStore.mask_rows``).
        ratio: Fraction of every group to remove.
        temperature: ``tau`` > 0.
        seed: Seed of the Gumbel draw (recorded in the report).
        base_sha256: Base model the masks refer to.
        round_to: Keep a multiple of this many channels (MLP nodes) per group, a device's channel block
            (:func:`edgemvp.masks.unit_keep`); the draw is the same, only the count taken from it differs.
        prior: Per unit (unit-space order), the base's importance on the target (:mod:`edgemvp.mvp.prior`). A
            group that keeps more units than its neighbours voted for keeps every voted unit and fills the rest
            by this ranking rather than at random; other groups are drawn as without it.
        counts: Per group (unit-space order), the units to keep instead of the uniform ``ratio``'s: a per-group
            allocation (:mod:`edgemvp.deploy.allocate`); the draw is the same.

    Raises:
        UsageError: Non-positive temperature, no neighbours, rows that do not match the arch, or bad counts.
    """
    if not temperature > 0:
        raise UsageError(f"--temperature must be positive, got {temperature}")
    space = unit_space(arch)
    rows = np.asarray(neighbour_masks, dtype=bool)
    total = sum(u.size for u in space.units)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != total:
        raise UsageError(f"vote needs (neighbours, {total}) masks for {arch}, got {rows.shape}")
    v = rows.sum(axis=0).astype(np.int64)
    rng = np.random.default_rng(seed)
    keys = v / temperature + rng.gumbel(size=total)  # one draw for the whole model
    if prior is not None and np.shape(prior) != (total,):
        raise UsageError(f"vote prior needs {total} scores for {arch}, got shape {np.shape(prior)}")
    kept, votes, start, filled = {}, {}, 0, 0
    for unit, k in zip(space.units, group_keep(arch, ratio, round_to, counts)):
        group = v[start:start + unit.size]
        if prior is not None and k > int((group > 0).sum()):
            kept[unit.name] = _fill(group, np.asarray(prior[start:start + unit.size], dtype=np.float64), k)
            filled += k - int((group > 0).sum())
        else:
            kept[unit.name] = _top_k(keys[start:start + unit.size], k)
        votes[unit.name] = group
        start += unit.size
    return VoteResult(Masks(arch, kept, base_sha256), votes, seed, temperature, rows.shape[0], filled)
