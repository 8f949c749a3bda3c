"""The ``edgemvp`` command line: thin click commands over the library.

The root group :func:`cli` and :func:`main` live here; the commands are in the modules below it, which import
only :mod:`edgemvp.cli.common`, :mod:`edgemvp.cli.types` and the library: :mod:`~edgemvp.cli.data`
(datasets, tasks, wordnet), :mod:`~edgemvp.cli.models` (archs, units, pretrain, bases),
:mod:`~edgemvp.cli.prune`, :mod:`~edgemvp.cli.zoo` and :mod:`~edgemvp.cli.deploy` (export, check, devices).

Exit codes (docs/design.md, decision 10): 0 ok, 1 runtime error, 2 usage error, 3 latency budget exceeded.
Errors a user can cause are printed as one line on stderr, never a traceback (``-v`` shows tracebacks of
unexpected errors).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edgemvp.cli.common import Context, one_line
from edgemvp.cli.data import datasets, tasks, wordnet
from edgemvp.cli.deploy import check_cmd, devices, export_cmd
from edgemvp.cli.models import archs, bases, pretrain, units
from edgemvp.cli.prune import prune_cmd
from edgemvp.cli.types import Folder
from edgemvp.cli.zoo import zoo as zoo_group  # the name `zoo` stays the module edgemvp.cli.zoo
from edgemvp.errors import EdgeMVPError
from edgemvp.paths import cache_dir as resolve_cache

# exporter chatter, and one line per HTTP request of a remote zoo
NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "httpx", "httpcore", "timm",
                 "huggingface_hub")


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
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    if cache_dir is not None:
        cache_dir = resolve_cache(cache_dir)
    ctx.obj = Context(cache_dir, data_dir, verbose)


for command in (datasets, tasks, wordnet, archs, units, pretrain, bases, zoo_group, export_cmd, check_cmd, devices,
                prune_cmd):
    cli.add_command(command)


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
        click.echo(one_line(f"error: {exc.format_message()}{hint}"), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(one_line(f"error: {exc.format_message()}"), err=True)
        sys.exit(exc.exit_code)
    except EdgeMVPError as exc:
        click.echo(one_line(f"error: {exc}"), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an environment problem: one line unless asked for the traceback
        if any(arg in ("-v", "-vv", "--verbose") for arg in sys.argv[1:]):
            raise
        click.echo(one_line(f"error: unexpected {exc.__class__.__name__}: {exc} (run with -v for the traceback)"),
                   err=True)
        sys.exit(1)
