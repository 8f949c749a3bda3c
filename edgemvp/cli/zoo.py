"""``edgemvp zoo ...``: build, inspect, verify and move zoos (thin commands over :mod:`edgemvp.zoo`)."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click
import torch

from edgemvp.cli.common import CA_OPTION, TOKEN_OPTION, ZOO_OPTION, Bar, Context, defaults, pass_ctx
from edgemvp.cli.types import Number, NumberList, Seed
from edgemvp.data.tasks import load_task_list
from edgemvp.errors import UsageError
from edgemvp.models.base import cached_bases
from edgemvp.pruners import PruneConfig
from edgemvp.zoo.api import Location, zoo_folder, zoo_location
from edgemvp.zoo.build import BuildReport, build
from edgemvp.zoo.defaults import DEFAULT_ARCH, DEFAULT_DATASET, DEFAULT_ZOO, default_zoo_path, zoo_path
from edgemvp.zoo.distributed import connect  # Ray itself is imported only when a build uses it
from edgemvp.zoo.jobs import BuildSpec
from edgemvp.zoo.limits import MAX_TASK_CLASSES, QUEUE
from edgemvp.zoo.store import ZooStore, check_bundle_destination, check_bundle_entries, check_marker, read_bundle, \
    repair_index

BUILD, PRUNE = defaults(BuildSpec), defaults(PruneConfig)
BUILD_TASKS = 12  # tasks of a 'zoo build' without --tasks (BuildSpec has no default; the default zoo has 10)


def _open(ctx: Context, zoo: str | None) -> ZooStore:
    return ZooStore.open(zoo_folder(zoo, ctx.cache))


@click.group()
def zoo() -> None:
    """The zoo of pruned models of past tasks that MVP votes from."""


@zoo.command("build")
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="Architecture of the cached base model.")
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True, help="Dataset of the base and the tasks.")
@click.option("--base", default=None, help="A cached base of another name, e.g. imagenet-1k-64px ('edgemvp bases "
              "add'); tasks of --dataset are pruned from it [default: the base of --dataset].")
@click.option("--tasks-file", type=click.Path(dir_okay=False, path_type=Path),
              help="A YAML file of named past tasks ({tasks: [{dataset, classes, name}]}) instead of random ones.")
@click.option("--tasks", "n_tasks", type=Number(1, 1_000_000, integer=True), default=BUILD_TASKS, show_default=True,
              help="Number of tasks.")
@click.option("--classes-per-task", type=Number(2, 100_000, integer=True), default=BUILD["classes_per_task"],
              show_default=True)
@click.option("--pruner", default=BUILD["pruner"], show_default=True,
              help="ifp-activation | ifp-taylor (CNNs), ahnp (ViT/DeiT), random (any).")
@click.option("--iters", type=Number(1, 10_000_000, integer=True), default=PRUNE["iters"], show_default=True,
              help="Optimiser steps J per task.")
@click.option("--ratio", "ratios", type=NumberList(0, 1, lo_open=True, hi_open=True), default=str(PRUNE["ratio"]),
              show_default=True, help="Fraction of units removed per group; a list (0.5,0.7,0.9) prunes every task at "
                                      "each (prune votes from the nearest, the others still rank units).")
@click.option("--lr", type=Number(0, 10, lo_open=True), default=PRUNE["lr"],
              help="Peak learning rate [default: measured per family].")
@click.option("--batch-size", type=Number(1, 65_536, integer=True), default=PRUNE["batch_size"], show_default=True)
@click.option("--prune-every", type=Number(1, 10_000_000, integer=True), default=PRUNE["prune_every"],
              help="h: steps between pruning events [default: spread].")
@click.option("--prune-fraction", type=Number(0, 1, lo_open=True, hi_open=True), default=PRUNE["prune_fraction"],
              show_default=True, help="p: share pruned per event.")
@click.option("--seed", type=Seed(), default=BUILD["seed"], show_default=True)
@click.option("--within-parent", is_flag=True,
              help="Draw each task's classes from one parent of the dataset's hierarchy (e.g. an Omniglot alphabet).")
@click.option("--workers", type=Number(1, 256, integer=True), default=1, show_default=True, help="Local worker processes.")
@click.option("--ray", "ray_address", metavar="local|auto|ADDRESS", default=None,
              help="Run each task as a Ray task: 'local' starts Ray here, 'auto' joins the running cluster.")
@click.option("--threads", type=Number(1, 1024, integer=True), default=None, help="torch threads per task (entries depend on it).")
@click.option("--cpus-per-task", type=Number(1, 1024, integer=True), default=None,
              help="With --ray: CPUs each task asks for [default: --threads].")
@click.option("--gpus-per-task", type=Number(0, 64), default=None,
              help="With --ray: GPUs each task asks for [default: 1 where the cluster has GPUs, else 0].")
@click.option("--zoo", "zoo_dir", metavar="PATH|URL", default=None,
              help="Zoo folder, or a zoo server (http://HOST:PORT: entries are built here and uploaded) "
                   "[default: <cache>/zoos/<arch>--<base or dataset>].")
@TOKEN_OPTION
@CA_OPTION
@pass_ctx
def zoo_build(ctx: Context, arch: str, dataset: str, base: str | None, tasks_file: Path | None, n_tasks: int, classes_per_task: int, pruner: str, iters: int,
              ratios: tuple[float, ...], lr: float | None, batch_size: int, prune_every: int | None, prune_fraction: float,
              seed: int, within_parent: bool, workers: int, ray_address: str | None, threads: int | None,
              cpus_per_task: int | None, gpus_per_task: float | None, zoo_dir: str | None, token_file: Path | None, ca_file: Path | None) -> None:
    """Prune the base model for N random tasks and store the results (rerun to resume)."""
    _check_workers(workers, ray_address, cpus_per_task, gpus_per_task)
    task_list = load_task_list(tasks_file, ctx.data) if tasks_file is not None else None
    cfg = PruneConfig(iters=iters, lr=lr, batch_size=batch_size, prune_every=prune_every, prune_fraction=prune_fraction)
    specs = [BuildSpec(arch, dataset, len(task_list) if task_list else n_tasks, classes_per_task, pruner,
                       replace(cfg, ratio=ratio), seed, within_parent, base, task_list)
             for ratio in ratios]  # every setting checked before any work
    folder = (zoo_location(zoo_dir, ctx.cache, token_file, ca_file) if zoo_dir
              else zoo_path(arch, specs[0].base_dataset, ctx.cache))
    if isinstance(folder, Path) and folder.exists() and any(folder.iterdir()):
        check_marker(folder)  # refuse a newer or foreign folder before any work
    for spec in specs:  # the same tasks (same seed) at each ratio
        report = _run_build(ctx, spec, folder, workers, ray_address, threads, (cpus_per_task, gpus_per_task))
        _built_line(folder, report, spec.config.ratio if len(specs) > 1 else None)


def _built_line(folder: Location, report: BuildReport, ratio: float | None) -> None:
    where = folder if isinstance(folder, Path) else folder.url
    at = f" at ratio {ratio:g}" if ratio is not None else ""
    click.echo(f"zoo {where}: {report.built} task(s) built{at}, {report.skipped} already there, "
               f"{len(report.ids)} in this build ({report.seconds:.0f} s)")


def _check_workers(workers: int, ray_address: str | None, cpus: int | None, gpus: float | None) -> None:
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if (cpus is not None or gpus is not None) and ray_address is None:
        raise UsageError("--cpus-per-task and --gpus-per-task are for Ray builds (--ray)")


def _run_build(ctx: Context, spec: BuildSpec, folder: Location, workers: int = 1, ray_address: str | None = None,
               threads: int | None = None, per_task: tuple[int | None, float | None] = (None, None)
               ) -> BuildReport:
    local = workers == 1 and ray_address is None
    if ray_address is not None:  # a cluster that cannot be reached: its one line before any progress bar
        connect(ray_address)
    with Bar("zoo build", unit="task", position=0) as overall:
        def task_bar(job):
            return Bar(f"  {job.task.name}", position=1, leave=False)

        return build(spec, folder, ctx.cache, ctx.data, workers, ray_address, threads, overall=overall,
                     task_progress=task_bar if local else None, ray_resources=per_task)


@zoo.command("default")
@pass_ctx
def zoo_default(ctx: Context) -> None:
    """Build (or finish) the default zoo for the offline default from the cached base model."""
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
        store.check_row(entry)  # never show an entry the index describes otherwise (exit 1, with the repair)
        data = json.loads(entry.manifest.to_bytes())
        data["masks"] = {u: f"{len(k)} kept" for u, k in data["masks"].items()}
        click.echo(json.dumps({"id": entry.id, **data}, indent=1))


@zoo.command("verify")
@ZOO_OPTION
@click.option("--repair", is_flag=True, help="Rebuild the index from the entries' manifests (corrupt entries go to "
              "quarantine/, a damaged index is moved aside).")
@pass_ctx
def zoo_verify(ctx: Context, zoo: str | None, repair: bool) -> None:
    """Check every entry's files against their sha256s and its index row against its manifest (exit 1 when any
    is corrupt or missing); --repair rebuilds the index."""
    if repair:
        report = repair_index(zoo_folder(zoo, ctx.cache))
        if report.damaged_index:
            click.echo(f"moved the damaged index to {report.damaged_index}", err=True)
        for _, reason in report.corrupt:
            click.echo(f"corrupt: {reason}", err=True)
        click.echo(f"index rebuilt: {report.checked} entries, {report.repaired} rows rewritten or dropped, "
                   f"{len(report.corrupt)} corrupt entries quarantined")
        return
    with _open(ctx, zoo) as store:
        report = store.verify()
    for entry_id, reason in report.corrupt:
        click.echo(f"corrupt: {reason}", err=True)
    for entry_id in report.missing:
        click.echo(f"missing: zoo entry {entry_id[:12]} has no files", err=True)
    click.echo(f"{report.checked} entries checked, {len(report.corrupt)} corrupt, {len(report.missing)} missing, "
               f"{len(report.recovered)} recovered, {report.removed_temp} unfinished writes removed"
               + ("; run 'edgemvp zoo verify --repair' to rebuild the index" if not report.clean else ""))
    if not report.clean:
        sys.exit(1)


@zoo.command("export")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("ids", nargs=-1)
@ZOO_OPTION
@click.option("--force", is_flag=True, help="Replace BUNDLE if it exists.")
@pass_ctx
def zoo_export(ctx: Context, bundle: Path, ids: tuple[str, ...], zoo: str | None, force: bool) -> None:
    """Write entries (all, or the given ids) into one bundle file (never inside a zoo)."""
    check_bundle_destination(bundle, force)  # before opening anything
    with _open(ctx, zoo) as store:
        n = store.export_bundle(bundle, [store.resolve(i) for i in ids] if ids else None, force)
    click.echo(f"wrote {n} entries to {bundle}")


@zoo.command("import")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--zoo", "zoo", metavar="PATH|NAME", help="Zoo folder (created if missing) [default: the default zoo].")
@pass_ctx
def zoo_import(ctx: Context, bundle: Path, zoo: str | None) -> None:
    """Add a bundle's entries to a zoo (every entry is verified before anything is written)."""
    items = read_bundle(bundle)  # refuse a bad bundle before creating anything
    bases = {b.weights_sha256: b for b in cached_bases(ctx.cache)}
    check_bundle_entries(items, bases)
    with ZooStore.open(zoo_folder(zoo, ctx.cache), create=True) as store:
        added, present = store.import_entries(items, bases, checked=True)
    click.echo(f"imported {added} entries ({present} already present)")


@zoo.command("serve")
@click.option("--zoo", "zoo", metavar="PATH|NAME", help="Zoo folder, or a name under <cache>/zoos (created when "
              "missing) [default: the default zoo].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless --public).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File with the bearer token uploads need (chmod 600); without it the server is read-only.")
@click.option("--read-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File with a token every read needs too (the write token also reads).")
@click.option("--public", is_flag=True, help="Allow a --host other machines reach (needs --token-file, and TLS or "
              "--insecure-http).")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, path_type=Path),
              help="TLS certificate chain (PEM): serve https (with --ssl-keyfile).")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, path_type=Path),
              help="TLS private key (PEM, readable by its owner only).")
@click.option("--insecure-http", is_flag=True, help="Allow --public without TLS (tokens then cross the network in "
              "clear text).")
@click.option("--max-upload-mb", type=click.IntRange(1, 4096), default=256, show_default=True)
@click.option("--vote-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Votes averaged at once (each holds full-size float64 copies of the model).")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="torch threads.")
@click.option("--max-task-classes", type=click.IntRange(2, 10_000), default=MAX_TASK_CLASSES, show_default=True,
              help="Classes a /neighbours or /vote task may have (422 past it).")
@click.option("--queue", type=click.IntRange(0, 10_000), default=QUEUE, show_default=True,
              help="Rankings and votes waiting for a slot; past it the server answers 503.")
@pass_ctx
def zoo_serve(ctx: Context, zoo: str | None, host: str, port: int, token_file: Path | None,
              read_token_file: Path | None, public: bool, ssl_certfile: Path | None, ssl_keyfile: Path | None,
              insecure_http: bool, max_upload_mb: int, vote_workers: int, threads: int, max_task_classes: int,
              queue: int) -> None:
    """Serve a zoo and the voter over HTTP(S) (FastAPI + uvicorn) for prunes from other machines."""
    # FastAPI and uvicorn, the zoo server's dependencies, are imported only when serving
    import uvicorn
    from edgemvp.zoo.server import check_listen, check_tls, create_app, is_loopback, load_token  # FastAPI

    if not is_loopback(host) and not public:
        raise UsageError(f"--host {host} is reachable from other machines; pass --public (with --token-file) "
                         "to serve there")
    if public and token_file is None:
        raise UsageError("--public needs --token-file (uploads must be authenticated off this machine)")
    tls = check_tls(ssl_certfile, ssl_keyfile)
    if public and not tls and not insecure_http:
        raise UsageError("--public without TLS sends tokens in clear text: give --ssl-certfile and --ssl-keyfile, "
                         "or pass --insecure-http")
    token = load_token(token_file) if token_file else None
    read_token = load_token(read_token_file, "--read-token-file") if read_token_file else None
    folder = zoo_folder(zoo, ctx.cache)
    check_listen(host, port)
    app = create_app(folder, token, read_token, max_upload_mb << 20, ctx.cache, vote_workers=vote_workers,
                     max_task_classes=max_task_classes, queue=queue)
    torch.set_num_threads(threads)
    reads = "need a token" if read_token else "open" + (" to the network" if not is_loopback(host) else "")
    click.echo(f"serving zoo {folder} at {'https' if tls else 'http'}://{host}:{port} (writes: "
               f"{'token' if token else 'off'}, reads: {reads}); Ctrl-C stops", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if ctx.verbose else "warning",
                ssl_certfile=str(ssl_certfile) if tls else None, ssl_keyfile=str(ssl_keyfile) if tls else None)
