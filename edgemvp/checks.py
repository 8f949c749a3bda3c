"""Checked numbers: every numeric setting is finite and in its range, or one clear line (exit code 2).

The same checks serve the library's typed configs (so no entry point can pass ``nan``) and the CLI's option
types (:class:`edgemvp.cli.types.Number`), which name the option in the message. ``nan`` compares false with everything, so a
plain ``value <= 0`` test lets it through; every test here is written so that ``nan`` and ``inf`` fail.
"""
from __future__ import annotations

import math
from typing import Any

from edgemvp.errors import UsageError

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds fit in 32 bits


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is None and hi is None:
        return "a finite number"
    if hi is None:
        return f"{'>' if lo_open else '>='} {_fmt(lo)}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {_fmt(hi)}"
    return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def in_range(value: float, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
             hi_open: bool = False) -> bool:
    """Whether ``value`` is a finite number inside the interval (``nan`` and ``inf`` never are)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if lo is not None and not (value > lo if lo_open else value >= lo):
        return False
    return hi is None or (value < hi if hi_open else value <= hi)


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, integer: bool = False) -> Any:
    """Return ``value`` when it is a finite number (an int when ``integer``) in the interval.

    Raises:
        UsageError: ``<name> must be in (0, 1), got nan``.
    """
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if not in_range(value, lo, hi, lo_open, hi_open):
        what = interval(lo, hi, lo_open, hi_open)
        raise UsageError(f"{name} must be {'an integer ' if integer else ''}{what}, got {value!r}")
    return value


def optional(name: str, value: Any, **bounds: Any) -> Any:
    """:func:`number` for a setting that may be ``None``."""
    return None if value is None else number(name, value, **bounds)


def seed(name: str, value: Any) -> int:
    """A seed: an integer in [0, 2**32 - 1]."""
    return number(name, value, 0, SEED_MAX, integer=True)


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a huge integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def schema_version(data: Any, supported: int, source: str, default: int | None = 1) -> int:
    """The ``schema_version`` of a JSON object edgemvp wrote: a positive integer it can read.

    Args:
        data: The parsed JSON.
        supported: The newest version this edgemvp reads.
        source: Names the file in errors.
        default: The version of a file without the field (None: the field is required).

    Raises:
        UsageError: Not an object, a version that is not a positive integer, or a newer one.
    """
    if not isinstance(data, dict):
        raise UsageError(f"{source}: not a JSON object")
    value = data.get("schema_version", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{source}: schema_version must be a positive integer, got {_short(value)}")
    if value > supported:
        raise UsageError(f"{source}: written by a newer edgemvp (schema {_short(value)}, this one reads "
                         f"{supported}); upgrade edgemvp")
    return value
