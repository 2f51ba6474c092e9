"""One GRPO update on a fixed batch, in whatever processes run this file; imported by test_distributed.py.

Run by ``torchrun --nproc_per_node 2 tests/train/distributed_update.py OUT``, each rank builds the same
Trainer, the same starting adapter and the same scripted groups, calls ``Trainer.update`` (which
deals out the micro-batches and sums the gradients over ranks) and saves what it got to
``OUT/CASE/rankR.pt``. The test runs :func:`run_case` in its own single process for the reference.
"""

from __future__ import annotations

import random
import sys
import zlib
from pathlib import Path
from typing import Any

import torch

G = 4  # episodes per group
GROUPS = 5  # 20 sequences: with micro-batches of 3, 7 of them (the last short), 4 on rank 0 and 3 on rank 1

CASES: dict[str, list[str]] = {
    # The default loss, with the micro-batches split 4 / 3 between two ranks.
    "dapo": [],
    # bnpo normalises per micro-batch; two passes need pi_old, beta needs the reference.
    "bnpo_kl_two_passes": ["grpo.loss_type=bnpo", "grpo.beta=0.1", "grpo.num_iterations=2"],
    # One micro-batch holds the whole batch: rank 1 trains nothing and adds zero gradients.
    "grpo_gspo_one_rank_idle": [
        "grpo.loss_type=grpo",
        "grpo.importance_sampling_level=sequence",
        "grpo.micro_batch_size=32",
    ],
    # The engine correction and masked truncations: every normaliser and statistic of the update.
    "dr_grpo_corrected": [
        "grpo.loss_type=dr_grpo",
        "grpo.rollout_correction=token_truncate",
        "grpo.rollout_correction_cap=1.5",
        "grpo.mask_truncated=true",
        "grpo.max_grad_norm=0.1",
    ],
}


def recipe(case: str, out: Path) -> Any:
    from agentrl.train.recipe import load_recipe

    return load_recipe(
        None,
        [
            "model.name=tiny-qwen3-training",
            "env.id=agentrl.testing:LatinLettersEnv",
            "backend=hf",
            f"grpo.tasks_per_step={GROUPS}",
            f"grpo.group_size={G}",
            "grpo.micro_batch_size=3",
            "grpo.learning_rate=0.01",
            "grpo.max_grad_norm=0.5",  # small enough to clip: clipping must see the global norm
            "grpo.zero_variance=keep",
            "grpo.max_total_tokens=16",
            "lora.r=4",
            "lora.alpha=8",
            "report_to=[]",
            f"output_dir={out}",
            *CASES[case],
        ],
    )


def groups() -> list[Any]:
    """Scripted episodes: prompts and completions of different lengths, some cut by the token limit, the
    engine's logprobs off the trainer's, and one group whose rewards tie (zero advantages, still counted)."""
    from agentrl.rollout.trajectory import Group, Trajectory

    rng = random.Random(0)
    out = []
    for k in range(GROUPS):
        prompt = [rng.randrange(10, 150_000) for _ in range(rng.randint(3, 8))]
        trajs = []
        for i in range(G):
            completion = [rng.randrange(10, 150_000) for _ in range(rng.randint(1, 6))]
            cut = rng.random() < 0.3
            trajs.append(
                Trajectory(
                    task_id=f"task-{k}",
                    group_index=i,
                    ids=prompt + completion,
                    mask=[0] * len(prompt) + [1] * len(completion),
                    logprobs=[None] * len(prompt) + [-12.0 + rng.uniform(-0.5, 0.5) for _ in completion],
                    prompt_length=len(prompt),
                    reward=0.5 if k == GROUPS - 1 else rng.random(),
                    truncated=cut,
                    truncated_by="max_new_tokens" if cut else None,
                )
            )
        out.append(Group(f"task-{k}", trajs))
    return out


def run_case(case: str, out: Path) -> dict[str, Any]:
    """The update's metrics, per-pass losses and grad norms, and the adapter after it."""
    from agentrl.train.trainer import Trainer

    trainer = Trainer(recipe(case, out), show_progress=False)
    try:
        with torch.no_grad():  # a non-zero starting adapter, the same on every rank
            for name, p in trainer.model.named_parameters():
                if p.requires_grad:
                    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        metrics = trainer.update(groups())
        empty = trainer.update([])  # every group dropped: the step counts on every rank, and nothing hangs
    finally:
        trainer.close()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return {"metrics": metrics, "empty": empty, "last_update": trainer.last_update, "weights": weights,
            "lr": trainer.scheduler.get_last_lr()[0], "max_grad_norm": trainer.recipe.grpo.max_grad_norm}  # fmt: skip


def main(out: Path) -> None:
    from agentrl.train.distributed import init_distributed

    dist = init_distributed()
    for case in CASES:
        result = run_case(case, out / case)
        torch.save(result | {"world": dist.world}, out / case / f"rank{dist.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
