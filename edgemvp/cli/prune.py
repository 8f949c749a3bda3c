"""``edgemvp prune``: the product command (a thin adapter over :mod:`edgemvp.pipeline`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

import click

from edgemvp.cli.common import (CA_OPTION, DEVICE_OPTION, PROFILES_OPTION, RUNS_OPTION, TOKEN_OPTION, Bar, Context,
                                defaults, options, pass_ctx)
from edgemvp.cli.types import Number, NumberOrAuto, NumberOrWord, Seed
from edgemvp.data.tasks import resolve_task
from edgemvp.deploy.allocate import ALLOCATIONS
from edgemvp.deploy.onnx import ExportConfig, Exporter
from edgemvp.errors import BudgetExceeded
from edgemvp.mvp.rank import SIMILARITIES
from edgemvp.mvp.vote import DEFAULT_NEIGHBOURS, DEFAULT_RATIO, DEFAULT_TEMPERATURE
from edgemvp.pipeline import METHODS, FleetResult, PruneRequest, Stages, run_fleet
from edgemvp.zoo.api import zoo_location

REQUEST = defaults(PruneRequest)
BN_REESTIMATE = {"auto": None, "on": True, "off": False}  # --bn-reestimate -> PruneRequest.bn_reestimate
BN_WORDS = {value: word for word, value in BN_REESTIMATE.items()}

PRUNE_OPTIONS = (
    click.option("--task", "-t", help="Named task (see 'edgemvp tasks list'), or give --dataset and --classes."),
    click.option("--dataset", help="Dataset of an ad-hoc task."),
    click.option("--classes", help="Comma-separated classes of an ad-hoc task."),
    DEVICE_OPTION,
    click.option("--zoo", metavar="PATH|NAME|URL", help="Zoo to vote from: a folder, a name under <cache>/zoos, or a "
                 "zoo server (http://HOST:PORT) [default: the base's default zoo, built on first use for the offline "
                 "default]."),
    TOKEN_OPTION,
    click.option("--method", type=click.Choice(METHODS), default=REQUEST["method"], show_default=True,
                 help="mvp; or a baseline through the same path: random masks, the single-task pruner (IFP/AHNP) for "
                      "--iters steps, or transfer (fine-tune the single nearest zoo model)."),
    click.option("--iters", "-j", type=Number(0, 1_000_000, integer=True), default=REQUEST["iters"],
                 show_default=True, help="Fine-tune steps J."),
    click.option("--neighbours", "-n", type=Number(1, 1000, integer=True), default=DEFAULT_NEIGHBOURS,
                 show_default=True, help="Nearest zoo tasks that vote."),
    click.option("--similarity", type=click.Choice(SIMILARITIES), default=REQUEST["similarity"], show_default=True,
                 help="Task similarity (wordnet falls back to LEEP for classes without a taxonomy node)."),
    click.option("--hierarchy", type=click.Path(dir_okay=False, path_type=Path),
                 help="Class hierarchy (YAML/JSON tree) for Wu-Palmer instead of WordNet."),
    click.option("--temperature", "--tau", type=Number(0, 1e6, lo_open=True), default=DEFAULT_TEMPERATURE,
                 show_default=True, help="tau of softmax(v / tau)."),
    click.option("--ratio", "-r", type=NumberOrWord(0, 1, lo_open=True, hi_open=True),
                 help=f"Fraction of units removed per group; auto: the least the latency budget (--budget-ms, else "
                      f"the device's) allows [default: auto with --budget-ms, else {DEFAULT_RATIO}]."),
    click.option("--margin", type=Number(0, 1, hi_open=True),
                 help="With --ratio auto, aim this fraction below the budget [default: 0.1 measured, 0.02 "
                      "estimated]."),
    click.option("--allocate", type=click.Choice(ALLOCATIONS), default="uniform", show_default=True,
                 help="With --ratio auto: uniform (every group at the chosen ratio) or greedy (per-group counts: "
                      "remove where the device's cost model saves most latency for the least importance lost)."),
    click.option("--round-to", type=NumberOrAuto(1, 4096, integer=True), default="auto", show_default=True,
                 help="Keep channel (and MLP node) counts as multiples of this; auto: the device profile's channel "
                      "block (onnxruntime's SIMD block, TensorRT's 8); 1 leaves them unaligned."),
    click.option("--seed", type=Seed(), default=REQUEST["seed"], show_default=True,
                 help="Seeds the vote, batches and init."),
    click.option("--int8", is_flag=True, help="Also write model.int8.onnx; the budget gate then applies to it."),
    click.option("--budget-ms", type=Number(0, 1e7, lo_open=True),
                 help="Latency budget in ms at the profile's statistic, instead of the profile's; without --ratio "
                      "it chooses the ratio."),
    click.option("--measure", is_flag=True,
                 help="Measure latency here with the profile's providers (on the device)."),
    click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
                 help="Output folder [default: export/<task>-<device>]."),
    click.option("--add-to-zoo", is_flag=True, help="Store the result in the zoo, its neighbours as parents."),
    click.option("--arch", help="Base architecture [default: the zoo's]."),
    click.option("--base-dataset", help="Dataset the base was pre-trained on [default: the zoo's]."),
    click.option("--lr", type=Number(0, 10, lo_open=True),
                 help="Peak fine-tune learning rate (and the pruner's for --method ifp) [default: the family's]."),
    click.option("--train-per-class", type=Number(1, 10**9, integer=True),
                 help="Use at most this many training images per class."),
    click.option("--head-from-base/--no-head-from-base", default=REQUEST["head_from_base"], show_default=True,
                 help="Start a class from the base's classifier row for it (an ImageNet base: classes whose "
                      "synset is an ImageNet class)."),
    click.option("--min-similarity", type=Number(0, 1), default=REQUEST["min_similarity"], show_default=True,
                 help="Without --zoo, a task of another dataset than the offline default's votes from the cached "
                      "zoo nearest to it by Wu-Palmer, which must reach this."),
    click.option("--bn-reestimate", type=click.Choice(list(BN_REESTIMATE)),
                 default=BN_WORDS[REQUEST["bn_reestimate"]], show_default=True,
                 help="Recompute BatchNorm statistics on the target before fine-tuning; auto: only when --iters is "
                      "too short to replace them (below 66 steps at BatchNorm's momentum 0.1)."),
    click.option("--no-bn-reestimate", is_flag=True, help="Same as --bn-reestimate off (the paper's way)."),
    click.option("--exporter", type=click.Choice(get_args(Exporter)), default=ExportConfig().exporter,
                 show_default=True, help="ONNX exporter of the shipped model (parity-checked either way); "
                                         "torchscript is the legacy tracer, about 2-3 s faster."),
    RUNS_OPTION,
    CA_OPTION,
    PROFILES_OPTION,
)


@click.command("prune")
@options(*PRUNE_OPTIONS)
@pass_ctx
def prune_cmd(ctx: Context, task: str | None, dataset: str | None, classes: str | None, device: str, zoo: str | None,
              token_file: Path | None, method: str, iters: int, neighbours: int, similarity: str,
              hierarchy: Path | None, temperature: float,
              ratio: float | str | None, margin: float | None, allocate: str, seed: int, int8: bool,
              budget_ms: float | None, measure: bool, out: Path | None,
              add_to_zoo: bool, arch: str | None, base_dataset: str | None, lr: float | None,
              train_per_class: int | None, head_from_base: bool, min_similarity: float, bn_reestimate: str,
              no_bn_reestimate: bool, exporter: str, runs: int, round_to: int | None,
              ca_file: Path | None, profiles: tuple[Path, ...]) -> None:
    """Prune the base model for a new task by voting from the nearest zoo tasks; export and check it."""
    if no_bn_reestimate and bn_reestimate == "on":
        raise click.UsageError("--no-bn-reestimate contradicts --bn-reestimate on")
    bn = False if no_bn_reestimate else BN_REESTIMATE[bn_reestimate]
    spec = resolve_task(task, dataset, classes, ctx.data)
    if ca_file is not None and zoo is None:
        raise click.UsageError("--ca-file is for a zoo server (--zoo https://...)")
    location = zoo_location(zoo, ctx.cache, token_file, ca_file) if zoo else None
    devices = tuple(d.strip() for d in device.split(","))
    if not all(devices):
        raise click.UsageError(f"--device {device!r}: an empty device name in the list")
    search = ratio == "auto" or (ratio is None and budget_ms is not None)
    fixed = DEFAULT_RATIO if search or ratio is None else ratio
    req = PruneRequest(spec, devices[0], location, arch, base_dataset, method, iters,
                       neighbours, similarity, hierarchy, temperature, fixed, seed, bn_reestimate=bn,
                       int8=int8, budget_ms=budget_ms, measure=measure, out=out, add_to_zoo=add_to_zoo, runs=runs,
                       lr=lr, train_per_class=train_per_class, head_from_base=head_from_base,
                       min_similarity=min_similarity, round_to=round_to, search=search, margin=margin,
                       exporter=exporter, allocate=allocate)
    fleet = _run(ctx, req, devices, profiles)
    for result in fleet.results:
        for line in result.summary.summary_lines(result.out):
            click.echo(line)
    if len(devices) > 1:
        for line in fleet_table(fleet, devices):
            click.echo(line)
    over = [f"{r.summary.device}: {r.summary.latency['verdict']}" for r in fleet.results if not r.within_budget]
    over += [f"{name}: {line}" for name, line in fleet.failed.items()]
    if over:
        raise BudgetExceeded(over[0] if len(devices) > 1 else over[0].split(": ", 1)[1])


def fleet_table(fleet: FleetResult, devices: tuple[str, ...]) -> list[str]:
    """One row per device: ratio, accuracy, latency against its budget, folder (or why it has no model)."""
    lines = ["", f"{'device':<14} {'ratio':>6} {'accuracy':>9} {'latency':>22} {'budget':>10}  folder"]
    for r in fleet.results:
        s, lat = r.summary, r.summary.latency
        verdict = "" if lat["within_budget"] else "  OVER"
        lines.append(f"{s.device:<14} {s.settings['ratio']:>6g} {s.accuracy.final:>8.2f}% "
                     f"{lat['value_ms']:>9.3f} ms {lat['statistic']} {lat['source'][:4]:>4} "
                     f"{lat['budget_ms']:>7g} ms  {r.out}{verdict}")
    for name, line in fleet.failed.items():
        lines.append(f"{name:<14} {'-':>6} {'-':>9} {'-':>22} {'-':>10}  none: {line}")
    return lines


def _run(ctx: Context, req: PruneRequest, devices: tuple[str, ...], profiles: tuple[Path, ...]) -> FleetResult:
    """Run the pipeline with a progress bar per stage (a zoo task's nested under the zoo's)."""
    bars: list[Bar] = []

    def bar(desc: str, unit: str) -> Bar:
        for b in bars:  # a finished stage's bar is closed before the next one starts
            if b.bar is not None and b.bar.total is not None and b.bar.n >= b.bar.total:
                b.__exit__()
        nested = desc.startswith(" ")  # a zoo task under the zoo's bar
        bars.append(Bar(desc.strip(), unit, position=1 if nested else None, leave=not nested))
        return bars[-1]

    try:
        return run_fleet(req, devices, ctx.cache, ctx.data, Stages(bar, lambda line: click.echo(line, err=True)),
                         profiles)
    finally:
        for b in bars:
            b.__exit__(*sys.exc_info())  # on an error the open bars go, and its one line stays
