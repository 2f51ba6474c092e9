"""Fault injection: named points where a test can make the harness's own parts fail.

A run of days meets every failure sooner or later: a tool's service goes down, a sandbox server
dies, a backend returns nonsense, the disk fills up, a gradient overflows. The claim that agentrl
survives each of these (the episode is marked as an infrastructure failure and left out, or the
step is skipped, and the run goes on) is only worth something if each is caused for real and the
real code path handles it. So the harness calls :func:`fire` at these points:

====================  =====================================================  ==============================
point                 where                                                  keyword arguments
====================  =====================================================  ==============================
``tool.call``         the tool runner, before a validated call runs          ``name``, ``arguments``
``sandbox.request``   the local sandbox, before a request goes to a server   ``sandbox``, ``index``, ``msg``
``generate``          the rollout engine, on a backend's completions         ``completions`` (edit in place)
``score``             ``ToolEnv``, before the reward function runs           ``task``, ``answer``
``loss``              the trainer, on each micro-batch's loss                ``loss``: return a replacement
``gradients``         the trainer, after backward, before clipping           ``params``
``write``             the trainer, before writing trajectories or a checkpoint  ``path``
====================  =====================================================  ==============================

Outside an :func:`inject` block, which is every real run, :func:`fire` returns ``None`` after one
dictionary check. Injection is for tests and benchmarks only; no recipe key turns it on.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

POINTS = ("tool.call", "sandbox.request", "generate", "score", "loss", "gradients", "write")


@dataclass
class Fault:
    """One injected fault: what happens at a point, and on which of its calls."""

    point: str
    """One of :data:`POINTS`."""
    action: Callable[..., Any]
    """Called with the point's keyword arguments when the fault fires. It may raise (the failure), sleep
    (a hang), change what it was given, or return a value the point uses (``loss``). At an async point
    (``tool.call``, ``score``) it may also return an awaitable, which is awaited."""
    rate: float = 1.0
    """Probability that a call fires, drawn from a generator seeded by ``seed``."""
    times: int | None = None
    """Fire at most this many times; ``None`` for no limit."""
    skip: int = 0
    """Let the first ``skip`` calls pass."""
    seed: int = 0
    """Seed of the draws, so which calls fail is repeatable."""
    calls: int = 0
    """Calls seen so far."""
    fired: int = 0
    """Calls that failed so far."""
    contexts: list[dict[str, Any]] = field(default_factory=list)
    """The keyword arguments of each call that fired, for tests to check what was hit."""
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ValueError(f"unknown fault point {self.point!r}; choose one of {', '.join(POINTS)}")
        self._rng = random.Random(self.seed)

    def _hit(self) -> bool:
        self.calls += 1
        if self.calls <= self.skip or (self.times is not None and self.fired >= self.times):
            return False
        if self._rng.random() >= self.rate:
            return False
        self.fired += 1
        return True


_active: dict[str, list[Fault]] = {}
_lock = threading.Lock()


def fire(point: str, **context: Any) -> Any:
    """Run the faults injected at ``point`` (none, in a real run); returns the first non-None result."""
    if not _active:
        return None
    with _lock:
        hits = [f for f in _active.get(point, ()) if f._hit()]
        for f in hits:
            f.contexts.append(dict(context))
    for f in hits:
        result = f.action(**context)
        if result is not None:
            return result
    return None


async def afire(point: str, **context: Any) -> Any:
    """:func:`fire` for async points: an awaitable returned by the action is awaited (a hang, for example)."""
    result = fire(point, **context)
    if inspect.isawaitable(result):
        result = await result
    return result


@contextmanager
def inject(
    point: str,
    action: Callable[..., Any],
    *,
    rate: float = 1.0,
    times: int | None = None,
    skip: int = 0,
    seed: int = 0,
) -> Iterator[Fault]:
    """Make ``point`` fail while the block runs; the yielded :class:`Fault` counts its calls and hits."""
    fault = Fault(point, action, rate=rate, times=times, skip=skip, seed=seed)
    with _lock:
        _active.setdefault(point, []).append(fault)
    try:
        yield fault
    finally:
        with _lock:
            _active[point].remove(fault)
            if not _active[point]:
                del _active[point]


def raises(exc: BaseException | Callable[[], BaseException]) -> Callable[..., Any]:
    """An action that raises ``exc`` (or a fresh exception from a factory, so tracebacks do not pile up)."""

    def action(**_: Any) -> Any:
        raise exc() if callable(exc) and not isinstance(exc, BaseException) else exc

    return action
