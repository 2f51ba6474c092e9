"""Bounded-staleness asynchronous rollouts: the batch of step k+1 is sampled while step k trains.

With ``grpo.max_off_policy_steps = N > 0`` a producer thread samples batches ahead of the trainer on
a separate engine (vLLM servers), at most N optimizer steps ahead: the batch of step j starts only
once the trainer has finished step j - N and serves that adapter, so every trajectory is at most N
versions old when it is trained on. Each trajectory records the version that sampled it
(``Trajectory.policy_version``); the trainer's rollout correction (truncated importance weights
pi_old / pi_sampler per token) reweighs what changed since, and its statistics are logged with the
staleness. N = 0 is the synchronous loop and does not use this module.

Why a thread and not a process: the producer spends its time waiting on HTTP and on tools, both of
which release the GIL, while the trainer's main thread runs torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Produced:
    """One sampled batch and when it was made."""

    batch: Any
    version: int
    """The adapter version (optimizer steps taken) that sampled it."""
    seconds: float
    """Wall time of the sampling itself."""
    waited: float = 0.0
    """How long the trainer waited for it (0 when it was ready: sampling fully overlapped training)."""


class RolloutPipeline:
    """Samples the batches of steps ``start..stop-1`` on a thread, at most ``max_off_policy`` steps ahead.

    ``sample(step)`` samples one batch with the adapter served at that moment and returns
    ``(batch, version)``; the trainer calls :meth:`get` for each step's batch in order and
    :meth:`trained` after each update, once the new adapter is served.
    """

    def __init__(self, sample: Callable[[int], tuple[Any, int]], *, start: int, stop: int, max_off_policy: int):
        if max_off_policy < 1:
            raise ValueError("max_off_policy must be at least 1 (0 is the synchronous loop)")
        self._sample, self.max_off_policy = sample, max_off_policy
        self._cond = threading.Condition()
        self._trained = start
        self._ready: dict[int, Produced] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(start, stop), name="agentrl-rollouts", daemon=True)
        self._thread.start()

    def _run(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            with self._cond:
                # Bounded staleness: wait until the adapter served is at most max_off_policy steps behind.
                self._cond.wait_for(lambda s=step: self._closed or self._trained >= s - self.max_off_policy)
                if self._closed:
                    return
            began = time.perf_counter()
            try:
                batch, version = self._sample(step)
            except BaseException as exc:  # the trainer re-raises it from get()
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[step] = Produced(batch, version, time.perf_counter() - began)
                self._cond.notify_all()

    def get(self, step: int) -> Produced:
        """The batch of ``step``, waiting for it if it is still being sampled."""
        began = time.perf_counter()
        with self._cond:
            self._cond.wait_for(lambda: step in self._ready or self._error is not None or self._closed)
            if step not in self._ready:
                if self._error is not None:
                    raise self._error
                raise RuntimeError("the rollout pipeline was closed")
            produced = self._ready.pop(step)
        produced.waited = time.perf_counter() - began
        if step - produced.version > self.max_off_policy:  # the bound is the point of this module
            raise AssertionError(f"step {step} got a batch of version {produced.version}, beyond the bound")
        return produced

    def trained(self, steps: int) -> None:
        """The trainer has finished ``steps`` steps and serves their adapter: sampling may go on."""
        with self._cond:
            self._trained = steps
            self._cond.notify_all()

    def close(self) -> None:
        """Stop after the batch in flight (if any); a batch already sampled is discarded."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=1.0)


def staleness_metrics(batch: Any, step: int, produced: Produced | None) -> dict[str, float]:
    """How old the batch trained at ``step`` was, and (asynchronous) how much of its sampling overlapped training.

    ``policy_staleness_*``: optimizer steps between the sampling adapter and the one being updated (0
    in the synchronous loop). ``rollout_overlap_fraction``: the share of the batch's sampling time the
    trainer did not wait for, i.e. that ran while the previous steps trained.
    """
    versions = [t.policy_version for g in batch.groups for t in g.trajectories if t.policy_version is not None]
    ages = [step - v for v in versions] or [0]
    out = {"policy_staleness_mean": sum(ages) / len(ages), "policy_staleness_max": float(max(ages))}
    if produced is not None:
        out["rollout_wait_seconds"] = produced.waited
        out["rollout_sample_seconds"] = produced.seconds
        overlap = 1.0 - produced.waited / produced.seconds if produced.seconds else 1.0
        out["rollout_overlap_fraction"] = max(0.0, overlap)
    return out
