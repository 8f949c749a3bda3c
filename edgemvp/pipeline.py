"""``edgemvp prune``: a new task -> nearest zoo tasks -> vote -> averaged init -> shrink -> BatchNorm
re-estimation -> J fine-tune steps -> ONNX (+ int8) -> latency gate, written to ``export/<task>-<device>/``.

``--method`` runs the baselines through the same path, so their figures compare like for like:

* ``mvp``: Meta-Vote Pruning (the N nearest entries vote; their weights initialise the sub-network).
* ``random``: random masks at the same ratio, initialised from the base model.
* ``ifp``: the family's single-task pruner (IFP for CNNs, AHNP for ViTs) from the base model for J steps.
* ``transfer``: the single nearest zoo model (its masks and weights, the head mapped by class), fine-tuned.

Artifacts (docs/design.md): ``model.onnx`` (+ ``model.int8.onnx``), ``masks.json``, ``weights.safetensors``,
``report.json``, ``README.md``; plus ``export.json`` from the export step. They are written to a temporary
sibling folder and moved into place at the end, so an interrupted run never leaves a half-written folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, get_args

import numpy as np
import torch

from edgemvp import checks
from edgemvp.data.datasets import Dataset, get_dataset
from edgemvp.data.loader import LabeledView, balanced_sample, eval_batches, train_batches
from edgemvp.data.tasks import TaskSpec, task_view
from edgemvp.deploy.budget import over_budget, size_over_budget
from edgemvp.deploy.devices import DeviceProfile, ProfileRegistry
from edgemvp.deploy.export import MEASURE_SECONDS_PER_RUN, ExportSource, deploy
from edgemvp.deploy.latency import latency
from edgemvp.deploy.onnx import ExportConfig, Exporter
from edgemvp.deploy.allocate import ALLOCATIONS, Allocation, SkeletonCost, allocate
from edgemvp.deploy.search import SearchResult, SkeletonTimer, next_ratio, search_ratio
from edgemvp.errors import BudgetExceeded, UsageError
from edgemvp.manifest import BaseRef, EntryManifest
from edgemvp.masks import Masks
from edgemvp.models.base import BaseManifest, base_rows
from edgemvp.models.factory import FAMILIES, create_model, get_arch
from edgemvp.models.weights import sha256_file
from edgemvp.mvp.average import target_model
from edgemvp.mvp.prior import PRIOR_IMAGES, unit_importance
from edgemvp.mvp.ratios import at_ratio, fill_order, several_ratios
from edgemvp.mvp.rank import SIMILARITIES, Ranking, ZooTasks, load_hierarchy, nearest
from edgemvp.mvp.rank import rank as rank_entries
from edgemvp.mvp.similarity import Hierarchy
from edgemvp.mvp.vote import DEFAULT_NEIGHBOURS, DEFAULT_RATIO, DEFAULT_TEMPERATURE
from edgemvp.mvp.voter import Initial, Neighbour, VoteSpec, check_vote_settings
from edgemvp.paths import atomic_write_bytes
from edgemvp.pruners import PruneConfig, get_pruner
from edgemvp.report import Accuracy, BaseSummary, PruneReport
from edgemvp.runs import CARD, REPORT, check_out, replace_dir
from edgemvp.shrink import WEIGHTS_FILE, params_and_macs, save_pruned
from edgemvp.train import (OptimConfig, Progress, accuracy, batchnorm_statistics_matter, default_device,
                           reestimate_batchnorm, train_steps)
from edgemvp.versions import tool_versions
from edgemvp.zoo.api import DEFAULT_MIN_SIMILARITY, Location, Zoo, open_zoo
from edgemvp.zoo.local import LocalZoo

logger = logging.getLogger(__name__)

METHODS = ("mvp", "random", "ifp", "transfer")



@dataclass(frozen=True)
class PruneRequest:
    """One ``edgemvp prune`` run.

    Attributes:
        task: The target task.
        device: Device profile name or alias.
        zoo: Zoo folder, or a zoo server's address (:class:`edgemvp.zoo.remote.ZooAddress`); ``None`` is the default zoo of the
            base (built on first use for the offline default).
        arch: Base architecture; ``None`` takes the zoo's (or the default, resnet18).
        base_dataset: Dataset the base was pre-trained on; ``None`` takes the zoo's (or fashion-mnist).
        method: ``mvp``, ``random``, ``ifp`` or ``transfer``.
        iters: Fine-tune steps J (paper: 100).
        neighbours: N nearest entries that vote (paper: 3 are enough).
        similarity: ``wordnet`` (Wu-Palmer over WordNet or ``hierarchy``) or ``leep``.
        hierarchy: A user class hierarchy (YAML/JSON) used instead of WordNet.
        temperature: tau of softmax(v / tau).
        ratio: Fraction of every unit group removed.
        seed: Seeds the vote, the batches and default-initialised rows.
        batch_size: Fine-tune batch (paper: 128).
        bn_reestimate: Recompute BatchNorm statistics on the target before fine-tuning: True, False, or None
            (auto: only when fine-tuning is too short to replace them, see
            :func:`edgemvp.mvp.batchnorm_statistics_matter`; with BatchNorm's momentum 0.1, J < 66).
        bn_batches: Batches used for that.
        leep_samples: Target training images LEEP scores candidates on.
        int8: Also write and report an int8 model (the gate then applies to it).
        budget_ms: Override the profile's latency budget.
        measure: Measure latency here even when the device is not detected.
        out: Output folder (default ``export/<task>-<device>``).
        add_to_zoo: Store the result in the zoo with its neighbours as parents.
        runs: Timed runs when latency is measured.
        lr: Peak learning rate of the fine-tune (and of the single-task pruner for ``ifp``); ``None`` takes
            the family default (:class:`edgemvp.models.factory.FamilySpec`).
        train_per_class: Use at most this many training images per class (a fixed seeded subsample).
        head_from_base: Start each target class from the base's classifier row for it where the base has one
            (for an ImageNet base: a class whose synset is an ImageNet class); off for the ablation.
        min_similarity: Without ``zoo`` (and ``arch``, ``base_dataset``), a task not of the offline default's
            dataset votes from the cached zoo nearest to it, which must reach this Wu-Palmer similarity.
        round_to: Channel (and MLP node) counts kept as multiples of this; ``None`` (auto) takes the device
            profile's channel block (:func:`run` resolves it; :func:`fit` alone reads ``None`` as 1).
        search: Let the latency budget (``budget_ms``, else the profile's) choose ``ratio``: the least pruning
            whose model meets it (:mod:`edgemvp.deploy.search`); ``ratio`` is then ignored.
        margin: With ``search``, aim this fraction below the budget (default: 10% measured, 2% estimated).
        exporter: ONNX exporter of the shipped model.
        allocate: With ``search``, ``uniform`` (every group at the chosen ratio) or ``greedy`` (then per-group
            counts: remove where the cost model saves most latency for the least importance lost,
            :mod:`edgemvp.deploy.allocate`; ``mvp`` and ``random``).
        counts: Per-group keep counts (unit-space order) instead of ``ratio``'s (set by the greedy allocation).
    """

    task: TaskSpec
    device: str
    zoo: Location | None = None
    arch: str | None = None
    base_dataset: str | None = None
    method: str = "mvp"
    iters: int = 100
    neighbours: int = DEFAULT_NEIGHBOURS
    similarity: str = "wordnet"
    hierarchy: Path | None = None
    temperature: float = DEFAULT_TEMPERATURE
    ratio: float = DEFAULT_RATIO
    seed: int = 0
    batch_size: int = 128
    bn_reestimate: bool | None = None
    bn_batches: int = 20
    leep_samples: int = 500
    int8: bool = False
    budget_ms: float | None = None
    measure: bool = False
    out: Path | None = None
    add_to_zoo: bool = False
    runs: int = 100
    lr: float | None = None
    train_per_class: int | None = None
    head_from_base: bool = True
    min_similarity: float = DEFAULT_MIN_SIMILARITY
    round_to: int | None = None
    search: bool = False
    margin: float | None = None
    exporter: str = ExportConfig().exporter
    allocate: str = "uniform"
    counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}'; valid methods: {', '.join(METHODS)}")
        if self.similarity not in SIMILARITIES:
            raise UsageError(f"unknown similarity '{self.similarity}'; valid: {', '.join(SIMILARITIES)}")
        checks.number("--iters", self.iters, 0, 1_000_000, integer=True)
        check_vote_settings(self.ratio, self.temperature, self.neighbours)
        checks.seed("--seed", self.seed)
        checks.number("batch size", self.batch_size, 1, 65_536, integer=True)
        checks.number("BatchNorm batches", self.bn_batches, 1, 100_000, integer=True)
        checks.number("LEEP samples", self.leep_samples, 1, 1_000_000, integer=True)
        checks.number("--runs", self.runs, 1, 100_000, integer=True)
        checks.optional("--lr", self.lr, lo=0, hi=10, lo_open=True)
        checks.optional("--budget-ms", self.budget_ms, lo=0, hi=1e7, lo_open=True)
        checks.optional("--train-per-class", self.train_per_class, lo=1, hi=10**9, integer=True)
        checks.optional("--round-to", self.round_to, lo=1, hi=4096, integer=True)
        checks.optional("--margin", self.margin, lo=0, hi=1, hi_open=True)
        if self.search and self.method == "transfer":
            raise UsageError("--method transfer keeps its zoo entry's masks: it has no ratio for a budget to choose")
        if self.search and self.int8:
            raise UsageError("--ratio auto sizes the fp32 model; with --int8 give a --ratio")
        if self.margin is not None and not self.search:
            raise UsageError("--margin is for --ratio auto (a budget that chooses the ratio)")
        if self.allocate not in ALLOCATIONS:
            raise UsageError(f"unknown allocation '{self.allocate}'; valid: {', '.join(ALLOCATIONS)}")
        if self.allocate == "greedy" and not self.search:
            raise UsageError("--allocate greedy is for --ratio auto (a budget that sizes the model)")
        if (self.allocate == "greedy" or self.counts is not None) and self.method not in ("mvp", "random"):
            raise UsageError(f"--method {self.method} prunes every group at one ratio: a per-group allocation is "
                             "for mvp and random")
        if self.exporter not in get_args(Exporter):
            raise UsageError(f"unknown exporter '{self.exporter}'; valid: {', '.join(get_args(Exporter))}")
        if self.method == "ifp" and self.iters < 1:
            raise UsageError("--method ifp needs --iters of at least 1 (it prunes while training)")

    def vote_spec(self) -> VoteSpec:
        """The voter's part of the request (``mvp``, ``transfer`` and ``random``)."""
        return VoteSpec(self.task, self.method, self.neighbours, self.ratio, self.temperature, self.seed,
                        self.head_from_base, self.round_to or 1, counts=self.counts)

    def voters(self) -> int | None:
        """Entries a Wu-Palmer ranking over WordNet picks (the default zoo builds just what it can pick), else
        None (LEEP, a user's hierarchy, or a method that ranks nothing)."""
        if self.similarity != "wordnet" or self.hierarchy is not None or self.method not in ("mvp", "transfer"):
            return None
        return self.neighbours if self.method == "mvp" else 1

    def output_dir(self, profile: DeviceProfile, fleet: bool = False) -> Path:
        """``--out``, else ``export/<task>-<device>``; for several devices, ``<out>/<task>-<device>``."""
        folder = f"{self.task.name}-{profile.name}"
        if self.out is None:
            return Path("export") / folder
        return self.out / folder if fleet else self.out

    def finetune_optim(self, family: str) -> OptimConfig:
        """The fine-tune optimiser: the family's recipe at ``lr`` when given."""
        optim = FAMILIES[family].finetune
        return optim if self.lr is None else replace(optim, lr=self.lr)

    def settings(self, family: str) -> dict:
        """The report's ``settings``: what a rerun needs to give the same model."""
        return {"iters": self.iters, "ratio": self.ratio, "seed": self.seed, "batch_size": self.batch_size,
                "neighbours": self.neighbours, "temperature": self.temperature,
                "bn_reestimate": "auto" if self.bn_reestimate is None else self.bn_reestimate,
                "bn_batches": self.bn_batches, "train_per_class": self.train_per_class,
                "finetune_optim": asdict(self.finetune_optim(family)), "device": str(default_device()),
                "round_to": self.round_to or 1, **({"ratio_search": True} if self.search else {}),
                **({"allocate": self.allocate} if self.search else {})}

    def train_view(self, dataset: Dataset) -> LabeledView:
        """The target's training images (all, or ``train_per_class`` per class)."""
        # a fixed subsample, so that every method and seed sees the same few images
        return task_view(self.task, dataset, "train", per_class=self.train_per_class, seed=0)


@dataclass
class Stages:
    """Progress hooks a front end may supply (all optional)."""

    bar: Callable[[str, str], Progress] | None = None  # (description, unit) -> progress object
    say: Callable[[str], None] = lambda line: None

    def progress(self, desc: str, unit: str = "step") -> Progress | None:
        return self.bar(desc, unit) if self.bar else None


@dataclass
class PruneResult:
    """What a run produced: its report (``summary``; ``report`` is ``report.json``'s content) and folder."""

    summary: PruneReport
    out: Path

    @property
    def report(self) -> dict:
        """``report.json``'s content."""
        return self.summary.to_dict()

    @property
    def within_budget(self) -> bool:
        return self.summary.within_budget

    @property
    def entry_id(self) -> str | None:
        """The zoo entry it was stored as (``--add-to-zoo``)."""
        return self.summary.zoo.get("added")


class Clock:
    """Seconds per named stage since the last lap (``report.json``'s ``timings``)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# --- similarity --------------------------------------------------------------------------------------------
def rank(zoo: Zoo, ids: list[str], tasks: ZooTasks, task: TaskSpec, dataset: Dataset, req: PruneRequest,
         hierarchy: Hierarchy | None = None) -> Ranking:
    """Rank zoo entries for the request (:func:`edgemvp.mvp.rank.rank`: Wu-Palmer, else LEEP on a seeded,
    class-balanced sample of the target's training images)."""
    if req.similarity == "wordnet" and hierarchy is None:
        hierarchy = load_hierarchy(req.hierarchy)
    limit = None if several_ratios(tasks) else req.neighbours if req.method == "mvp" else 1  # several: all
    return rank_entries(zoo, ids, tasks, task, req.similarity, hierarchy, limit=limit,
                        images=lambda: balanced_sample(req.train_view(dataset), zoo.base.input_spec,
                                                       req.leep_samples, req.seed))


# --- the run -----------------------------------------------------------------------------------------------
def vote_prior(req: PruneRequest, zoo: Zoo, train: LabeledView, other_votes: np.ndarray | None = None
               ) -> np.ndarray | None:
    """For ``mvp``, the order in which the vote fills groups beyond its neighbours' votes: the neighbours' entries
    at other ratios (``other_votes``, per unit), then on a CNN the base's unit importance on a class-balanced
    sample of the target's training images (:mod:`edgemvp.mvp.prior`, :mod:`edgemvp.mvp.ratios`)."""
    if req.method != "mvp":
        return None
    return fill_order(base_importance(req, zoo, train), other_votes)


def base_importance(req: PruneRequest, zoo: Zoo, train: LabeledView) -> np.ndarray | None:
    """On a CNN, the base's unit importance on a class-balanced sample of the target's training images
    (:mod:`edgemvp.mvp.prior`); None for other families."""
    if get_arch(zoo.base.arch).family != "cnn":
        return None
    images, _ = balanced_sample(train, zoo.base.input_spec, PRIOR_IMAGES, req.seed)
    return unit_importance(zoo.base_model(), zoo.base.arch, images)


def _method_model(req: PruneRequest, zoo: Zoo, ranking: Ranking | None, batches, stages: Stages,
                  prior: np.ndarray | None = None) -> Initial:
    """Masks and initial (or, for IFP, trained) model of the chosen method, the neighbours used and extra
    report fields. The voter (:mod:`edgemvp.mvp.voter`, in process or on the zoo server) makes mvp, transfer and
    random; IFP prunes the base here."""
    if req.method != "ifp":
        return zoo.initialise(replace(req.vote_spec(), prior=prior), ranking)
    base, task = zoo.base, req.task
    name = get_arch(base.arch).recipes.single_task_pruner
    rows = base_rows(base, task, zoo.cache) if req.head_from_base else ("",) * len(task.classes)
    full = target_model(zoo.base_model(), base.classes, base.dataset, task.dataset, task.classes, req.seed, rows)
    cfg = PruneConfig(ratio=req.ratio, iters=req.iters, batch_size=req.batch_size, lr=req.lr, seed=req.seed,
                      round_to=req.round_to or 1)
    out = get_pruner(name, get_arch(base.arch).family)(full, base.arch, batches, cfg, base.weights_sha256,
                                                       default_device(),
                                                       stages.progress(f"{name} J={req.iters}"))
    return Initial(out.model, out.masks, [], {"pruner": {"name": name, "config": cfg.to_dict()}})


@dataclass
class Fitted:
    """A method's model for the target after training, with what it was made from."""

    model: torch.nn.Module  # on the CPU, in eval mode
    masks: Masks
    neighbours: list[Neighbour]  # neighbours used, with their similarity
    info: dict  # extra report fields (vote, pruner)
    accuracy: dict[str, float | None]  # test accuracy: init_before_bn, init (None for ifp), final


def fit(req: PruneRequest, zoo: Zoo, ranking: Ranking | None, dataset: Dataset, stages: Stages | None = None,
        lap: Callable[[str], None] = lambda name: None, other_votes: np.ndarray | None = None) -> Fitted:
    """Build the method's sub-network for the target, re-estimate BatchNorm, fine-tune J steps (``ifp``: prune
    while training J steps) and measure test accuracy; ``lap`` is called after each stage (stages that only
    measure accuracy are named ``evaluate*``).

    This is the part of :func:`run` that the methods differ in; benchmarks call it directly.
    """
    stages = stages or Stages()
    family, spec = get_arch(zoo.base.arch).family, zoo.base.input_spec
    train = req.train_view(dataset)
    torch.manual_seed(req.seed)
    device = default_device()
    batches = train_batches(train, spec, req.batch_size, req.seed, pin_memory=device.type == "cuda")
    init = _method_model(req, zoo, ranking, batches, stages, vote_prior(req, zoo, train, other_votes))
    model = init.model
    # fine-tuning starts from the same RNG state wherever the initial model was made (here or on a server)
    torch.manual_seed(req.seed)
    lap("init")
    test = task_view(req.task, dataset, "test")
    acc: dict[str, float | None] = {"init": None, "init_before_bn": None}
    if req.method != "ifp":
        acc["init_before_bn"] = round(accuracy(model, eval_batches(test, spec), device), 3)
        lap("evaluate_init_before_bn")
        reestimate = (req.bn_reestimate if req.bn_reestimate is not None
                      else batchnorm_statistics_matter(model, req.iters))
        reset = 0  # BatchNorm layers re-estimated (none in a ViT)
        if reestimate:
            plain = train_batches(train, spec, req.batch_size, req.seed + 1, augmented=False)
            reset = reestimate_batchnorm(model.to(device), plain, req.bn_batches, device)
        init.info["bn_reestimated"] = reset > 0
        lap("bn_reestimate")
        if init.info["bn_reestimated"]:
            acc["init"] = round(accuracy(model, eval_batches(test, spec), device), 3)
        else:
            acc["init"] = acc["init_before_bn"]
        lap("evaluate_init")
        if req.iters:
            train_steps(model, batches, req.iters, req.finetune_optim(family), device,
                        stages.progress(f"fine-tune J={req.iters}"), deterministic=True)
        lap("finetune")
    acc["final"] = round(accuracy(model, eval_batches(test, spec), device), 3)
    model = model.cpu().eval()
    lap("evaluate")
    return Fitted(model, init.masks, init.neighbours, init.info, acc)


@dataclass(frozen=True)
class Target:
    """One device of a run: its request (round_to and device resolved), profile and output folder."""

    req: PruneRequest
    profile: DeviceProfile
    out: Path


def targets(req: PruneRequest, devices: tuple[str, ...], registry: ProfileRegistry) -> list[Target]:
    """Resolve every device before any work (an unknown one, a duplicate or an unusable folder: one line)."""
    profiles: list[DeviceProfile] = []
    for name in devices:
        profile = registry.get(name)
        if any(p.name == profile.name for p in profiles):
            raise UsageError(f"device '{name}' is listed twice (as '{profile.name}')")
        profiles.append(profile)
    found: list[Target] = []
    for profile in profiles:  # folders are checked (and their parents made) once every device is known
        one = replace(req, device=profile.name,
                      round_to=req.round_to if req.round_to is not None else profile.hardware.channel_block)
        found.append(Target(one, profile, check_out(one.output_dir(profile, fleet=len(devices) > 1))))
    return found


@dataclass
class FleetResult:
    """A run over several devices: a result per device that got a model, the budget line of those that did not."""

    results: list[PruneResult]
    failed: dict[str, str]  # device -> the line saying why no model meets its budget


def run(req: PruneRequest, cache: str | os.PathLike[str] | None = None,
        data_root: str | os.PathLike[str] | None = None, stages: Stages | None = None,
        profiles: tuple[Path, ...] = ()) -> PruneResult:
    """Run ``edgemvp prune`` for one device (see the module docstring and :func:`run_fleet`).

    Raises:
        UsageError: Unknown device, missing data, empty zoo, zoo of another base, N larger than the zoo, ...
        BudgetExceeded: ``search`` found no ratio whose model meets the budget.
    """
    fleet = run_fleet(req, (req.device,), cache, data_root, stages, profiles)
    if fleet.failed:
        raise BudgetExceeded(next(iter(fleet.failed.values())))
    return fleet.results[0]


def run_fleet(req: PruneRequest, devices: tuple[str, ...], cache: str | os.PathLike[str] | None = None,
              data_root: str | os.PathLike[str] | None = None, stages: Stages | None = None,
              profiles: tuple[Path, ...] = ()) -> FleetResult:
    """Run ``edgemvp prune`` for one or more devices: check the request, open the zoo and rank once, then per
    device size (``search``), vote, fit, export, gate and write its folder. Devices whose model has the same
    ratio, channel block and counts share one fitted model.
    """
    stages = stages or Stages()
    clock = Clock()
    # everything a user can get wrong fails here with one line, before any work or any file is touched
    todo = targets(req, devices, ProfileRegistry(profiles, cache))
    hierarchy = load_hierarchy(req.hierarchy) if req.similarity == "wordnet" else None
    dataset = get_dataset(req.task.dataset, data_root)  # missing data: one line saying how to get it
    clock.lap("setup")
    with open_zoo(req.zoo, req.arch, req.base_dataset, cache, data_root, writable=req.add_to_zoo, say=stages.say,
                  progress=stages.progress, task=req.task, min_similarity=req.min_similarity,
                  voters=req.voters()) as zoo:
        if isinstance(zoo, LocalZoo):
            zoo.base_model()  # a damaged cached base: its one line before any note or work (loaded once anyway)
        clock.lap("base_and_zoo")
        ids, tasks = zoo.task_table()
        ranking = _ranking(req, zoo, ids, tasks, dataset, hierarchy, stages)
        clock.lap("similarity")
        keep = _keep_shares(zoo, ids) if ranking is not None and several_ratios(tasks) else None
        shared = Shared(zoo, len(ids), ranking, dataset, cache, data_root, stages, dict(clock.timings),
                        (ids, tasks, keep))
        fleet = FleetResult([], {})
        for target in todo:
            try:
                fleet.results.append(_one_device(target, shared))
            except BudgetExceeded as err:
                fleet.failed[target.profile.name] = str(err)
    return fleet


@dataclass
class Shared:
    """What the devices of a run share: the zoo, its ranking, the data, and the shared stages' timings."""

    zoo: Zoo
    entries: int
    ranking: Ranking | None
    dataset: Dataset
    cache: str | os.PathLike[str] | None
    data_root: str | os.PathLike[str] | None
    stages: Stages
    timings: dict[str, float]
    table: tuple = ((), (), None)  # ids, tasks and (a zoo with tasks at several ratios) the kept share per id
    fitted: dict = field(default_factory=dict)  # (ratio, round_to, counts) -> Fitted

    def ranking_at(self, req: PruneRequest) -> tuple[Ranking | None, np.ndarray | None]:
        """The ranking with one entry per task nearest ``req.ratio``, and per unit how many of the neighbour
        tasks' other-ratio entries kept it (:mod:`edgemvp.mvp.ratios`); as it is for a zoo of one ratio."""
        ids, tasks, keep = self.table
        if self.ranking is None or keep is None:
            return self.ranking, None
        count = req.neighbours if req.method == "mvp" else 1
        ranking, others = at_ratio(self.ranking, ids, tasks, keep, req.ratio, count)
        if not others or req.method != "mvp":
            return ranking, None
        return ranking, self.zoo.store.mask_rows(others).sum(axis=0)


def _keep_shares(zoo: Zoo, ids: list[str]) -> dict[str, float] | None:
    """Each entry's kept share of units, from a local zoo's index (a zoo server's ranking is taken as it is)."""
    store = getattr(zoo, "store", None)
    if store is None:
        return None
    return dict(zip(ids, store.mask_rows(ids).mean(axis=1).tolist()))


CONFIRM_RUNS = 4  # a measured miss is measured again over this many times the runs (and seconds)
MAX_RETRIES = 2  # shipped models over the budget that a search steps past before it gives up


@dataclass
class Sizing:
    """How a budget sizes one device's model: the uniform search and, with ``--allocate greedy``, the allocation."""

    result: SearchResult
    timer: SkeletonTimer
    cost: SkeletonCost | None = None
    importance: np.ndarray | None = None
    allocation: Allocation | None = None

    def apply(self, req: PruneRequest) -> PruneRequest:
        """The request at the chosen size."""
        counts = None if self.allocation is None or self.allocation.fell_back else self.allocation.counts
        return replace(req, ratio=self.result.ratio, counts=counts)

    def to_dict(self) -> dict:
        out = self.result.to_dict()
        if self.allocation is not None:
            out["allocation"] = {**self.allocation.to_dict(), "constants": self.cost.constants_source}
        return out

    def step_up(self, shipped_ms: float) -> bool:
        """After a shipped model over the budget: a smaller model whose candidate is faster by the overshoot (the
        allocation goes on from its counts; failing that, or uniform, :func:`next_ratio`); False when none is."""
        if self.allocation is not None and not self.allocation.fell_back:
            need = self.allocation.latency_ms * self.result.aim_ms / shipped_ms
            more = allocate(self.timer, self.cost, self.importance, self.result.ratio, need, self.allocation.counts)
            self.result.retries.append({"keep_ratio": round(self.allocation.keep_ratio, 5),
                                        "shipped_ms": round(shipped_ms, 4),
                                        "next_keep_ratio": None if more.fell_back else round(more.keep_ratio, 5)})
            if not more.fell_back:
                self.allocation = more
                return True
            self.allocation = None  # the uniform ratio then steps up as without an allocation
        retime = self.timer.afresh if self.timer.source == "measured" else None  # an estimate is the same again
        return next_ratio(self.result, self.timer.arch, shipped_ms, self.timer, retime) is not None


def _size(req: PruneRequest, profile: DeviceProfile, shared: Shared) -> Sizing:
    """The uniform search (and the greedy allocation) for one device."""
    zoo = shared.zoo
    timer = SkeletonTimer(zoo.base.arch, len(req.task.classes), zoo.base.input_spec, profile, req.round_to or 1,
                          req.measure, shared.cache)
    budget = req.budget_ms if req.budget_ms is not None else profile.budget.latency_ms
    sizing = Sizing(search_ratio(timer, zoo.base.arch, budget, profile.budget.statistic, timer.source,
                                 req.round_to or 1, req.margin), timer)
    if req.allocate == "greedy":
        sizing.cost = SkeletonCost(timer, shared.cache)
        sizing.importance = base_importance(req, zoo, req.train_view(shared.dataset))
        sizing.allocation = allocate(timer, sizing.cost, sizing.importance, sizing.result.ratio,
                                     sizing.result.aim_ms)
    return sizing


def _one_device(target: Target, shared: Shared) -> PruneResult:
    """Size (``search``), fit, export, gate and write one device's folder; a search steps up the ratio when the
    shipped model comes out over the budget (at most :data:`MAX_RETRIES` times)."""
    req, profile, zoo = target.req, target.profile, shared.zoo
    clock = Clock()
    clock.timings = dict(shared.timings)
    sizing = None
    if req.search:
        sizing = _size(req, profile, shared)
        req = sizing.apply(req)
        clock.lap("budget_search")
    for attempt in range(MAX_RETRIES + 1):
        key = (req.ratio, req.round_to, req.counts)
        ranking, other_votes = shared.ranking_at(req)
        if key not in shared.fitted:
            shared.fitted[key] = fit(req, zoo, ranking, shared.dataset, shared.stages, clock.lap, other_votes)
        fitted = shared.fitted[key]
        report = _report(req, profile, zoo, shared.entries, ranking, fitted)
        report.search = None if sizing is None else sizing.to_dict()
        tmp = _stage(req, profile, zoo, fitted, report, target.out, shared.cache, shared.data_root)
        clock.lap("export_and_latency")
        if report.within_budget or sizing is None or attempt == MAX_RETRIES or \
                not sizing.step_up(report.latency["value_ms"]):
            if sizing is not None:
                report.search = sizing.to_dict()
            _finish(req, zoo, fitted, report, tmp, target.out, clock, sum(shared.timings.values()))
            return PruneResult(report, target.out)
        shutil.rmtree(tmp, ignore_errors=True)
        req = sizing.apply(req)
    raise AssertionError("unreachable")


def _ranking(req: PruneRequest, zoo: Zoo, ids: list[str], tasks: ZooTasks, dataset: Dataset,
             hierarchy: Hierarchy | None, stages: Stages) -> Ranking | None:
    """The ranking the method needs (None for random and ifp)."""
    if req.method == "mvp":
        nearest(np.zeros(len(ids)), req.neighbours)  # N larger than the zoo: the clear error, before work
    if req.method not in ("mvp", "transfer"):
        return None
    ranking = rank(zoo, ids, tasks, req.task, dataset, req, hierarchy)
    if ranking.note:
        stages.say(f"similarity: {ranking.note}")
    return ranking


def _report(req: PruneRequest, profile: DeviceProfile, zoo: Zoo, entries: int, ranking: Ranking | None,
            fitted: Fitted) -> PruneReport:
    """The report's part that export does not fill: task, base, zoo, neighbours, settings, accuracy, size."""
    base, spec = zoo.base, zoo.base.input_spec
    params, macs = params_and_macs(fitted.model, spec)
    # counts do not depend on the weights: a skeleton spares a remote prune the base's download
    base_params, base_macs = params_and_macs(create_model(base.arch, len(base.classes), spec), spec)
    acc = fitted.accuracy
    return PruneReport(
        task=req.task, device=profile.name, method=req.method,
        base=BaseSummary(base.arch, base.dataset, base.weights_sha256, base.test_acc, base_params, base_macs, spec),
        zoo={"path": zoo.label, "entries": entries},
        similarity=None if ranking is None else {"kind": ranking.kind, "note": ranking.note,
                                                 "requested": req.similarity},
        neighbours=[n.summary() for n in fitted.neighbours], method_info=fitted.info,
        settings=req.settings(get_arch(base.arch).family),
        accuracy=Accuracy(acc["init_before_bn"], acc["init"], acc["final"]),
        params=params, macs=macs, keep_ratio=round(fitted.masks.keep_ratio(), 5))


def _stage(req: PruneRequest, profile: DeviceProfile, zoo: Zoo, fitted: Fitted, report: PruneReport, out: Path,
           cache, data_root) -> Path:
    """Export and gate into a temporary sibling of ``out`` (returned; removed on an error)."""
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _export(req, profile, fitted.model, fitted.masks, zoo.base.input_spec, report, tmp, out, cache, data_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _finish(req: PruneRequest, zoo: Zoo, fitted: Fitted, report: PruneReport, tmp: Path, out: Path, clock: Clock,
            shared_seconds: float) -> None:
    """(Add to the zoo,) write the report and card, and move the staged folder into place; ``shared_seconds``:
    the stages this device shared with the run's others (setup, zoo, similarity)."""
    try:
        if req.add_to_zoo:
            report.zoo["added"] = _add_to_zoo(zoo, req, zoo.base, fitted.masks, report,
                                              [n.id for n in fitted.neighbours], tmp, shared_seconds + clock.elapsed())
        report.timings = {**clock.timings, "total": round(shared_seconds + clock.elapsed(), 3)}
        atomic_write_bytes(tmp / REPORT, json.dumps(report.to_dict(), indent=1).encode())
        atomic_write_bytes(tmp / CARD, report.model_card().encode())
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export(req: PruneRequest, profile: DeviceProfile, model, masks: Masks, spec, report: PruneReport, tmp: Path,
            out: Path, cache, data_root) -> None:
    """Write the PyTorch files, export (+ int8), hold the shipped model to the budget; fills ``report``."""
    tmp.mkdir(parents=True)
    save_pruned(model, masks, spec, len(req.task.classes), tmp)
    src = ExportSource(model, masks.arch, spec, tmp, None, req.task)
    staged = deploy(src, profile, tmp, req.int8, req.task, ExportConfig(exporter=req.exporter), cache=cache,
                    data_root=data_root, runs=req.runs, force_measure=req.measure)
    # the export step ran in the temporary folder: name files by where they will be
    exported = staged.relocated(tmp, out)
    onnx_name, precision = ("model.int8.onnx", "int8") if req.int8 else ("model.onnx", "fp32")
    shipped = exported.latency[precision]
    size_mb = (tmp / onnx_name).stat().st_size / 2 ** 20
    verdict = over_budget(shipped, profile, req.budget_ms, size_mb)
    first = None
    if verdict and shipped.source == "measured" and size_over_budget(profile, size_mb) is None:
        # a measured miss is measured again, CONFIRM_RUNS times as long, before it fails the run or costs a refit:
        # the longer window is the figure reported (a burst of load moves a short window's p90 by a third)
        first = shipped
        shipped = replace(latency(tmp / onnx_name, profile, req.measure, cache, CONFIRM_RUNS * req.runs,
                                  MEASURE_SECONDS_PER_RUN * CONFIRM_RUNS * req.runs), model=str(out / onnx_name))
        exported = replace(exported, latency={**exported.latency, precision: shipped})
        verdict = over_budget(shipped, profile, req.budget_ms, size_mb)
    atomic_write_bytes(tmp / "export.json", exported.to_json())
    export_info = exported.export.to_dict()
    report.export = {"opset": export_info["opset"], "parity": export_info["parity"],
                        "exporter": export_info["exporter"],
                        "onnx_accuracy": None if exported.accuracy is None else dict(exported.accuracy)}
    report.latency = {**shipped.to_dict(), "model": onnx_name,
                         "budget_ms": req.budget_ms if req.budget_ms is not None else profile.budget.latency_ms,
                         "budget_statistic": profile.budget.statistic, "model_size_mb": round(size_mb, 3),
                         "model_size_budget_mb": profile.budget.model_size_mb, "within_budget": verdict is None,
                         "verdict": verdict, "all": {k: v.to_dict() for k, v in exported.latency.items()},
                         "first_measurement_ms": None if first is None else first.value_ms}
    report.files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    report.versions = tool_versions()


def _add_to_zoo(zoo: Zoo, req: PruneRequest, base: BaseManifest, masks: Masks, report: PruneReport,
                parents: list[str], folder: Path, seconds: float) -> str:
    """Store the result as a zoo entry whose parents are its neighbours (uploaded to a remote zoo)."""
    weights = (folder / WEIGHTS_FILE).read_bytes()
    config = {"method": req.method, **report.settings}
    config.pop("device", None)
    parents = tuple(parents)
    ident = {"format": 1, "base": base.weights_sha256, "dataset": req.task.dataset, "classes": list(req.task.classes),
             "pruner": req.method, "config": config, "parents": list(parents)}
    job_key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    metrics = {"test_acc": report.accuracy.final, "params": report.params, "macs": report.macs,
               "keep_ratio": report.keep_ratio, "init_acc": report.accuracy.init}
    manifest = EntryManifest(req.task, BaseRef(base.arch, base.dataset, base.weights_sha256, base.input_spec), masks,
                             req.method, config, metrics, hashlib.sha256(weights).hexdigest(), job_key, parents,
                             tool_versions())
    return zoo.put(manifest, weights, build_seconds=round(seconds, 2))
