"""``edgemvp datasets``, ``tasks`` and ``wordnet``: dataset sources, tasks and WordNet (thin commands over
:mod:`edgemvp.data`)."""
from __future__ import annotations

import click

from edgemvp.cli.common import Context, pass_ctx
from edgemvp.data.datasets import get_dataset, list_datasets
from edgemvp.data.tasks import NAMED_TASKS, resolve_task, task_view
from edgemvp.data.wordnet import wordnet as load_wordnet, wup
from edgemvp.errors import EdgeMVPError


@click.group()
def datasets() -> None:
    """Dataset sources."""


@datasets.command("list")
def datasets_list() -> None:
    """List the dataset sources (and imagefolder:<path>)."""
    for source in list_datasets():
        click.echo(f"{source.name:15s} {source.summary}")
    click.echo(f"{'imagefolder:PATH':15s} your own <class>/<image> tree (or train/ and test/ subtrees)")
    click.echo(f"{'imagenet:PATH':15s} ImageNet layout: train/ and val/ of wnid-named class folders (classes are synsets)")


@click.group()
def tasks() -> None:
    """Named and ad-hoc tasks."""


@tasks.command("list")
def tasks_list() -> None:
    """List the named tasks."""
    for task in NAMED_TASKS.values():
        click.echo(f"{task.name:10s} {task.dataset:15s} {', '.join(task.classes)}  ({task.description})")


@tasks.command("show")
@click.argument("name", required=False)
@click.option("--dataset", help="Dataset of an ad-hoc task.")
@click.option("--classes", help="Comma-separated classes of an ad-hoc task.")
@pass_ctx
def tasks_show(ctx: Context, name: str | None, dataset: str | None, classes: str | None) -> None:
    """Show a task's classes, WordNet synsets and image counts (counts need the data)."""
    task = resolve_task(name, dataset, classes, ctx.data)
    click.echo(f"task     {task.name}\ndataset  {task.dataset}")
    try:
        ds = get_dataset(task.dataset, ctx.data)
        train, test = task_view(task, ds, "train"), task_view(task, ds, "test")
        counts = {c: (int((train.targets == i).sum()), int((test.targets == i).sum()))
                  for i, c in enumerate(task.classes)}
    except EdgeMVPError as exc:
        counts = {}
        click.echo(f"data     not available: {exc}")
    for cls, syn in zip(task.classes, task.synsets):
        n = counts.get(cls)
        click.echo(f"  {cls:28s} {syn or '-':22s} " + (f"train {n[0]:6d}  test {n[1]:6d}" if n else ""))


@click.group()
def wordnet() -> None:
    """WordNet 3.0 for task similarity (offline after set-up)."""


@wordnet.command("setup")
@pass_ctx
def wordnet_setup(ctx: Context) -> None:
    """Lay out Debian's WordNet files for nltk in the cache (idempotent)."""
    wn = load_wordnet(ctx.cache)
    click.echo(f"WordNet {wn.get_version()} ready ({wn.root})")


@wordnet.command("similarity")
@click.argument("a")
@click.argument("b")
@pass_ctx
def wordnet_similarity(ctx: Context, a: str, b: str) -> None:
    """Wu-Palmer similarity of two synsets (names like dog.n.01 or ImageNet wnids)."""
    click.echo(f"{wup(a, b, ctx.cache):.4f}")
