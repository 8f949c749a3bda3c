"""What the command modules share: the :class:`Context` every command gets, the progress :class:`Bar`, the
one-line error format, and the options several commands take.

Imports only the library (and :mod:`edgemvp.cli.types`), never a command module or the root group.
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable

import click
from tqdm import tqdm

from edgemvp.cli.types import Number
from edgemvp.pipeline import PruneRequest


class Context:
    """Options shared by every command, passed explicitly to the library."""

    def __init__(self, cache: Path | None, data: Path | None, verbose: int) -> None:
        self.cache = cache
        self.data = data
        self.verbose = verbose


pass_ctx = click.make_pass_decorator(Context)


class Bar:
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

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            if exc and exc[0] is not None:  # a failed command: the bar goes, its one error line stays
                self.bar.leave = False
            self.bar.close()


def one_line(text: str) -> str:
    """An error message as one printable line: control characters (a newline, an escape sequence, a NUL) from
    a user's input or a file are escaped, so an error never spans lines or drives the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def defaults(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults by name (fields without one are left out): option defaults are the
    library's."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def options(*decorators: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """Apply click option decorators listed top to bottom, as if stacked in that order over the function."""
    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


# --- options several commands take ---------------------------------------------------------------------------

PROFILES_OPTION = click.option(
    "--profiles", "profiles", multiple=True, type=click.Path(exists=True, path_type=Path),
    help="Extra device profile file or folder (repeatable) [env EDGEMVP_PROFILES].")
DEVICE_OPTION = click.option("--device", "-d", required=True,
                             help="Target device profile or alias (see 'edgemvp devices list').")
RUNS_OPTION = click.option("--runs", type=Number(5, 100_000, integer=True), default=defaults(PruneRequest)["runs"],
                           show_default=True, help="Timed runs when measuring.")
TOKEN_OPTION = click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                            help="File with the zoo server's bearer token [default: env EDGEMVP_ZOO_TOKEN].")
CA_OPTION = click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path), envvar="EDGEMVP_ZOO_CA_FILE",
                         help="CA certificates (PEM) of a zoo server with a private CA; the server's certificate "
                              "is always verified [env EDGEMVP_ZOO_CA_FILE].")
ZOO_OPTION = click.option("--zoo", "zoo", metavar="PATH|NAME",
                          help="Zoo folder, or a name under <cache>/zoos [default: the default zoo].")
