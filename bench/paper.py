"""The paper's claims on real data, offline (issue 7): two testbeds, fair baselines, plots.

    python bench/paper.py --out docs/bench                      # everything (cached: rerun to resume)
    python bench/paper.py --out docs/bench --only fashion       # one testbed (fashion, omniglot, vit, digits)

Testbeds (all at 32 px grey unless said):
  fashion   resnet18 pre-trained on Fashion-MNIST; zoo of 40 five-class tasks by IFP@1000; 10 held-out targets,
            full training data (key ``fashion``) and 100 images per class (``fashion_100``).
  omniglot  resnet18 pre-trained on the 242 characters of Omniglot's two small background sets (15 drawings
            each for training, 5 for test); zoo of 60 five-character tasks, each drawn within one alphabet, by
            IFP@500; 15 targets drawn the same way; similarity by the alphabet -> character hierarchy and LEEP.
            Targets train on all 15 drawings per character (key ``omniglot``) or on 5 (``omniglot_5``).
  vit       vit_tiny pre-trained on Fashion-MNIST at 16 px; zoo of 12 tasks by AHNP@1000; 4 targets.
  digits    scikit-learn digits as an unseen dataset: 5 five-digit targets voted from the fashion zoo by LEEP.

Every method runs through ``edgemvp.pipeline.fit`` -- the code behind ``edgemvp prune`` -- so a method differs
from another only in how its sub-network is chosen and initialised. Learning rates (and MVP's temperature)
are chosen on three zoo tasks, each left out of the zoo it votes from, never on the targets. Cheap methods
run 3 seeds per target; IFP@1000 / AHNP@1000 one. Results are paired per target.

Everything is cached under ``--cache-dir``: bases, zoos, and one JSON per finished run, keyed by everything
that determines it. Writes ``<out>/paper.json``, PNG plots in ``<out>`` and ``<out>/results.md`` (the section
for docs/results.md, with the command and the time it took).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import edgemvp._compat  # noqa: E402,F401  (torchvision ops on the CPU wheel)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edgemvp.data.datasets import get_dataset  # noqa: E402
from edgemvp.data.tasks import TaskSpec, random_tasks, task_name  # noqa: E402
from edgemvp.data.loader import eval_batches, train_batches  # noqa: E402
from edgemvp.data.tasks import task_view  # noqa: E402
from edgemvp.masks import Masks, full_masks  # noqa: E402
from edgemvp.models.base import base_rows, find_base  # noqa: E402
from edgemvp.models.factory import create_model, get_arch  # noqa: E402
from edgemvp.models.pretrained import add_pretrained_base  # noqa: E402
from edgemvp.mvp.average import target_model  # noqa: E402
from edgemvp.mvp.rank import Ranking  # noqa: E402
from edgemvp.pipeline import Fitted, PruneRequest, fit, rank  # noqa: E402
from edgemvp.train import accuracy, default_device, train_steps  # noqa: E402
from edgemvp.pretrain import PretrainConfig, pretrain  # noqa: E402
from edgemvp.pruners import PruneConfig  # noqa: E402
from edgemvp.pruners.base import event_interval, final_keep, next_keep, pruning_events  # noqa: E402
from edgemvp.shrink import params_and_macs, shrink  # noqa: E402
from edgemvp.units import unit_space  # noqa: E402
from edgemvp.zoo.build import BuildSpec, build  # noqa: E402
from edgemvp.zoo.defaults import zoo_path  # noqa: E402
from edgemvp.zoo.local import LocalZoo  # noqa: E402

RUN_FORMAT = 1
CACHED_ONLY = False  # --cached-only: report what is cached, run nothing


class NotCached(Exception):
    """A run that --cached-only may not do."""


# what a fresh run would spend on the runs a report uses, from their recorded times (filled by run_one): seconds
# per run (training and test evaluations, without ranking) and per ranking (shared by the runs of a target)
SPENT: dict[str, float] = {}
RANKS: dict[tuple, float] = {}


LR_GRID = {"cnn": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2), "vit": (1e-4, 2e-4, 5e-4, 1e-3)}
TAU_GRID = (0.05, 0.1, 0.25, 0.5, 1.0)
SEEDS = (0, 1, 2)


# --- what is run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One row of the paper's tables.

    ``similarity`` is ``primary`` (the testbed's taxonomy: WordNet or the class hierarchy), ``wordnet``,
    ``taxonomy``, ``leep`` or ``random`` (N zoo tasks drawn at random per seed). ``group`` names the learning
    rate it uses (chosen on zoo tasks); ``None`` is the zoo pruner's own.
    """

    label: str
    method: str
    iters: int
    neighbours: int = 3
    similarity: str = "primary"
    group: str | None = "mvp"
    seeds: int = 3
    bn: bool | None = True  # BatchNorm re-estimation: on, off, or None (the library's default: auto)
    tau: float | None = None  # None: the temperature chosen on zoo tasks
    head: bool = True  # a class starts from the base's classifier row for it (an ImageNet base: by synset)


IFP1000 = Method("IFP@1000", "ifp", 1000, group=None, seeds=1)
BASELINES = (IFP1000, Method("IFP@100", "ifp", 100, group="ifp"), Method("random@100", "random", 100, group="random"),
             Method("transfer@100", "transfer", 100, group="transfer"))
MVP_VARIANTS = (Method("MVP@50", "mvp", 50), Method("MVP@100 (N = 1)", "mvp", 100, 1),
                Method("MVP@100 (N = 5)", "mvp", 100, 5),
                Method("MVP@100 (no BN re-estimation)", "mvp", 100, bn=False),
                Method("MVP@100 (paper: tau 1, no BN re-estimation)", "mvp", 100, bn=False, tau=1.0))


@dataclass(frozen=True)
class Testbed:
    """A base, a zoo and held-out targets, with the methods compared on them."""

    key: str
    arch: str
    dataset: str
    pretrain: PretrainConfig
    zoo_tasks: int
    zoo_pruner: str
    zoo_iters: int
    targets: int
    methods: tuple[Method, ...]
    regimes: tuple[tuple[str, int | None], ...]  # (paper.json key, training images per class or None)
    primary: str = "wordnet"  # what "primary" similarity means here
    within_parent: bool = False
    target_dataset: str | None = None  # targets from another (unseen) dataset
    zoo_from: str | None = None  # use another testbed's base and zoo
    val_tasks: int = 3
    select: tuple[str, ...] = ("ifp", "random", "transfer", "mvp")
    zoo_name: str | None = None  # the zoo's folder name (default paper-<key>)
    base: str | None = None  # a stock pre-trained base (e.g. imagenet-1k-64px) instead of pre-training on dataset
    weights: str = "package"  # where that base's checkpoint comes from (edgemvp bases add --weights)
    size: int | None = None  # that base's input size


FASHION = Testbed(
    "fashion", "resnet18", "fashion-mnist", PretrainConfig(epochs=5), 40, "ifp-activation", 1000, 10,
    BASELINES + (Method("MVP@100 (WordNet, N = 3)", "mvp", 100, similarity="wordnet"),
                 Method("MVP@100 (LEEP, N = 3)", "mvp", 100, similarity="leep")) + MVP_VARIANTS,
    (("fashion", None), ("fashion_100", 100)))
OMNIGLOT = Testbed(
    "omniglot", "resnet18", "omniglot", PretrainConfig(epochs=60), 60, "ifp-activation", 500, 15,
    BASELINES + (Method("MVP@100 (taxonomy, N = 3)", "mvp", 100, similarity="taxonomy"),
                 Method("MVP@100 (LEEP, N = 3)", "mvp", 100, similarity="leep"),
                 Method("MVP@100 (random neighbours)", "mvp", 100, similarity="random")) + MVP_VARIANTS,
    (("omniglot", None), ("omniglot_5", 5)), primary="taxonomy", within_parent=True)
VIT = Testbed(
    "vit", "vit_tiny", "fashion-mnist", PretrainConfig(epochs=4, size=16), 12, "ahnp", 1000, 4,
    (Method("AHNP@1000", "ifp", 1000, group=None, seeds=1), Method("MVP@100", "mvp", 100),
     Method("random@100", "random", 100, group="random")),
    (("vit", None),), val_tasks=2, select=("random", "mvp"), zoo_name="paper-vit-ahnp1000")
DIGITS = Testbed(
    "digits", "resnet18", "fashion-mnist", FASHION.pretrain, 0, "ifp-activation", 1000, 5,
    BASELINES[:3] + (Method("transfer@100", "transfer", 100, similarity="leep", group="transfer"),
                     Method("MVP@100 (LEEP, N = 3)", "mvp", 100, similarity="leep"),
                     Method("MVP@50", "mvp", 50, similarity="leep"),
                     Method("MVP@100 (N = 1)", "mvp", 100, 1, similarity="leep"),
                     Method("MVP@100 (N = 5)", "mvp", 100, 5, similarity="leep")),
    (("digits", None),), primary="leep", target_dataset="digits", zoo_from="fashion", select=())
TESTBEDS = {t.key: t for t in (FASHION, OMNIGLOT, VIT, DIGITS)}
J_CURVE = (10, 20, 50, 100, 200)
N_CURVE = (1, 2, 3, 5)


# --- context of one testbed --------------------------------------------------------------------------------
@dataclass
class Bed:
    """A testbed's loaded pieces."""

    tb: Testbed
    cache: Path
    zoo: Path
    local: LocalZoo
    dataset: object  # the targets' Dataset
    ids: list[str]
    tasks: list[tuple[str, tuple[str, ...]]]
    hierarchy: Path | None
    selected: dict = field(default_factory=dict)  # regime -> {"lr": {group: lr}, "tau": tau}
    rankings: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return get_arch(self.tb.arch).family

    @property
    def store(self):
        return self.local.store

    @property
    def base(self):
        return self.local.base


def prepare(tb: Testbed, cache: Path, bars: bool) -> Bed:
    """Base and zoo (built or found in the cache), targets' dataset and the hierarchy file."""
    src = TESTBEDS[tb.zoo_from] if tb.zoo_from else tb
    base_name = src.base or src.dataset
    folder = zoo_path(src.arch, base_name, cache, src.zoo_name or f"paper-{src.key}")
    if CACHED_ONLY:
        if find_base(src.arch, base_name, cache) is None or not (folder / "zoo.json").exists():
            raise NotCached(f"{src.key}: base or zoo")
        from edgemvp.zoo.store import ZooStore

        with ZooStore.open(folder) as store:
            if len(store) < src.zoo_tasks:
                raise NotCached(f"{src.key}: zoo has {len(store)} of {src.zoo_tasks} entries")
    if find_base(src.arch, base_name, cache) is None and src.base is not None:
        print(f"[{tb.key}] adding the {src.arch} base {src.base} ({src.weights})", flush=True)
        add_pretrained_base(src.arch, src.weights, src.size, cache)
    elif find_base(src.arch, base_name, cache) is None:
        print(f"[{tb.key}] pre-training {src.arch} on {src.dataset} ({src.pretrain.epochs} epochs)", flush=True)
        with tqdm(desc=f"pretrain {src.arch}", unit="step", disable=not bars) as bar:
            pretrain(src.arch, src.dataset, src.pretrain, cache, progress=bar)
    base = find_base(src.arch, base_name, cache)
    acc = "pre-trained" if base.test_acc is None else f"{base.test_acc:.2f}%"
    print(f"[{tb.key}] base {src.arch}/{base_name}: {acc} ({base.weights_sha256[:12]})", flush=True)
    cfg = PruneConfig(ratio=0.9, iters=src.zoo_iters)
    spec = BuildSpec(src.arch, src.dataset, src.zoo_tasks, 5, src.zoo_pruner, cfg, seed=0,
                     within_parent=src.within_parent, base=src.base)
    with tqdm(desc=f"zoo {src.key}", unit="task", disable=not bars) as overall:
        report = build(spec, folder, cache, overall=overall)
    print(f"[{tb.key}] zoo {folder}: {len(report.ids)} entries ({report.built} built now, {report.seconds:.0f} s)",
          flush=True)
    local = LocalZoo.open(folder, src.arch, base_name, cache)
    store = local.store
    ids = list(report.ids)
    tasks = [(e.manifest.task.dataset, e.manifest.task.classes) for e in map(store.get, ids)]
    dataset = get_dataset(tb.target_dataset or src.dataset)
    hierarchy = None
    if dataset.hierarchy:
        import yaml

        hierarchy = cache / f"hierarchy-{dataset.name}.yaml"
        tree = {dataset.name: {k: list(v) for k, v in dataset.hierarchy.items()}}
        hierarchy.write_text(yaml.safe_dump(tree, sort_keys=False))
    bed = Bed(tb, cache, folder, local, dataset, ids, tasks, hierarchy)
    if any(similarity_kind(bed, m) == "wordnet" for m in tb.methods):
        from edgemvp.mvp.similarity import Taxonomy, wordnet_similarity

        # load WordNet once, untimed (about 4 s per process), as a long-running voter would have it loaded
        wordnet_similarity([(d, c) for d, classes in tasks[:1] for c in classes], tasks[:2], Taxonomy(None, cache))
    return bed


def targets(bed: Bed) -> list[TaskSpec]:
    """Held-out targets: seeded random tasks whose class sets are not in the zoo."""
    zoo_sets = tuple(classes for _, classes in bed.tasks) if not bed.tb.target_dataset else ()
    return random_tasks(bed.dataset, bed.tb.targets, 5, seed=1000, exclude=zoo_sets,
                        within_parent=bed.tb.within_parent)


def validation_tasks(bed: Bed) -> list[TaskSpec]:
    """Zoo tasks used to choose learning rates and tau (each left out of the zoo it votes from)."""
    return [TaskSpec(task_name(d, c), d, c) for d, c in bed.tasks[: bed.tb.val_tasks]]


# --- one run -----------------------------------------------------------------------------------------------
def similarity_kind(bed: Bed, m: Method) -> str:
    return bed.tb.primary if m.similarity == "primary" else m.similarity


def ranking_key(classes, kind: str, per_class: int | None, seed: int) -> tuple:
    """What a ranking depends on: only LEEP (its sample of target images) and random rankings depend on the seed."""
    return tuple(classes), kind, per_class, seed if kind in ("leep", "random") else 0


def ranking(bed: Bed, task: TaskSpec, kind: str, per_class: int | None, seed: int
            ) -> tuple[Ranking, float, float]:
    """The zoo ranked for a task (leaving out an entry of the same classes), and the wall and CPU seconds it
    took."""
    keep = [i for i, (d, c) in enumerate(bed.tasks) if (d, set(c)) != (task.dataset, set(task.classes))]
    ids, tasks = [bed.ids[i] for i in keep], [bed.tasks[i] for i in keep]
    key = ranking_key(task.classes, kind, per_class, seed)
    if key in bed.rankings:
        return bed.rankings[key]
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "random":
        out = Ranking(ids, np.random.default_rng(10_000 + seed).random(len(ids)), "random")
    else:
        # every candidate ranked (N is chosen later), nearest first
        req = PruneRequest(task, "host", zoo=bed.zoo, similarity="leep" if kind == "leep" else "wordnet",
                           hierarchy=bed.hierarchy if kind == "taxonomy" else None, seed=seed,
                           train_per_class=per_class, neighbours=len(ids))
        out = rank(bed.local, ids, tasks, task, bed.dataset, req)
        if out.kind != ("leep" if kind == "leep" else "hierarchy" if kind == "taxonomy" else "wordnet"):
            raise RuntimeError(f"{task.name}: asked for {kind} similarity, got {out.kind} ({out.note})")
    bed.rankings[key] = (out, time.perf_counter() - t0, time.process_time() - c0)
    return bed.rankings[key]


def run_key(bed: Bed, task: TaskSpec, m: Method, per_class: int | None, seed: int, lr: float | None,
            tau: float) -> str:
    # IFP and random start from the base alone: their runs do not depend on the zoo (and are shared between zoos)
    zoo = sorted(bed.ids) if m.method in ("mvp", "transfer") else None
    ident = {"format": RUN_FORMAT, "base": bed.base.weights_sha256, "zoo": zoo, "task": task.classes,
             "dataset": task.dataset, "method": m.method, "iters": m.iters, "neighbours": m.neighbours,
             "similarity": similarity_kind(bed, m) if m.method in ("mvp", "transfer") else None, "bn": m.bn,
             "tau": tau if m.method == "mvp" else None, "per_class": per_class, "seed": seed, "lr": lr,
             "threads": torch.get_num_threads(), **({} if m.head else {"head": False})}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def run_one(bed: Bed, task: TaskSpec, m: Method, per_class: int | None, seed: int, lr: float | None,
            tau: float, cached: bool = True) -> dict:
    """Train one method for one target and seed (cached); accuracy, wall seconds and training FLOPs.

    ``cached=False`` runs it again and stores nothing (the re-timing).
    """
    path = bed.cache / "paper-runs" / f"{run_key(bed, task, m, per_class, seed, lr, tau)}.json"
    if cached and path.exists():
        return _spent(path, json.loads(path.read_text()))
    if CACHED_ONLY:
        raise NotCached(path.name)
    kind = similarity_kind(bed, m)
    rk, rank_s, rank_cpu = (ranking(bed, task, kind, per_class, seed) if m.method in ("mvp", "transfer")
                            else (None, 0.0, 0.0))
    req = PruneRequest(task, "host", zoo=bed.zoo, method="random" if m.method == "dense" else m.method,
                       iters=m.iters, neighbours=m.neighbours, temperature=tau, seed=seed, bn_reestimate=m.bn, lr=lr,
                       train_per_class=per_class, head_from_base=m.head)
    laps: dict[str, float] = {}
    cpu_laps: dict[str, float] = {}
    clock = [time.perf_counter(), time.process_time()]

    def lap(name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        laps[name] = laps.get(name, 0.0) + now[0] - clock[0]
        cpu_laps[name] = cpu_laps.get(name, 0.0) + now[1] - clock[1]
        clock[:] = now

    fitted = dense_fit(req, bed, lap) if m.method == "dense" else fit(req, bed.local, rk, bed.dataset, lap=lap)
    # the method's cost: ranking + building the sub-network + BN re-estimation + training (not the test evals);
    # CPU seconds (all threads) as well, as they are less disturbed by other jobs on the machine
    wall = rank_s + sum(v for k, v in laps.items() if not k.startswith("evaluate"))
    cpu = rank_cpu + sum(v for k, v in cpu_laps.items() if not k.startswith("evaluate"))
    row = {"task": task.name, "classes": list(task.classes), "method": m.method, "iters": m.iters,
           "neighbours": m.neighbours, "similarity": kind if rk is not None else None, "bn": m.bn,
           "bn_reestimated": fitted.info.get("bn_reestimated"), "tau": tau,
           "per_class": per_class, "seed": seed, "lr": lr, "acc": fitted.accuracy["final"],
           "acc_init": fitted.accuracy["init"], "acc_init_before_bn": fitted.accuracy["init_before_bn"],
           "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "rank_s": round(rank_s, 3), "laps": {k: round(v, 3) for k, v in laps.items()},
           "train_flops": train_flops(bed, m, fitted, rk, per_class),
           "neighbour_ids": [n.id for n in fitted.neighbours],
           "neighbour_similarity": [round(n.similarity, 5) for n in fitted.neighbours],
           "keep_ratio": round(fitted.masks.keep_ratio(), 5)}
    if not cached:
        return row
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(path)
    return _spent(path, row)


def dense_fit(req: PruneRequest, bed: Bed, lap) -> Fitted:
    """The upper bound: the whole base (not pruned) with the target's head, fine-tuned ``req.iters`` steps."""
    base, task = bed.base, req.task
    rows = base_rows(base, task, bed.cache) if req.head_from_base else ("",) * len(task.classes)
    model = target_model(bed.local.base_model(), base.classes, base.dataset, task.dataset, task.classes, req.seed,
                         rows)
    spec, train = base.input_spec, req.train_view(bed.dataset)
    torch.manual_seed(req.seed)
    batches = train_batches(train, spec, req.batch_size, req.seed)
    lap("init")
    test = task_view(task, bed.dataset, "test")
    device = default_device()
    init = round(accuracy(model, eval_batches(test, spec), device), 3)
    lap("evaluate_init")
    train_steps(model, batches, req.iters, req.finetune_optim(bed.family), device, None, deterministic=True)
    lap("finetune")
    model = model.cpu().eval()
    final = round(accuracy(model, eval_batches(test, spec), torch.device("cpu")), 3)
    lap("evaluate")
    return Fitted(model, full_masks(base.arch), [], {}, {"init": init, "init_before_bn": init, "final": final})


def _spent(path: Path, row: dict) -> dict:
    """Record a run's cost for the fresh-run estimate (its ranking once per target, seed and similarity)."""
    evals = sum(v for k, v in row["laps"].items() if k.startswith("evaluate"))
    SPENT[path.name] = row["wall_s"] - row["rank_s"] + evals
    if row["similarity"] is not None:
        key = ranking_key(row["classes"], row["similarity"], row["per_class"], row["seed"])
        RANKS[key] = max(RANKS.get(key, 0.0), row["rank_s"])
    return row


# --- training FLOPs ----------------------------------------------------------------------------------------
_MACS: dict = {}


def _macs_at(bed: Bed, kept_counts: tuple[tuple[str, int], ...], classes: int) -> int:
    """MACs (batch 1) of the arch with the given units kept per group (only the counts matter)."""
    key = (bed.tb.arch, bed.base.input_spec, kept_counts, classes)
    if key not in _MACS:
        model = create_model(bed.tb.arch, classes, bed.base.input_spec)
        counts = dict(kept_counts)
        if any(counts[u.name] < u.size for u in unit_space(bed.tb.arch).units):
            shrink(model, Masks(bed.tb.arch, {u: tuple(range(n)) for u, n in counts.items()}, ""))
        _MACS[key] = params_and_macs(model, bed.base.input_spec)[1]
    return _MACS[key]


def train_flops(bed: Bed, m: Method, fitted, rk: Ranking | None, per_class: int | None) -> float:
    """FLOPs spent on the target: 6 x MACs per trained image (forward + backward), 2 x MACs per forward-only
    image (BatchNorm re-estimation, LEEP scoring of the zoo); IFP/AHNP counted phase by phase."""
    batch, classes = 128, 5
    n_train = 5 * per_class if per_class else None
    b = min(batch, n_train) if n_train else batch
    full = {u.name: u.size for u in unit_space(bed.tb.arch).units}
    if m.method == "dense":
        return 6.0 * b * m.iters * _macs_at(bed, tuple(full.items()), classes)
    if m.method == "ifp":
        cfg = PruneConfig(ratio=0.9, iters=m.iters)
        if bed.family == "vit":
            k = cfg.finetune_iters if cfg.finetune_iters is not None else m.iters // 2
            final = final_keep(bed.tb.arch, 0.9)
            return 6.0 * b * (_macs_at(bed, tuple(full.items()), classes) * (m.iters - k)
                              + _macs_at(bed, tuple(final.items()), classes) * k)
        return 6.0 * b * _ifp_mac_steps(bed, cfg, full, classes)
    macs = params_and_macs(fitted.model, bed.base.input_spec)[1]
    flops = 6.0 * macs * b * m.iters + (2.0 * macs * b * 20 if fitted.info.get("bn_reestimated") else 0.0)
    if rk is not None and rk.kind == "leep":
        metrics = [e.manifest.metrics.get("macs", 0) for e in map(bed.store.get, rk.ids)]
        flops += 2.0 * sum(metrics) * min(500, n_train or 500)
    return flops


def _ifp_mac_steps(bed: Bed, cfg: PruneConfig, full: dict[str, int], classes: int) -> float:
    """Sum over IFP's steps of the MACs of the model trained at that step (widths follow its schedule)."""
    finals = final_keep(bed.tb.arch, cfg.ratio)
    events = pruning_events(full, finals, cfg.prune_fraction)
    every = event_interval(cfg, cfg.iters, events)
    sizes, total, step = dict(full), 0.0, 0
    for _ in range(events):
        span = min(every, cfg.iters - step)
        total += span * _macs_at(bed, tuple(sizes.items()), classes)
        step += span
        sizes = {u: next_keep(n, finals[u], cfg.prune_fraction) for u, n in sizes.items()}
    return total + max(0, cfg.iters - step) * _macs_at(bed, tuple(sizes.items()), classes)


# --- choosing learning rates and tau on zoo tasks ----------------------------------------------------------
REPRESENTATIVE = {"ifp": Method("IFP@100", "ifp", 100), "random": Method("random@100", "random", 100),
                  "transfer": Method("transfer@100", "transfer", 100), "mvp": Method("MVP@100", "mvp", 100)}


def select(bed: Bed, per_class: int | None, bar) -> dict:
    """Learning rate per group, then MVP's tau, by mean accuracy on the validation zoo tasks (seed 0)."""
    vals = validation_tasks(bed)
    grid = LR_GRID[bed.family]
    tau0 = 0.25
    chosen: dict = {"lr": {}, "tau": tau0, "table": {}, "validation_tasks": [t.name for t in vals]}
    for group in bed.tb.select:
        m = REPRESENTATIVE[group]
        scores = {}
        for lr in grid:
            scores[lr] = statistics.mean(run_one(bed, t, m, per_class, 0, lr, tau0)["acc"] for t in vals)
            bar.update(len(vals))
        chosen["lr"][group] = max(grid, key=lambda lr: (scores[lr], -abs(np.log(lr / grid[len(grid) // 2]))))
        chosen["table"][group] = {str(k): round(v, 3) for k, v in scores.items()}
    if "mvp" in bed.tb.select:
        m, lr = REPRESENTATIVE["mvp"], chosen["lr"]["mvp"]
        scores = {}
        for tau in TAU_GRID:
            scores[tau] = statistics.mean(run_one(bed, t, m, per_class, 0, lr, tau)["acc"] for t in vals)
            bar.update(len(vals))
        chosen["tau"] = max(TAU_GRID, key=lambda t: (scores[t], t == tau0))
        chosen["table"]["tau"] = {str(k): round(v, 3) for k, v in scores.items()}
    return chosen


def lr_for(bed: Bed, regime: str, m: Method) -> float | None:
    sel = bed.selected.get(regime, {})
    return None if m.group is None else sel.get("lr", {}).get(m.group)


def tau_for(bed: Bed, regime: str, m: Method) -> float:
    return m.tau if m.tau is not None else bed.selected.get(regime, {}).get("tau", 0.25)


# --- a testbed ---------------------------------------------------------------------------------------------
def run_testbed(tb: Testbed, cache: Path, bars: bool, lr_from: dict | None = None) -> tuple[dict, Bed]:
    """All regimes of a testbed: selection on zoo tasks, then every method x target x seed."""
    bed = prepare(tb, cache, bars)
    tgts = targets(bed)
    print(f"[{tb.key}] targets: " + "; ".join(", ".join(t.classes) for t in tgts), flush=True)
    out: dict = {}
    zoo_tb = TESTBEDS.get(tb.zoo_from or tb.key, tb)
    for regime, per_class in tb.regimes:
        n_sel = len(LR_GRID[bed.family]) * len(tb.select) + (len(TAU_GRID) if "mvp" in tb.select else 0)
        with tqdm(total=n_sel * tb.val_tasks, desc=f"{regime}: choose lr/tau on zoo tasks", disable=not bars) as bar:
            try:
                bed.selected[regime] = select(bed, per_class, bar) if tb.select else dict(lr_from or {})
            except NotCached:
                print(f"[{regime}] selection not finished: skipped (--cached-only)", flush=True)
                continue
        print(f"[{regime}] chosen on zoo tasks: {json.dumps(bed.selected[regime].get('lr'))}, "
              f"tau {bed.selected[regime].get('tau')}", flush=True)
        rows = []
        total = sum(m.seeds for m in tb.methods) * len(tgts)
        with tqdm(total=total, desc=f"{regime}: methods x targets x seeds", disable=not bars) as bar:
            for m in tb.methods:
                for t in tgts:
                    for seed in SEEDS[: m.seeds]:
                        try:
                            row = run_one(bed, t, m, per_class, seed, lr_for(bed, regime, m), tau_for(bed, regime, m))
                        except NotCached:
                            continue
                        rows.append({**row, "label": m.label})
                        bar.update()
        done = [m.label for m in tb.methods if any(r["label"] == m.label for r in rows)]
        if not done:
            continue
        out[regime] = {"methods": summarise(rows, done), "runs": rows, "complete": len(rows) == total,
                       "selection": bed.selected[regime], "targets": [t.name for t in tgts],
                       "base": {"arch": bed.base.arch, "dataset": bed.base.dataset, "test_acc": bed.base.test_acc,
                                "sha256": bed.base.weights_sha256, "train": bed.base.train},
                       "zoo": {"path": str(bed.zoo), "entries": len(bed.ids), "pruner": zoo_tb.zoo_pruner,
                               "iters": zoo_tb.zoo_iters,
                               "mean_test_acc": round(statistics.mean(bed.store.get(i).manifest.metrics["test_acc"]
                                                                      for i in bed.ids), 3)}}
    return out, bed


def retime(bed: Bed, regime: str, per_class: int | None, k: int) -> dict:
    """Time IFP@1000 against the primary MVP@100 again on the first ``k`` targets (seed 0), interleaved.

    The cached runs were timed hours apart, while other work may have shared the machine; here each target's two
    runs follow each other (alternating which goes first), so both see the same machine. Nothing is cached.
    """
    # with the library's default for BatchNorm re-estimation (auto: skipped at J = 100, where fine-tuning replaces
    # the statistics; the tables' runs re-estimate, with the same accuracies, see "no BN re-estimation")
    mvp = replace(next(m for m in bed.tb.methods if m.label == PRIMARY[regime]), bn=None)
    pairs = []
    for i, t in enumerate(targets(bed)[:k]):
        secs = {}
        for m in ((IFP1000, mvp) if i % 2 == 0 else (mvp, IFP1000)):
            row = run_one(bed, t, m, per_class, 0, lr_for(bed, regime, m), tau_for(bed, regime, m), cached=False)
            secs[m.label] = (row["wall_s"], row["cpu_s"], row["acc"])
        (iw, ic, ia), (mw, mc, ma) = secs[IFP1000.label], secs[mvp.label]
        pairs.append({"task": t.name, "ifp1000_wall_s": iw, "mvp_wall_s": mw, "ifp1000_cpu_s": ic, "mvp_cpu_s": mc,
                      "ifp1000_acc": ia, "mvp_acc": ma,
                      "ratio_wall": round(iw / mw, 2), "ratio_cpu": round(ic / mc, 2)})
        print(f"[{regime}] re-timed {t.name}: IFP@1000 {iw:.1f} s, MVP@100 {mw:.2f} s (1/{iw / mw:.1f})", flush=True)
    return {"targets": len(pairs), "seed": 0, "pairs": pairs,
            "ratio_wall_median": round(statistics.median(p["ratio_wall"] for p in pairs), 2),
            "ratio_wall_of_means": round(sum(p["ifp1000_wall_s"] for p in pairs) / sum(p["mvp_wall_s"] for p in pairs), 2),
            "ratio_cpu_median": round(statistics.median(p["ratio_cpu"] for p in pairs), 2)}


def summarise(rows: list[dict], labels: list[str]) -> dict:
    """Per method: mean and std over targets of the per-target mean over seeds, wins vs IFP@1000 (paired)."""
    per = {lab: {} for lab in labels}
    for r in rows:
        per[r["label"]].setdefault(r["task"], []).append(r)
    ref_label = next((lab for lab in labels if lab in ("IFP@1000", "AHNP@1000")), None)
    ref = {t: statistics.mean(r["acc"] for r in rs) for t, rs in per.get(ref_label, {}).items()}
    out = {}
    for lab in labels:
        means = {t: statistics.mean(r["acc"] for r in rs) for t, rs in per[lab].items()}
        runs = [r for rs in per[lab].values() for r in rs]
        diffs = [means[t] - ref[t] for t in means if t in ref]
        out[lab] = {"acc_mean": round(statistics.mean(means.values()), 3),
                    "acc_std": round(statistics.stdev(means.values()), 3) if len(means) > 1 else 0.0,
                    "n": len(runs), "targets": len(means), "seeds": max(len(rs) for rs in per[lab].values()),
                    "wins_vs_ifp1000": sum(d > 0 for d in diffs), "ties_vs_ifp1000": sum(d == 0 for d in diffs),
                    "diff_vs_ifp1000": round(statistics.mean(diffs), 3) if diffs else None,
                    "wall_s_mean": round(statistics.mean(r["wall_s"] for r in runs), 3),
                    "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3),
                    "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 3),
                    "train_flops": float(f"{statistics.mean(r['train_flops'] for r in runs):.4g}"),
                    "acc_init_mean": (round(statistics.mean(r["acc_init"] for r in runs), 3)
                                      if all(r["acc_init"] is not None for r in runs) else None),
                    "per_target": {t: round(v, 3) for t, v in means.items()}}
    return out


def paired(summary: dict, a: str, b: str) -> tuple[float, int, int, int]:
    """Mean per-target difference a - b, wins and ties of a, and targets compared."""
    pa, pb = summary[a]["per_target"], summary[b]["per_target"]
    diffs = [pa[t] - pb[t] for t in pa if t in pb]
    return round(statistics.mean(diffs), 3), sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), len(diffs)


# --- curves and plots --------------------------------------------------------------------------------------
def curves(bed: Bed, regime: str, per_class: int | None, tgts: list[TaskSpec], bars: bool) -> dict:
    """Accuracy vs J (MVP, IFP, random, transfer; seed 0) and vs N (MVP@100, 3 seeds) on the targets."""
    kinds = {"MVP": Method("MVP", "mvp", 0), "IFP": Method("IFP", "ifp", 0, group="ifp"),
             "random": Method("random", "random", 0, group="random"),
             "transfer": Method("transfer", "transfer", 0, group="transfer")}
    out: dict = {"J": list(J_CURVE), "acc_vs_J": {}, "N": list(N_CURVE), "acc_vs_N": []}
    with tqdm(total=len(kinds) * len(J_CURVE) * len(tgts) + len(N_CURVE) * len(tgts) * 3,
              desc=f"{regime}: curves", disable=not bars) as bar:
        for name, base_m in kinds.items():
            accs = []
            for j in J_CURVE:
                m = replace(base_m, iters=j)
                accs.append(statistics.mean(run_one(bed, t, m, per_class, 0, lr_for(bed, regime, m),
                                                    tau_for(bed, regime, m))["acc"] for t in tgts))
                bar.update(len(tgts))
            out["acc_vs_J"][name] = [round(a, 3) for a in accs]
        for n in N_CURVE:
            m = Method(f"N={n}", "mvp", 100, n)
            accs = [run_one(bed, t, m, per_class, s, lr_for(bed, regime, m), tau_for(bed, regime, m))["acc"]
                    for t in tgts for s in SEEDS]
            out["acc_vs_N"].append(round(statistics.mean(accs), 3))
            bar.update(len(tgts) * 3)
    return out


def iou_by_similarity(bed: Bed, kind: str, groups: int = 5) -> dict:
    """Per-layer IoU of kept units between pairs of zoo entries, by similarity quintile (or by value, when the
    similarity takes few values), vs random masks."""
    from edgemvp.mvp.similarity import Hierarchy, Taxonomy, wordnet_similarity

    taxonomy = Taxonomy(Hierarchy.load(bed.hierarchy) if kind == "taxonomy" else None, bed.cache)
    names = [u.name for u in unit_space(bed.tb.arch).units]
    kept = [bed.store.get(i).manifest.masks.kept for i in bed.ids]
    sizes = {u.name: u.size for u in unit_space(bed.tb.arch).units}
    pairs, sims = [], []
    for a in range(len(bed.ids)):
        sim = wordnet_similarity([(bed.tasks[a][0], c) for c in bed.tasks[a][1]], bed.tasks, taxonomy)
        for b in range(a + 1, len(bed.ids)):
            pairs.append((a, b))
            sims.append(float(sim[b]))
    sims_arr = np.round(np.array(sims), 6)
    values = np.unique(sims_arr)
    if len(values) <= groups:  # a coarse similarity (e.g. a two-level hierarchy): one group per value
        groups = len(values)
        which = np.searchsorted(values, sims_arr)
        labels = [f"{v:.3f}" for v in values]
        edges = np.append(values, values[-1])
    else:  # quantile groups
        edges = np.quantile(sims_arr, np.linspace(0, 1, groups + 1))
        which = np.clip(np.searchsorted(edges, sims_arr, side="right") - 1, 0, groups - 1)
        labels = [f"{edges[g]:.3f}-{edges[g + 1]:.3f}" for g in range(groups)]
    iou = np.zeros((len(pairs), len(names)))
    for p, (a, b) in enumerate(pairs):
        for k, u in enumerate(names):
            sa, sb = set(kept[a][u]), set(kept[b][u])
            iou[p, k] = len(sa & sb) / max(1, len(sa | sb))
    rng = np.random.default_rng(0)
    ref = []
    for u in names:  # expected IoU of two random masks of the same sizes, by simulation
        k, n = len(kept[0][u]), sizes[u]
        draws = [len(set(rng.choice(n, k, replace=False)) & set(rng.choice(n, k, replace=False))) for _ in range(200)]
        ref.append(float(np.mean([d / (2 * k - d) for d in draws])))
    return {"layers": names, "similarity": kind, "pairs": len(pairs),
            "group_edges": [round(float(e), 4) for e in edges], "group_labels": labels,
            "iou_by_group": [[round(float(v), 4) for v in iou[which == g].mean(axis=0)] if (which == g).any() else None
                             for g in range(groups)],
            "pairs_per_group": [int((which == g).sum()) for g in range(groups)],
            "random_iou": [round(v, 4) for v in ref],
            "mean_iou_by_group": [round(float(iou[which == g].mean()), 4) if (which == g).any() else None
                                  for g in range(groups)]}


def _group_label(res: dict, g: int) -> str:
    if "group_labels" in res:
        return res["group_labels"][g]
    return f"{res['group_edges'][g]:.3f}-{res['group_edges'][g + 1]:.3f}"


def plots(paper: dict, out: Path) -> list[str]:
    """PNG plots of the curves and the IoU analysis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, cur in paper.get("curves", {}).items():
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for name, accs in cur["acc_vs_J"].items():
            ax[0].plot(cur["J"], accs, marker="o", label=name)
        ax[0].set(xscale="log", xlabel="fine-tune / pruning iterations J", ylabel="test accuracy (%)",
                  title=f"{key}: accuracy vs J (mean of targets, seed 0)")
        ax[0].legend()
        ax[1].plot(cur["N"], cur["acc_vs_N"], marker="o")
        ax[1].set(xlabel="neighbours N", ylabel="test accuracy (%)", title=f"{key}: MVP@100 vs N (3 seeds)")
        fig.tight_layout()
        fig.savefig(out / f"curves_{key}.png", dpi=110)
        plt.close(fig)
        written.append(f"curves_{key}.png")
    for key, res in paper.get("iou", {}).items():
        fig, ax = plt.subplots(figsize=(11, 4))
        x = np.arange(len(res["layers"]))
        for g, vals in enumerate(res["iou_by_group"]):
            if vals is not None:
                ax.plot(x, vals, marker=".", label=f"similarity {_group_label(res, g)}")
        ax.plot(x, res["random_iou"], "k--", label="random masks")
        ax.set(xlabel="unit group (model order: shallow -> deep)", ylabel="IoU of kept units",
               title=f"{key}: kept-unit IoU of zoo task pairs by {res['similarity']} similarity group")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"iou_{key}.png", dpi=110)
        plt.close(fig)
        written.append(f"iou_{key}.png")
    return written


# --- report ------------------------------------------------------------------------------------------------
def markdown(paper: dict) -> str:
    """The section for docs/results.md."""
    lines = _md_header(paper)
    fresh = paper.get("fresh_run", {})
    if fresh:
        lines += _md_fresh_run(fresh)
    for key, res in paper["testbeds"].items():
        lines += _md_testbed(key, res)
    for key, cur in paper.get("curves", {}).items():
        lines += _md_curves(key, cur)
    for key, res in paper.get("iou", {}).items():
        lines += _md_iou(key, res)
    lines += acceptance(paper)
    return "\n".join(lines) + "\n"


def _md_header(paper: dict) -> list[str]:
    """The title, the commands that produced the results and the time they took."""
    lines = ["## Paper benchmarks (issue 7)", "", "Commands (each resumes from the cache and adds its testbeds):", ""]
    lines += [f"- `{r['command']}`: {r['s'] / 60:.0f} min" for r in paper["invocations"]]
    lines += ["", f"Total {paper['total_s'] / 60:.0f} min here; cached runs are reused, so a rerun takes minutes. Results: "
              "`docs/bench/paper.json`.", ""]
    return lines


def _fresh_total(c: dict, typical: bool) -> float:
    """A testbed's fresh-run seconds, its zoo at the recorded times or (``typical``) at the median entry's."""
    zoo = c["zoo_median_s"] * c["zoo_entries"] if typical else c["zoo_s"]
    return c["base_s"] + zoo + c["runs_s"]


def _md_fresh_run(fresh: dict) -> list[str]:
    """What a run from an empty cache would take, in total and per testbed."""
    total = sum(_fresh_total(c, False) for c in fresh.values())
    typical = sum(_fresh_total(c, True) for c in fresh.values())
    lines = [f"A fresh run (empty cache) of the testbeds below would take about **{total / 60:.0f} min** here by "
             f"the recorded times of what this report uses, or {typical / 60:.0f} min with every zoo entry at "
             "the median entry's time (some entries took many times the median). Counted: base pre-training, "
             "zoo entries, every run with its test evaluations, every ranking once; not dataset loading.", "",
             "| testbed | base pre-training min | zoo entries | zoo min (recorded / median x entries) | runs | "
             "runs min | total min |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {c['base_s'] / 60:.0f} | {c['zoo_entries']} | {c['zoo_s'] / 60:.0f} / "
              f"{c['zoo_median_s'] * c['zoo_entries'] / 60:.0f} | {c['runs']} | {c['runs_s'] / 60:.0f} | "
              f"{_fresh_total(c, False) / 60:.0f} |" for k, c in fresh.items()]
    lines.append("")
    return lines


def _md_testbed(key: str, res: dict) -> list[str]:
    """A regime's base, zoo and selection, and its table of methods."""
    sel = res["selection"]
    lines = [f"### `{key}`", "",
             f"Base {res['base']['arch']}/{res['base']['dataset']} {res['base']['test_acc']:.2f}%; zoo "
             f"{res['zoo']['entries']} tasks by {res['zoo']['pruner']}@{res['zoo']['iters']} (mean "
             f"{res['zoo']['mean_test_acc']:.2f}%); {len(res['targets'])} targets. Chosen on zoo tasks "
             f"{', '.join(sel.get('validation_tasks', [])) or '(from fashion)'}: lr {json.dumps(sel.get('lr'))}, "
             f"tau {sel.get('tau')}.", "",
             "| method | acc mean | std (over targets) | n | wins vs IFP@1000 | diff vs IFP@1000 | acc at J=0 | "
             "wall s mean / median | CPU s median | train GFLOPs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for lab, s in res["methods"].items():
        init = "" if s["acc_init_mean"] is None else f"{s['acc_init_mean']:.2f}"
        diff = "" if s["diff_vs_ifp1000"] is None else f"{s['diff_vs_ifp1000']:+.2f}"
        lines.append(f"| {lab} | {s['acc_mean']:.2f} | {s['acc_std']:.2f} | {s['n']} | "
                     f"{s['wins_vs_ifp1000']}/{s['targets']} | {diff} | {init} | {s['wall_s_mean']:.1f} / {s['wall_s_median']:.1f} | "
                     f"{s['cpu_s_median']:.1f} | "
                     f"{s['train_flops'] / 1e9:.0f} |")
    lines.append("")
    return lines


def _md_curves(key: str, cur: dict) -> list[str]:
    """Accuracy vs J per method, and MVP@100's accuracy vs N."""
    lines = [f"### Curves `{key}` (mean over targets; `curves_{key}.png`)", "",
             "| method | " + " | ".join(f"J = {j}" for j in cur["J"]) + " |", "|---|" + "---|" * len(cur["J"])]
    lines += [f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |" for name, accs in cur["acc_vs_J"].items()]
    lines += ["", "| MVP@100 | " + " | ".join(f"N = {n}" for n in cur["N"]) + " |", "|---|" + "---|" * len(cur["N"]),
              "| accuracy (3 seeds) | " + " | ".join(f"{a:.2f}" for a in cur["acc_vs_N"]) + " |", ""]
    return lines


def _md_iou(key: str, res: dict) -> list[str]:
    """Kept-unit IoU of zoo task pairs per similarity group, shallow and deep, against random masks."""
    half = len(res["layers"]) // 2
    rnd = res["random_iou"]
    lines = [f"### Kept-unit IoU of zoo task pairs by {res['similarity']} similarity `{key}` (`iou_{key}.png`)", "",
             f"{res['pairs']} pairs in {len(res['iou_by_group'])} similarity groups; shallow = first {half} unit groups in model order, "
             f"deep = the other {len(res['layers']) - half}. Random masks of the same sizes: shallow "
             f"{np.mean(rnd[:half]):.3f}, deep {np.mean(rnd[half:]):.3f}.", "",
             "| similarity group | pairs | mean IoU | shallow | deep |", "|---|---|---|---|---|"]
    for g, vals in enumerate(res["iou_by_group"]):
        if vals is None:
            continue
        lines.append(f"| {_group_label(res, g)} | {res['pairs_per_group'][g]} | {res['mean_iou_by_group'][g]:.3f} | "
                     f"{np.mean(vals[:half]):.3f} | {np.mean(vals[half:]):.3f} |")
    lines.append("")
    return lines


PRIMARY = {"fashion": "MVP@100 (WordNet, N = 3)", "fashion_100": "MVP@100 (WordNet, N = 3)",
           "omniglot": "MVP@100 (taxonomy, N = 3)", "omniglot_5": "MVP@100 (taxonomy, N = 3)", "vit": "MVP@100",
           "digits": "MVP@100 (LEEP, N = 3)"}


def acceptance(paper: dict) -> list[str]:
    """Issue 7's bars, each with the paired measured figure (mean per-target difference, wins / targets)."""
    tbs = paper["testbeds"]
    rows: list[str] = []
    _fashion_bars(rows, tbs, paper.get("retime", {}))
    _omniglot_bars(rows, tbs)
    if "vit" in tbs:
        _bar_vs(rows, tbs, "vit", "AHNP@1000", -1.0, "MVP@100 >= AHNP@1000 - 1")
    lines = ["### Acceptance (issue 7), paired per target", "",
             "| testbed | claim | measured | bar | holds | detail |", "|---|---|---|---|---|---|", *rows, ""]
    extras = _improvement_rows(tbs)
    if extras:
        lines += ["### Improvements beyond the paper (switchable), their effect on MVP@100", "",
                  "| testbed | switched off | accuracy gain when on (paired) | wins / ties / targets | "
                  "accuracy at J=0, on vs off |",
                  "|---|---|---|---|---|", *extras, ""]
    return lines


def _bar_row(rows: list[str], key: str, claim: str, shown: str, bar: str, holds: bool, detail: str) -> None:
    """Add one row of the acceptance table."""
    rows.append(f"| {key} | {claim} | {shown} | {bar} | {'yes' if holds else '**no**'} | {detail} |")


def _bar_vs(rows: list[str], tbs: dict, key: str, other: str, bar: float, claim: str) -> None:
    """Add the row "primary MVP@100 minus ``other`` >= ``bar``", paired per target (none if either is missing)."""
    m = tbs[key]["methods"]
    if other not in m or PRIMARY[key] not in m:
        return
    d, wins, ties, n = paired(m, PRIMARY[key], other)
    _bar_row(rows, key, claim, f"{d:+.2f}", f"{bar:g}", d >= bar,
             f"{PRIMARY[key]} {m[PRIMARY[key]]['acc_mean']:.2f} vs {other} {m[other]['acc_mean']:.2f}; wins {wins}/{n}")


def _best_of(m: dict, labels: tuple[str, ...]) -> str:
    """The label of the most accurate of ``labels`` (a missing method counts as -1)."""
    return max(labels, key=lambda lab: m.get(lab, {}).get("acc_mean", -1.0))


def _fashion_bars(rows: list[str], tbs: dict, retimes: dict) -> None:
    """Fashion-MNIST's bars: accuracy against IFP@1000, the 100-iteration baselines and transfer; time per target."""
    for key, bar_ifp in (("fashion", -0.5), ("fashion_100", 0.0)):
        if key not in tbs:
            continue
        m = tbs[key]["methods"]
        _bar_vs(rows, tbs, key, "IFP@1000", bar_ifp, f"MVP@100 >= IFP@1000 {bar_ifp:+.1f}")
        best = _best_of(m, ("IFP@100", "random@100"))
        _bar_vs(rows, tbs, key, best, 1.5, f"MVP@100 >= best of IFP@100, random@100 (here {best}) + 1.5")
        _bar_vs(rows, tbs, key, "transfer@100", 0.0, "MVP@100 >= transfer@100")
        for stat in ("wall_s_mean", "wall_s_median", "cpu_s_median") if {"IFP@1000", PRIMARY[key]} <= set(m) else ():
            ratio = m["IFP@1000"][stat] / m[PRIMARY[key]][stat]
            _bar_row(rows, key, f"time per target <= 1/20 of IFP@1000 ({stat})", f"1/{ratio:.1f}", "1/20",
                     ratio >= 20.0, f"{m[PRIMARY[key]][stat]:.2f} s vs {m['IFP@1000'][stat]:.1f} s")
        rt = retimes.get(key)
        if rt:
            _bar_row(rows, key,
                     f"time per target <= 1/20 of IFP@1000 (re-timed interleaved, {rt['targets']} targets, median)",
                     f"1/{rt['ratio_wall_median']:.1f}", "1/20", rt["ratio_wall_median"] >= 20.0,
                     f"wall ratio of means 1/{rt['ratio_wall_of_means']:.1f}, "
                     f"CPU median 1/{rt['ratio_cpu_median']:.1f}; per target "
                     + ", ".join(f"1/{p['ratio_wall']:.1f}" for p in rt["pairs"]))


def _omniglot_bars(rows: list[str], tbs: dict) -> None:
    """Omniglot's bars: against transfer, MVP from random zoo tasks and the best zoo-free baseline."""
    for key in ("omniglot", "omniglot_5"):
        if key not in tbs:
            continue
        m = tbs[key]["methods"]
        _bar_vs(rows, tbs, key, "transfer@100", 2.0, "MVP@100 >= transfer@100 + 2")
        _bar_vs(rows, tbs, key, "MVP@100 (random neighbours)", 2.0, "MVP@100 >= MVP from random zoo tasks + 2")
        free = _best_of(m, ("IFP@1000", "IFP@100", "random@100"))
        _bar_vs(rows, tbs, key, free, 5.0, f"MVP@100 >= best zoo-free baseline (here {free}) + 5")
        best100 = _best_of(m, ("IFP@100", "random@100"))
        if best100 != free:
            _bar_vs(rows, tbs, key, best100, 5.0, f"(same, at 100 iterations: {best100}) + 5")


def _improvement_rows(tbs: dict) -> list[str]:
    """Per testbed, the primary MVP@100 against itself with BN re-estimation (and the chosen tau) switched off."""
    extras = []
    for key, res in tbs.items():
        m = res["methods"]
        for other, what in (("MVP@100 (no BN re-estimation)", "BatchNorm re-estimation"),
                            ("MVP@100 (paper: tau 1, no BN re-estimation)", "BN re-estimation and the chosen tau")):
            if other in m and PRIMARY.get(key) in m:
                d, wins, ties, n = paired(m, PRIMARY[key], other)
                extras.append(f"| {key} | {what} | {d:+.2f} | {wins}/{ties}/{n} | "
                              f"{m[PRIMARY[key]]['acc_init_mean']} vs {m[other]['acc_init_mean']} |")
    return extras


# --- the command -------------------------------------------------------------------------------------------
def main() -> None:
    args = _parse_args()
    if args.report:
        _render(json.loads((args.out / "paper.json").read_text()), args.out)
        return
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["EDGEMVP_CACHE"] = str(args.cache_dir)
    paper = _prior_paper(args.out)
    for key in args.only.split(","):
        if not _add_testbed(paper, TESTBEDS[key], args):
            continue
        if not CACHED_ONLY:
            paper["invocations"][-1]["s"] = round(time.perf_counter() - start, 1)
        _write(paper, args)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "edgemvp-bench")
    ap.add_argument("--only", default="fashion,omniglot,vit,digits", help="Testbeds to run (comma-separated).")
    ap.add_argument("--no-curves", action="store_true",
                    help="Skip the accuracy vs J and N curves (the IoU analysis, which trains nothing, still runs).")
    ap.add_argument("--no-bars", action="store_true")
    ap.add_argument("--cached-only", action="store_true",
                    help="Summarise the runs already cached (partial results while a run goes on); run nothing.")
    ap.add_argument("--retime", type=int, default=0, metavar="K",
                    help="Also time IFP@1000 and MVP@100 again on K targets of each Fashion-MNIST regime, "
                         "interleaved on the same machine state (not cached; recorded under 'retime').")
    ap.add_argument("--report", action="store_true",
                    help="Only rewrite results.md and the plots from <out>/paper.json (runs nothing).")
    return ap.parse_args()


def _prior_paper(out: Path) -> dict:
    """``<out>/paper.json`` (or a new one) to add to, with this invocation recorded unless --cached-only."""
    prior = out / "paper.json"
    paper = json.loads(prior.read_text()) if prior.exists() else {}
    # each invocation that runs work is recorded with its time (cached work is not redone); --cached-only adds none
    invocations = paper.setdefault("invocations", [])
    if not CACHED_ONLY:
        invocations.append({"command": "python bench/paper.py " + " ".join(sys.argv[1:]), "s": 0.0})
    paper.setdefault("testbeds", {})
    paper.setdefault("curves", {})
    paper.setdefault("iou", {})
    return paper


def _add_testbed(paper: dict, tb: Testbed, args: argparse.Namespace) -> bool:
    """Run one testbed (or summarise it from the cache) into ``paper``; False when it is not cached yet."""
    key, bars = tb.key, not args.no_bars
    lr_from = paper["testbeds"].get("fashion", {}).get("selection") if tb.zoo_from else None
    if tb.zoo_from and lr_from is None:
        raise SystemExit(f"testbed '{key}' uses the learning rates chosen on '{tb.zoo_from}': run that first")
    SPENT.clear()
    RANKS.clear()
    try:
        res, bed = run_testbed(tb, args.cache_dir, bars, lr_from)
    except NotCached as e:
        print(f"[{key}] not cached yet ({e}): skipped", flush=True)
        return False
    paper["testbeds"].update(res)
    if key in ("fashion", "omniglot"):
        _add_analyses(paper, bed, args, bars)
    if res and all(r.get("complete") for r in res.values()):
        with_curves = key in ("fashion", "omniglot") and not args.no_curves
        paper.setdefault("fresh_run", {})[key] = fresh_run_cost(bed, with_curves)
    if key == "fashion" and args.retime and not CACHED_ONLY:
        for regime, per_class in tb.regimes:
            paper.setdefault("retime", {})[regime] = retime(bed, regime, per_class, args.retime)
    bed.local.close()
    return True


def _add_analyses(paper: dict, bed: Bed, args: argparse.Namespace, bars: bool) -> None:
    """The curves of the testbed's first regime (unless --no-curves) and the IoU of its zoo's masks."""
    regime, per_class = bed.tb.regimes[0]
    try:
        if not args.no_curves:
            paper["curves"][regime] = curves(bed, regime, per_class, targets(bed), bars)
    except NotCached:
        print(f"[{bed.tb.key}] curves not finished: skipped (--cached-only)", flush=True)
    paper["iou"][bed.tb.key] = iou_by_similarity(bed, bed.tb.primary)  # zoo masks only: cheap


def fresh_run_cost(bed: Bed, curves: bool) -> dict:
    """What running this testbed from an empty cache would take here, from the recorded times of what its report
    uses: the base's pre-training and the zoo's entries (unless borrowed from another testbed), every run (training
    and test evaluations) and every ranking. Dataset loading and process start-up are not counted."""
    own = not bed.tb.zoo_from
    ids = set(bed.ids)
    zoo = [r.build_seconds or 0.0 for r in bed.store.rows() if r.id in ids] if own else []
    base_s = float(bed.base.train.get("train_seconds", 0.0)) if own else 0.0
    # entries built while the cores were shared took up to 18x their zoo's median: report median x entries too
    return {"base_s": round(base_s, 1), "zoo_s": round(sum(zoo), 1),
            "zoo_median_s": round(statistics.median(zoo), 1) if zoo else 0.0, "zoo_entries": len(zoo),
            "runs": len(SPENT), "runs_s": round(sum(SPENT.values()) + sum(RANKS.values()), 1), "curves": curves}


def _write(paper: dict, args) -> None:
    paper["total_s"] = round(sum(r["s"] for r in paper["invocations"]), 1)
    paper["machine"] = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__}
    _render(paper, args.out)


def _render(paper: dict, out: Path) -> None:
    """Plots, paper.json and results.md from the results."""
    paper["plots"] = plots(paper, out)
    (out / "paper.json").write_text(json.dumps(paper, indent=1))
    (out / "results.md").write_text(markdown(paper))


if __name__ == "__main__":
    main()
