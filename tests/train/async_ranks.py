"""Asynchronous rollouts in two processes on a shared vLLM server; run by test_distributed.py under torchrun.

``torchrun --nproc_per_node 2 tests/train/async_ranks.py SERVER_URL OUT`` trains the toy recipe with
``grpo.max_off_policy_steps=1`` and records, per rank, the thread of every collective it made
(``OUT/threads-rankR.json``). Two things are arranged so that a test can see them:

- every ``torch.distributed`` collective is wrapped to note the thread it ran on: under NCCL, one made from
  the sampling thread goes to GPU 0 whatever the rank, and interleaves with the main thread's;
- rank 1 samples each batch after step 1 only once its trainer has served the step before it, so its share
  of a batch is one version newer than rank 0's: the gathered trajectories must keep their own versions.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch.distributed as dist

THREADS: list[str] = []


def _noting(fn):
    def wrapped(*args, **kwargs):
        THREADS.append(threading.current_thread().name)
        return fn(*args, **kwargs)

    return wrapped


for _name in ("all_gather_object", "broadcast_object_list", "all_reduce", "broadcast", "barrier", "all_gather"):
    setattr(dist, _name, _noting(getattr(dist, _name)))


def main(url: str, out: Path) -> None:
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    recipe = load_recipe(None, [
        "model.name=tiny-qwen3", "env.id=agentrl.testing:LatinLettersEnv", "backend=vllm-server",
        f"server_urls=[{url}]", "grpo.max_off_policy_steps=1", "grpo.steps=3", "grpo.tasks_per_step=2",
        "grpo.group_size=4", "grpo.max_turns=1", "grpo.zero_variance=keep", "sampling.max_new_tokens=16",
        "sampling.stop=[' ']", "lora.r=8", "lora.alpha=16", "eval.before=false", "eval.after=false",
        "report_to=[]", f"output_dir={out / 'run'}",
    ])  # fmt: skip
    trainer = Trainer(recipe, show_progress=False)
    rank = trainer.dist.rank
    if rank == 1:
        sample = trainer.sample

        def late(step: int):
            while step >= 1 and trainer.served_version < step:  # wait for the adapter of the step before
                time.sleep(0.01)
            return sample(step)

        trainer.sample = late
    trainer.train()
    (out / f"threads-rank{rank}.json").write_text(json.dumps(THREADS))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1], Path(sys.argv[2]))
