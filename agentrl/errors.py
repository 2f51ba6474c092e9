"""Errors that mean "the user asked for something that cannot be done", as opposed to a bug.

The CLI prints a :class:`UserError` as one line and exits with status 2; anything else is unexpected
and is shown with its full traceback (status 1), because hiding it would hide a bug in agentrl or in
the user's own environment code.
"""

from __future__ import annotations


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every run of whitespace, line breaks included, made one space; cut to ``limit`` characters
    (an ellipsis marks the cut) when one is given. Error messages that a one-line report repeats go through it."""
    flat = " ".join(str(text).split())
    if limit is not None and len(flat) > limit:
        return flat[: limit - 3] + "..."
    return flat


class UserError(Exception):
    """A mistake in what the user asked for: a recipe key, an argument, a missing file or package."""


class RecipeError(UserError, ValueError):
    """A recipe key is unknown, ill-typed or out of range, or the output directory holds another run."""


class MissingDependency(UserError, ImportError):
    """An optional package that this feature needs is not installed; the message says which extra brings it."""


class EnvNotFound(UserError, KeyError):
    """No environment is registered under this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunStopped(UserError):
    """A run stopped itself because a failure limit was crossed (infrastructure failures, non-finite updates).

    Not a bug, and printed as one line: the message says which limit, why, and how to go on.
    """
