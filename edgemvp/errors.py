"""Error types that map to the CLI's exit codes (docs/design.md, decision 10).

Library code raises these; only the CLI turns them into one line on stderr and an exit code.
"""
from __future__ import annotations


class EdgeMVPError(Exception):
    """A runtime failure the user can read about in one line (exit code 1)."""

    exit_code = 1


class UsageError(EdgeMVPError):
    """Bad input the user can fix: unknown name, bad option value, missing or corrupt file (exit code 2)."""

    exit_code = 2


class BudgetExceeded(EdgeMVPError):
    """A model is over the latency budget of its device profile (exit code 3)."""

    exit_code = 3


def unknown(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UsageError:
    """Build the standard 'unknown X' error that lists the valid names.

    Args:
        kind: What was looked up, e.g. ``"dataset"``.
        name: The name the user gave.
        valid: The names that would have worked.

    Returns:
        A :class:`UsageError` ready to raise.
    """
    shown = name if len(name) <= 80 else name[:77] + "..."
    shown = repr(shown)[1:-1] if not shown.isprintable() else shown  # control characters never reach a terminal
    return UsageError(f"unknown {kind} '{shown}'; valid {kind}s: {', '.join(sorted(valid))}")
