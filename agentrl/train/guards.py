"""What keeps a long run alive when its own machinery fails, and what stops it when carrying on is pointless.

* **Infrastructure failures** (a dead sandbox, a tool's service down, a backend returning garbage) are
  marked per episode by the rollout engine and left out of advantages. One such episode costs nothing
  but its compute; a run where most episodes fail learns from a biased remainder, so
  :class:`RunGuard` stops it with one line once the share of failed episodes over the last
  ``WINDOW`` steps passes ``limits.max_infra_failure_rate``.
* **Non-finite updates**: the trainer skips an optimizer step whose loss or gradient norm is NaN or
  infinite, so neither the weights nor the optimizer's moments ever see one. A run that produces
  nothing else (``limits.max_skipped_steps`` steps in a row) is stopped: it is diverging.
* **Failed writes** (a full disk, an I/O error): :func:`append_lines` never leaves half a line behind,
  the trainer keeps trajectories it could not write and writes them with the next step's, and a
  checkpoint that cannot be written is removed while the previous one stays the one to resume from.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentrl import faults
from agentrl.errors import RunStopped, one_line

WINDOW = 3
"""Steps over which the infrastructure failure rate is measured: one bad batch among good ones is diluted by
them. At the start of a session the window holds fewer steps, so a backend or sandbox that is down from the
first step stops the run after that step instead of wasting two more."""


class RunGuard:
    """Counts failures step by step and stops the run when a limit is crossed."""

    def __init__(self, max_infra_failure_rate: float, max_skipped_steps: int):
        self.max_infra_failure_rate = max_infra_failure_rate
        self.max_skipped_steps = max_skipped_steps
        self._recent: deque[tuple[int, int]] = deque(maxlen=WINDOW)  # (episodes, infra failures) per step
        self._skipped_in_a_row = 0
        self.write_failures = 0
        """Writes that failed so far (trajectories or checkpoints), over the whole session."""

    def check(self, step: int, metrics: dict[str, float], last_error: str | None) -> None:
        """After a step is logged: raise :class:`~agentrl.errors.RunStopped` when a limit is crossed."""
        self._recent.append((int(metrics.get("episodes", 0)), int(metrics.get("infra_failures", 0))))
        episodes = sum(e for e, _ in self._recent)
        failed = sum(f for _, f in self._recent)
        if episodes and failed / episodes > self.max_infra_failure_rate:
            last = one_line(last_error or "no error recorded", 200)
            raise RunStopped(
                f"stopped at step {step}: {failed} of the last {episodes} episodes ({failed / episodes:.1%}, over "
                f"{len(self._recent)} step(s)) were infrastructure failures, above limits.max_infra_failure_rate="
                f"{self.max_infra_failure_rate:g}; last: {last}. Fix the sandbox, tools or backend; "
                "the same command resumes from the last checkpoint"
            )
        if metrics.get("skipped_updates", 0) and metrics.get("skipped_updates") == metrics.get("updates"):
            self._skipped_in_a_row += 1
        else:
            self._skipped_in_a_row = 0
        if self.max_skipped_steps and self._skipped_in_a_row >= self.max_skipped_steps:
            raise RunStopped(
                f"stopped at step {step}: the loss or gradients were not finite for {self._skipped_in_a_row} steps in "
                "a row (every update skipped, weights unchanged); lower grpo.learning_rate or check the rewards. "
                f"limits.max_skipped_steps={self.max_skipped_steps} sets this limit"
            )

    def attempt(self, what: str, write: Callable[[], Any]) -> bool:
        """Run ``write``; on an ``OSError`` (a full disk) warn, count it and return False instead of raising."""
        try:
            write()
        except OSError as exc:
            self.write_failures += 1
            warnings.warn(f"could not write {what} ({exc}); the run continues", RuntimeWarning, stacklevel=2)
            return False
        return True


def append_lines(path: Path, lines: Sequence[str], *, mode: str = "a") -> None:
    """Write whole lines or nothing: a write that fails part way is cut back, so a reader never meets half a
    line, and the caller may try the same lines again later. ``mode="w"`` replaces the file only once the new
    one is complete (a temporary file renamed over it), so a failure keeps the old one."""
    faults.fire("write", path=path)
    data = memoryview("".join(line + "\n" for line in lines).encode())
    target = path.with_name(f".{path.name}.tmp") if mode == "w" else path
    with target.open(mode + "b", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
        start = f.tell()
        try:
            while data:
                data = data[f.write(data) :]
        except BaseException:  # a full disk, or an interrupt between two partial writes
            try:
                f.truncate(start)
                if target != path:
                    target.unlink()
            except OSError:
                pass
            raise
    if target != path:
        os.replace(target, path)
