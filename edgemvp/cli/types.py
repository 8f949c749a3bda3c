"""Click option types for checked numbers (the CLI face of :mod:`edgemvp.checks`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgemvp.checks import SEED_MAX, in_range, interval


class Number(click.ParamType):
    """A click option type for a finite number in an interval (``nan``, ``inf`` and overflow are refused).

    Args:
        lo, hi: Bounds (None: unbounded on that side).
        lo_open, hi_open: Whether the bound itself is excluded.
        integer: Integers only (``1e3`` is refused; ``1000`` is taken).
    """

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, integer: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open, self.integer = lo, hi, lo_open, hi_open, integer
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parsed = value
        else:
            text = str(value).strip()
            try:
                parsed = int(text) if self.integer else float(text)
            except ValueError:
                self.fail(f"{str(value)[:40]!r} is not {'an integer' if self.integer else 'a number'}", param, ctx)
        if not in_range(parsed, self.lo, self.hi, self.lo_open, self.hi_open):
            self.fail(f"must be {'an integer ' if self.integer else ''}"
                      f"{interval(self.lo, self.hi, self.lo_open, self.hi_open)}, got {str(value)[:40]}", param, ctx)
        return parsed

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: D102
        return "INTEGER" if self.integer else "FLOAT"


class NumberOrAuto(Number):
    """:class:`Number`, or the word ``auto`` (converted to None: the caller's automatic choice)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        return super().convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: D102
        return f"auto|{super().get_metavar(param, ctx)}"


class NumberOrWord(Number):
    """:class:`Number`, or the word ``auto`` (kept as ``"auto"``: unlike :class:`NumberOrAuto`, a caller can tell
    ``auto`` from an option that was not given)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: D102
        return f"auto|{super().get_metavar(param, ctx)}"


class NumberList(Number):
    """A comma-separated list of :class:`Number` values (at least one, no repeats), as a tuple."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if not all(parts):
            self.fail(f"{str(value)[:40]!r}: an empty item in the list", param, ctx)
        values = tuple(super(NumberList, self).convert(p, param, ctx) for p in parts)
        if len(set(values)) != len(values):
            self.fail(f"{str(value)[:40]!r} lists a value twice", param, ctx)
        return values

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: D102
        return f"{super().get_metavar(param, ctx)}[,...]"


def Seed() -> Number:  # noqa: N802  (reads like the other option types)
    """The option type of ``--seed``."""
    return Number(0, SEED_MAX, integer=True)


class Folder(click.Path):
    """A folder option (``file_okay=False``, a :class:`~pathlib.Path`) that refuses an empty value: ``''`` would
    otherwise mean the current folder, and edgemvp would fill it with caches or data."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:  # noqa: D102
        if isinstance(value, str) and not value.strip():
            self.fail("must name a folder, not be empty", param, ctx)
        return super().convert(value, param, ctx)
