"""``edgemvp zoo ...``: build, inspect, verify and move zoos (thin commands over :mod:`edgemvp.zoo`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgemvp.cli import Context, _Bar, pass_ctx
from edgemvp.errors import EdgeMVPError, UsageError


def _zoo_folder(ctx: Context, zoo: str | None) -> Path:
    """``--zoo``: a folder, or a zoo name under ``<cache>/zoos``; default: the default zoo."""
    from edgemvp.paths import cache_dir
    from edgemvp.zoo.defaults import default_zoo_path

    if zoo is None:
        return default_zoo_path(ctx.cache)
    path = Path(zoo)
    named = cache_dir(ctx.cache) / "zoos" / zoo
    return named if not path.exists() and named.exists() else path


def _open(ctx: Context, zoo: str | None):
    from edgemvp.zoo.store import ZooStore

    return ZooStore.open(_zoo_folder(ctx, zoo))


ZOO_OPTION = click.option("--zoo", "zoo", metavar="PATH|NAME",
                          help="Zoo folder, or a name under <cache>/zoos [default: the default zoo].")


def register(cli: click.Group) -> None:
    """Add the ``zoo`` group to the top-level command group."""
    cli.add_command(zoo)


@click.group()
def zoo() -> None:
    """The zoo of pruned models of past tasks that MVP votes from."""


@zoo.command("build")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture of the cached base model.")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="Dataset of the base and the tasks.")
@click.option("--tasks", "n_tasks", type=int, default=12, show_default=True, help="Number of tasks.")
@click.option("--classes-per-task", type=int, default=5, show_default=True)
@click.option("--pruner", default="ifp-activation", show_default=True,
              help="ifp-activation | ifp-taylor (CNNs), ahnp (ViT/DeiT), random (any).")
@click.option("--iters", type=int, default=1000, show_default=True, help="Optimiser steps J per task.")
@click.option("--ratio", type=float, default=0.9, show_default=True, help="Fraction of units removed per group.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: measured per family].")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--prune-every", type=int, default=None, help="h: steps between pruning events [default: spread].")
@click.option("--prune-fraction", type=float, default=0.2, show_default=True, help="p: share pruned per event.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--within-parent", is_flag=True,
              help="Draw each task's classes from one parent of the dataset's hierarchy (e.g. an Omniglot alphabet).")
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--ray", "ray_address", metavar="local|auto|ADDRESS", default=None,
              help="Run each task as a Ray task: 'local' starts Ray here, 'auto' joins the running cluster.")
@click.option("--threads", type=int, default=None, help="torch threads per task (entries depend on it).")
@click.option("--zoo", "zoo_dir", metavar="PATH", default=None,
              help="Zoo folder [default: <cache>/zoos/<arch>--<dataset>].")
@pass_ctx
def zoo_build(ctx: Context, arch: str, dataset: str, n_tasks: int, classes_per_task: int, pruner: str, iters: int,
              ratio: float, lr: float | None, batch_size: int, prune_every: int | None, prune_fraction: float,
              seed: int, within_parent: bool, workers: int, ray_address: str | None, threads: int | None,
              zoo_dir: str | None) -> None:
    """Prune the base model for N random tasks and store the results (rerun to resume)."""
    from edgemvp.pruners import PruneConfig
    from edgemvp.zoo.build import BuildSpec
    from edgemvp.zoo.defaults import zoo_path
    from edgemvp.zoo.store import check_marker

    if workers < 1:
        raise UsageError("--workers must be at least 1")
    cfg = PruneConfig(ratio=ratio, iters=iters, lr=lr, batch_size=batch_size, prune_every=prune_every,
                      prune_fraction=prune_fraction)
    spec = BuildSpec(arch, dataset, n_tasks, classes_per_task, pruner, cfg, seed, within_parent)
    folder = Path(zoo_dir) if zoo_dir else zoo_path(arch, dataset, ctx.cache)
    if folder.exists() and any(folder.iterdir()):
        check_marker(folder)  # refuse a newer or foreign folder before any work
    report = _run_build(ctx, spec, folder, workers, ray_address, threads)
    click.echo(f"zoo {folder}: {report.built} task(s) built, {report.skipped} already there, "
               f"{len(report.ids)} in this build ({report.seconds:.0f} s)")


def _run_build(ctx: Context, spec, folder: Path, workers: int = 1, ray_address: str | None = None,
               threads: int | None = None):
    from edgemvp.zoo.build import build

    local = workers == 1 and ray_address is None
    with _Bar("zoo build", unit="task", position=0) as overall:
        def task_bar(job):
            return _Bar(f"  {job.task.name}", position=1, leave=False)

        return build(spec, folder, ctx.cache, ctx.data, workers, ray_address, threads, overall=overall,
                     task_progress=task_bar if local else None)


@zoo.command("default")
@pass_ctx
def zoo_default(ctx: Context) -> None:
    """Build (or finish) the default zoo for the offline default from the cached base model."""
    from edgemvp.zoo.defaults import DEFAULT_ZOO, default_zoo_path

    folder = default_zoo_path(ctx.cache)
    report = _run_build(ctx, DEFAULT_ZOO, folder)
    click.echo(f"default zoo {folder}: {len(report.ids)} entries ({report.built} built now, {report.seconds:.0f} s)")


@zoo.command("list")
@ZOO_OPTION
@click.option("--class", "class_name", default=None, help="Only entries whose task has this class.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def zoo_list(ctx: Context, zoo: str | None, class_name: str | None, as_json: bool) -> None:
    """List a zoo's entries."""
    with _open(ctx, zoo) as store:
        rows = store.rows(class_name=class_name)
        for r in rows:
            if as_json:
                click.echo(json.dumps({"id": r.id, "task": r.task, "classes": r.classes, "pruner": r.pruner,
                                       "test_acc": r.test_acc, "params": r.params, "macs": r.macs,
                                       "arch": r.arch, "base_sha256": r.base_sha256}))
            else:
                click.echo(f"{r.id[:12]}  {r.arch:9s} {r.pruner:15s} acc {r.test_acc:6.2f}%  "
                           f"{r.params / 1e6:6.3f} M params  {', '.join(r.classes)}")
        if not as_json:
            click.echo(f"{len(rows)} entries in {store.root}")


@zoo.command("show")
@click.argument("entry_id")
@ZOO_OPTION
@pass_ctx
def zoo_show(ctx: Context, entry_id: str, zoo: str | None) -> None:
    """Print an entry's manifest (a unique id prefix is enough)."""
    with _open(ctx, zoo) as store:
        entry = store.get(store.resolve(entry_id))
        data = json.loads(entry.manifest.to_bytes())
        data["masks"] = {u: f"{len(k)} kept" for u, k in data["masks"].items()}
        click.echo(json.dumps({"id": entry.id, **data}, indent=1))


@zoo.command("verify")
@ZOO_OPTION
@pass_ctx
def zoo_verify(ctx: Context, zoo: str | None) -> None:
    """Check every entry's files against their sha256s (exit 1 when any is corrupt or missing)."""
    with _open(ctx, zoo) as store:
        report = store.verify()
    for entry_id, reason in report.corrupt:
        click.echo(f"corrupt: {reason}", err=True)
    for entry_id in report.missing:
        click.echo(f"missing: zoo entry {entry_id[:12]} has no files", err=True)
    click.echo(f"{report.checked} entries checked, {len(report.corrupt)} corrupt, {len(report.missing)} missing, "
               f"{len(report.recovered)} recovered, {report.removed_temp} unfinished writes removed")
    if not report.clean:
        sys.exit(1)


@zoo.command("export")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("ids", nargs=-1)
@ZOO_OPTION
@pass_ctx
def zoo_export(ctx: Context, bundle: Path, ids: tuple[str, ...], zoo: str | None) -> None:
    """Write entries (all, or the given ids) into one bundle file."""
    with _open(ctx, zoo) as store:
        n = store.export_bundle(bundle, [store.resolve(i) for i in ids] if ids else None)
    click.echo(f"wrote {n} entries to {bundle}")


@zoo.command("import")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--zoo", "zoo", metavar="PATH|NAME", help="Zoo folder (created if missing) [default: the default zoo].")
@pass_ctx
def zoo_import(ctx: Context, bundle: Path, zoo: str | None) -> None:
    """Add a bundle's entries to a zoo (every entry is verified before anything is written)."""
    from edgemvp.zoo.store import ZooStore, read_bundle

    items = read_bundle(bundle)  # refuse a bad bundle before creating anything
    with ZooStore.open(_zoo_folder(ctx, zoo), create=True) as store:
        added, present = store.import_entries(items)
    click.echo(f"imported {added} entries ({present} already present)")
