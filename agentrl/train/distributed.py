"""Training in several processes, one per GPU (or per CPU share), started by ``accelerate launch`` or ``torchrun``.

The launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without
``WORLD_SIZE > 1`` the trainer runs in one process and every method here is a no-op. One step over N ranks:

1. every rank computes the same task list; rank r rolls out the groups of ``tasks[r::N]`` with its own
   backend (its weights are every other rank's), and the groups are gathered back, in task order, on every
   rank. Advantages are per group, so they are complete before anything is split. Sampling may run on
   another thread (asynchronous rollouts); the gather, like every collective here, runs on the trainer's
   main thread only. Under NCCL a collective goes to its thread's current CUDA device, which is GPU 0 on
   any thread but the one that set it, and two threads' collectives would interleave in different orders
   on different ranks;
2. the batch is cut into the very micro-batches one process would form, and rank r trains micro-batches
   r, r + N, ... Each rank normalises its loss by the step's totals (sequences, tokens, micro-batches), so
   the ranks' losses add up to the one-process loss for every ``loss_type``. Dealing out micro-batches
   rather than groups is what makes ``bnpo`` exact too: its normaliser is the token count of each
   micro-batch, which depends on where the batch is cut;
3. gradients are summed over ranks (not averaged: each rank's loss is already its share of the whole)
   before clipping, so clipping sees the global norm and every rank takes the same AdamW step. The
   adapters stay equal without being sent around. A rank with nothing to train adds zeros; it never
   skips the sum, which would leave the others waiting.

Rank 0 keeps the books: it claims the output directory and writes metrics (the whole step's, with
``ranks``, the number of processes), trajectories, checkpoints, evaluations, the adapter and
``summary.json``. The other ranks wait for its result in a broadcast that also carries its exception,
so a failure there stops every rank instead of leaving them waiting.

What this does not cover:

- the SFT warm start. Run ``agentrl sft RECIPE`` in one process first; the multi-process run then
  continues from its adapter;
- the in-process ``vllm`` backend (an engine per rank). Ranks sample with their own model (``hf``) or
  share running vLLM servers (``vllm-server``): rank 0 saves each step's adapter and loads it into
  the servers, and every rank's requests name that version;
- splitting evaluation: rank 0 evaluates alone, and the others wait for up to ``AGENTRL_DIST_TIMEOUT``
  seconds (two hours by default), the process group's timeout.
"""

from __future__ import annotations

import atexit
import os
import pickle
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from agentrl.errors import UserError
from agentrl.rollout.engine import RolloutBatch, batch_metrics
from agentrl.train.loss import LossNorm
from agentrl.train.recipe import Recipe
from agentrl.train.run_dir import WallClock, claim

T = TypeVar("T")

MULTI_PROCESS_BACKENDS = ("hf", "vllm-server")
"""Rollout backends a multi-process run can sample with: each rank's own model, or shared vLLM servers."""

DEFAULT_TIMEOUT_S = 7200
"""How long a collective waits for the other ranks; rank 0's evaluations run while the others wait."""
TIMING = {"tokens_per_second": sum, "generation_time_share": statistics.fmean, "tool_time_share": statistics.fmean}
"""Rollout metrics of each rank's own clock, and how the ranks' values combine (throughput adds up, shares
average). The rest are recomputed from every rank's groups; ``wall_seconds`` is the slowest rank's sampling
plus the gather."""


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks of a run; ``Distributed()`` is a run in one process."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    """Where collectives' tensors live: CUDA for NCCL, the CPU for gloo."""

    @property
    def is_main(self) -> bool:
        """Rank 0, which writes the run's files and evaluates."""
        return self.rank == 0

    # ----- rank 0 alone ----------------------------------------------------------------------
    def from_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on rank 0; every rank returns its result, or raises its exception."""
        if self.world == 1:
            return fn(*args, **kwargs)
        import torch.distributed as dist

        box: list[Any] = [None]
        error: Exception | None = None
        if self.is_main:
            try:
                box[0] = (True, fn(*args, **kwargs))
            except Exception as exc:
                error, box[0] = exc, (False, _picklable(exc))
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def console(self) -> Any:
        """The console of progress output: the default on rank 0, a silent one elsewhere."""
        if self.is_main:
            return None
        from rich.console import Console

        return Console(quiet=True)

    # ----- rollouts --------------------------------------------------------------------------
    def my_tasks(self, task_ids: Sequence[str]) -> list[str]:
        """This rank's share of a step's tasks: ``task_ids[rank::world]`` (resets are seeded by task id, so a task
        starts the same on any rank)."""
        return list(task_ids)[self.rank :: self.world]

    def gather_batch(self, local: RolloutBatch, n_tasks: int) -> RolloutBatch:
        """Every rank's groups of one step, in task order, as one process would have sampled them.

        A collective: call it from the trainer's main thread, on every rank, once per step. Each trajectory
        keeps what its own rank recorded on it (``policy_version`` included).
        """
        if self.world == 1:
            return local
        start = time.perf_counter()
        shares = self.all_gather((local.groups, local.metrics))
        groups: list[Any] = [None] * n_tasks
        for rank, (part, _) in enumerate(shares):
            groups[rank :: self.world] = part
        wall = max(m.get("wall_seconds", 0.0) for _, m in shares) + time.perf_counter() - start
        metrics = batch_metrics(groups, wall, {"generation": 0.0, "tools_only": 0.0})
        for key, combine in TIMING.items():
            values = [m[key] for _, m in shares if key in m and m.get("episodes", 1)]
            if values:
                metrics[key] = float(combine(values))
        metrics["ranks"] = float(self.world)
        return RolloutBatch(groups, metrics)

    def all_gather(self, obj: T, group: Any = None) -> list[T]:
        """Every rank's ``obj``, in rank order (a list of one in one process)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=group)
        return out

    # ----- the update ------------------------------------------------------------------------
    def shard(self, items: Sequence[T], size: int) -> list[T]:
        """This rank's share of ``items`` cut into chunks of ``size``: chunks rank, rank + world, ... in a row.

        Cutting the share into chunks of ``size`` again gives back exactly those chunks: only the last
        chunk of all can be short, and it is the last of its rank's.
        """
        if self.world == 1:
            return list(items)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        return [x for chunk in chunks[self.rank :: self.world] for x in chunk]

    def total(self, norm: LossNorm) -> LossNorm:
        """The step's normalisers from this rank's: sequences, tokens and micro-batches summed over ranks."""
        if self.world == 1:
            return norm
        counts = self._sum(torch.tensor([norm.sequences, norm.tokens, norm.micro_batches], dtype=torch.int64))
        sequences, tokens, micro_batches = (int(x) for x in counts.tolist())
        return replace(norm, sequences=sequences, tokens=tokens, micro_batches=micro_batches)

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        if self.world == 1:
            return value
        return float(self._sum(torch.tensor([value], dtype=torch.float64)))

    def reduce_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Sum the gradients of ``params`` over ranks, in place; a missing gradient counts as zeros.

        One flat buffer per dtype and device, so a step costs a single all-reduce, not one per LoRA tensor.
        """
        if self.world == 1:
            return
        buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            if p.grad is None:  # this rank trained nothing this step; the others still expect its share
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in buckets.values():  # the same order on every rank: the parameters'
            flat = self._sum(torch.cat([g.reshape(-1) for g in grads]))
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def reduce_stats(
        self, loss_stats: dict[str, float], correction_stats: dict[str, float], gap: list[float], ratio_max: float
    ) -> float:
        """Add the update's weighted sums over ranks, in place; returns the largest importance ratio of any rank."""
        if self.world == 1:
            return ratio_max
        parts = self.all_gather((loss_stats, correction_stats, gap, ratio_max))
        for i, totals in enumerate((loss_stats, correction_stats)):
            totals.clear()
            for part in parts:  # a rank that trained nothing has no keys at all
                for k, v in part[i].items():
                    totals[k] = totals.get(k, 0.0) + v
        gap[:] = [sum(p[2][i] for p in parts) for i in range(len(gap))]
        return max(p[3] for p in parts)

    def broadcast_trainable(self, model: torch.nn.Module) -> None:
        """Copy rank 0's trainable weights to every rank (a GPU's initialisation need not be reproducible)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, src=0)

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)


def init_distributed() -> Distributed:
    """This process's rank, from the launcher's environment; joins the process group the first time.

    NCCL on CUDA, each rank on GPU ``LOCAL_RANK`` (as the current device, so ``"cuda"`` means it);
    gloo on a CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = timedelta(seconds=float(os.environ.get("AGENTRL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        atexit.register(_destroy)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def claim_output(dist: Distributed, out: Path, recipe: Recipe) -> None:
    """Rank 0 claims ``out`` for the run (:func:`~agentrl.train.run_dir.claim`) while the others wait; a
    refusal stops every rank. A multi-process run also refuses what it does not cover (see the module doc)."""

    def claim_and_check() -> None:
        claim(out, recipe)
        if dist.world == 1:
            return
        if recipe.backend not in (*MULTI_PROCESS_BACKENDS, "auto"):
            raise UserError(
                "multi-process training samples with each rank's own model (hf) or with shared vLLM servers "
                f"(vllm-server); backend {recipe.backend!r} is not supported there"
            )
        if recipe.sft.enabled and not (out / "sft" / "summary.json").is_file():
            raise UserError(
                "the SFT warm start runs in one process: run `agentrl sft` with this recipe first, then launch "
                "the multi-process run on the same output_dir to continue with GRPO"
            )

    dist.from_main(claim_and_check)


class QuietClock(WallClock):
    """The wall clock of ranks other than 0: it counts this session but never writes ``wall.json``."""

    def start(self) -> None:
        self.sessions[-1][1] = time.time()

    def beat(self) -> None:
        self.sessions[-1][1] = time.time()

    def stop(self) -> None:
        self.beat()


class NullLogger:
    """The metrics logger of ranks other than 0: rank 0 logs the step's global metrics once."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def log(self, step: int, metrics: dict[str, float]) -> list[str]:
        return []

    def close(self) -> None:
        pass


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives the trip to the other ranks, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__} on rank 0: {exc}")
