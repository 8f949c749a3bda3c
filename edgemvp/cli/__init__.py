"""The ``edgemvp`` command line: thin click commands over the library.

Exit codes (docs/design.md, decision 10): 0 ok, 1 runtime error, 2 usage error, 3 latency budget exceeded.
Errors a user can cause are printed as one line on stderr, never a traceback (``-v`` shows tracebacks of
unexpected errors).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import click
from tqdm import tqdm

from edgemvp.cli.types import Folder, Number, Seed
from edgemvp.errors import EdgeMVPError


class Context:
    """Options shared by every command, passed explicitly to the library."""

    def __init__(self, cache: Path | None, data: Path | None, verbose: int) -> None:
        self.cache = cache
        self.data = data
        self.verbose = verbose


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache-dir", type=Folder(), envvar="EDGEMVP_CACHE",
              help="Cache for bases, zoos and downloads [env EDGEMVP_CACHE; default ~/.cache/edgemvp].")
@click.option("--data-dir", type=Folder(), envvar="EDGEMVP_DATA",
              help="Where datasets are found and downloaded [env EDGEMVP_DATA; default <cache>/data].")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="edgemvp")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None, data_dir: Path | None, verbose: int) -> None:
    """edgemvp: Meta-Vote Pruning of pre-trained vision models for edge devices."""
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose + 1, 2), format="%(levelname)s %(name)s: %(message)s")
    # exporter chatter, and one line per HTTP request of a remote zoo
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "httpx", "httpcore",
                  "timm"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    if cache_dir is not None:
        from edgemvp.paths import cache_dir as resolve

        cache_dir = resolve(cache_dir)
    ctx.obj = Context(cache_dir, data_dir, verbose)


class _Bar:
    """A tqdm bar that appears only when work starts (errors before that stay one line)."""

    def __init__(self, desc: str, unit: str = "step", position: int | None = None, leave: bool = True) -> None:
        self.desc, self.unit, self.position, self.leave = desc, unit, position, leave
        self.bar: tqdm | None = None

    def reset(self, total: int | None = None) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True, file=sys.stderr,
                            position=self.position, leave=self.leave)
        else:
            self.bar.reset(total=total)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kwargs: object) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kwargs)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            if exc and exc[0] is not None:  # a failed command: the bar goes, its one error line stays
                self.bar.leave = False
            self.bar.close()


# --- datasets, tasks, WordNet ------------------------------------------------------------------------

@cli.group()
def datasets() -> None:
    """Dataset sources."""


@datasets.command("list")
def datasets_list() -> None:
    """List the dataset sources (and imagefolder:<path>)."""
    from edgemvp.data.datasets import list_datasets

    for source in list_datasets():
        click.echo(f"{source.name:15s} {source.summary}")
    click.echo(f"{'imagefolder:PATH':15s} your own <class>/<image> tree (or train/ and test/ subtrees)")


@cli.group()
def tasks() -> None:
    """Named and ad-hoc tasks."""


@tasks.command("list")
def tasks_list() -> None:
    """List the named tasks."""
    from edgemvp.data.tasks import NAMED_TASKS

    for task in NAMED_TASKS.values():
        click.echo(f"{task.name:10s} {task.dataset:15s} {', '.join(task.classes)}  ({task.description})")


@tasks.command("show")
@click.argument("name", required=False)
@click.option("--dataset", help="Dataset of an ad-hoc task.")
@click.option("--classes", help="Comma-separated classes of an ad-hoc task.")
@pass_ctx
def tasks_show(ctx: Context, name: str | None, dataset: str | None, classes: str | None) -> None:
    """Show a task's classes, WordNet synsets and image counts (counts need the data)."""
    from edgemvp.data.datasets import get_dataset
    from edgemvp.data.tasks import resolve_task, task_view

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


@cli.group()
def wordnet() -> None:
    """WordNet 3.0 for task similarity (offline after set-up)."""


@wordnet.command("setup")
@pass_ctx
def wordnet_setup(ctx: Context) -> None:
    """Lay out Debian's WordNet files for nltk in the cache (idempotent)."""
    from edgemvp.data.wordnet import wordnet as load

    wn = load(ctx.cache)
    click.echo(f"WordNet {wn.get_version()} ready ({wn.root})")


@wordnet.command("similarity")
@click.argument("a")
@click.argument("b")
@pass_ctx
def wordnet_similarity(ctx: Context, a: str, b: str) -> None:
    """Wu-Palmer similarity of two synsets (names like dog.n.01 or ImageNet wnids)."""
    from edgemvp.data.wordnet import wup

    click.echo(f"{wup(a, b, ctx.cache):.4f}")


# --- models --------------------------------------------------------------------------------------------

@cli.command()
def archs() -> None:
    """List the supported architectures."""
    from edgemvp.models.factory import ARCHS

    for spec in ARCHS.values():
        click.echo(f"{spec.name:11s} {spec.family:4s} timm:{spec.timm_name:24s} {spec.summary}")


@cli.command()
@click.option("--arch", default="resnet18", show_default=True, help="Architecture (see 'edgemvp archs').")
def units(arch: str) -> None:
    """Print the prunable units of an architecture: name, kind, size."""
    from edgemvp.units import unit_space

    space = unit_space(arch)
    for unit in space.units:
        click.echo(f"{unit.name:24s} {unit.kind:9s} {unit.size:6d}")
    click.echo(f"{len(space.units)} unit groups, {sum(u.size for u in space.units)} units")


@cli.command()
@click.option("--arch", default="resnet18", show_default=True, help="Architecture (see 'edgemvp archs').")
@click.option("--dataset", default="fashion-mnist", show_default=True, help="Dataset (see 'edgemvp datasets list').")
@click.option("--epochs", type=Number(0, 10_000, lo_open=True), default=5.0, show_default=True)
@click.option("--batch-size", type=Number(1, 65_536, integer=True), default=256, show_default=True)
@click.option("--lr", type=Number(0, 10, lo_open=True), default=None,
              help="Peak learning rate [default: 0.2 SGD for CNNs, 1e-3 AdamW for ViTs].")
@click.option("--size", type=Number(8, 4096, integer=True), default=32, show_default=True, help="Input side in px.")
@click.option("--init", default="none", show_default=True,
              help="Start weights: 'none' (random), 'hub' (timm hub, online) or a local weights file "
                   "(.safetensors, or a tensor state dict).")
@click.option("--seed", type=Seed(), default=0, show_default=True)
@click.option("--force", is_flag=True, help="Train again even if the cache has this base.")
@pass_ctx
def pretrain(ctx: Context, arch: str, dataset: str, epochs: float, batch_size: int, lr: float | None, size: int,
             init: str, seed: int, force: bool) -> None:
    """Pre-train the base model on all classes of a dataset and cache it."""
    from edgemvp.models.base import find_base
    from edgemvp.pretrain import PretrainConfig, pretrain as run

    existing = None if force else find_base(arch, dataset, ctx.cache)
    if existing is not None:
        click.echo(f"cached: {arch} on {existing.dataset}, test accuracy {existing.test_acc:.2f}% "
                   "(use --force to train again)")
        return
    cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, size=size, seed=seed, init=init)  # type: ignore[arg-type]
    if lr is not None:
        from edgemvp.models.factory import get_arch
        from edgemvp.pretrain import PRETRAIN_OPTIM

        cfg = replace(cfg, optim=replace(PRETRAIN_OPTIM[get_arch(arch).family], lr=lr))
    with _Bar(f"pretrain {arch}") as bar:
        manifest = run(arch, dataset, cfg, ctx.cache, ctx.data, progress=bar)
    click.echo(f"{arch} on {manifest.dataset}: test accuracy {manifest.test_acc:.2f}% on "
               f"{len(manifest.classes)} classes in {manifest.train['train_seconds']:.0f} s "
               f"(sha256 {manifest.weights_sha256[:12]})")


@cli.command("bases")
@pass_ctx
def bases(ctx: Context) -> None:
    """List the cached base models."""
    from edgemvp.models.base import cached_bases

    for m in cached_bases(ctx.cache):
        click.echo(f"{m.arch:11s} {m.dataset:15s} {m.input_spec.channels}x{m.input_spec.size}px "
                   f"acc {m.test_acc:6.2f}%  {json.dumps(m.train.get('epochs'))} epochs")


def _line(text: str) -> str:
    """An error message as one printable line: control characters (a newline, an escape sequence, a NUL) from
    a user's input or a file are escaped, so an error never spans lines or drives the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main() -> None:
    """Console entry point: run the CLI, turning errors into one line and an exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(_line(f"error: {exc.format_message()}{hint}"), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(_line(f"error: {exc.format_message()}"), err=True)
        sys.exit(exc.exit_code)
    except EdgeMVPError as exc:
        click.echo(_line(f"error: {exc}"), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an environment problem: one line unless asked for the traceback
        if any(arg in ("-v", "-vv", "--verbose") for arg in sys.argv[1:]):
            raise
        click.echo(_line(f"error: unexpected {exc.__class__.__name__}: {exc} (run with -v for the traceback)"),
                   err=True)
        sys.exit(1)


from edgemvp.cli import zoo as cli_zoo  # noqa: E402  (registers the zoo commands on the group above)
import edgemvp.cli.deploy  # noqa: E402,F401  (registers export, check, devices)
import edgemvp.cli.prune  # noqa: E402,F401  (registers prune)

cli_zoo.register(cli)
