"""The GRPO training loop, readable in one sitting.

One step:

1. take the next ``tasks_per_step`` training tasks (a seeded shuffle; the position is checkpointed);
2. roll out ``group_size`` episodes per task with the current adapter (:mod:`agentrl.rollout`);
3. turn each group's rewards into advantages; dropped groups and infra failures carry none;
4. for ``num_iterations`` passes: recompute the trained tokens' logprobs in micro-batches, take the
   clipped GRPO loss against the rollout logprobs (:mod:`agentrl.grpo`), accumulate, clip, step;
5. log metrics and trajectories; checkpoint every ``save_every`` steps.

Before the first step and after the last, the held-out split is evaluated with the same rollout
loop, and ``summary.json`` records both.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from agentrl.chat_format import ChatFormat, load_chat_format
from agentrl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from agentrl.evaluate import eval_config, evaluate, paired_difference, per_task_success
from agentrl.generation import SamplingParams
from agentrl.grpo import LossNorm, group_advantages, grpo_loss, token_logprobs
from agentrl.metrics import MetricsLogger
from agentrl.policy import default_device, load_policy
from agentrl.recipe import Recipe, recipe_to_dict
from agentrl.registry import make
from agentrl.rollout import RolloutConfig, RolloutEngine
from agentrl.trajectory import Group


def _chat_format(recipe: Recipe, tokenizer: Any) -> ChatFormat:
    return load_chat_format(tokenizer, recipe.model.chat_template, enable_thinking=recipe.model.enable_thinking)


def _env_factory(recipe: Recipe, split: str):
    def make_env():
        return make(recipe.env.id, split=split, **recipe.env.kwargs)

    return make_env


def _task_ids(make_env) -> list[str]:
    env = make_env()
    try:
        ids = list(getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "task_ids", []))
    finally:
        env.close()
    if not ids:
        raise ValueError("the environment exposes no task_ids; training needs a fixed task list per split")
    return ids


def _pad(rows: list[list[float]], value: float, dtype: torch.dtype) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


class Trainer:
    """GRPO with a LoRA adapter, configured by a :class:`~agentrl.recipe.Recipe`."""

    def __init__(self, recipe: Recipe, *, show_progress: bool = True):
        self.recipe = r = recipe
        self.out = Path(r.output_dir)
        self.show_progress = show_progress
        random.seed(r.seed)
        torch.manual_seed(r.seed)
        self.device = default_device()
        lora = asdict(r.lora)
        self.model, self.tokenizer = load_policy(
            r.model.name,
            lora=lora,
            device=self.device,
            dtype=r.model.dtype,
            load_in_4bit=r.model.load_in_4bit,
            gradient_checkpointing=r.model.gradient_checkpointing,
        )
        self.chat = _chat_format(r, self.tokenizer)
        self.train_env, self.test_env = _env_factory(r, r.env.train_split), _env_factory(r, r.env.test_split)
        self.train_ids = _task_ids(self.train_env)
        sampling = SamplingParams(
            temperature=r.sampling.temperature,
            top_p=r.sampling.top_p,
            top_k=r.sampling.top_k,
            min_p=r.sampling.min_p,
            max_new_tokens=r.sampling.max_new_tokens,
        )
        self.rollout_config = RolloutConfig(
            group_size=r.grpo.group_size,
            max_turns=r.grpo.max_turns,
            max_total_tokens=r.grpo.max_total_tokens,
            sampling=sampling,
            zero_variance=r.grpo.zero_variance,
            max_resamples=r.grpo.max_resamples,
            seed=r.seed,
        )
        self.backend = self._make_backend()
        self.engine = RolloutEngine(self.backend, self.chat, self.train_env, self.rollout_config)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=r.grpo.learning_rate, weight_decay=r.grpo.weight_decay)
        from transformers import get_scheduler

        schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[r.grpo.lr_schedule]
        self.scheduler = get_scheduler(
            schedule,
            self.optimizer,
            num_warmup_steps=r.grpo.warmup_steps * r.grpo.num_iterations,
            num_training_steps=r.grpo.steps * r.grpo.num_iterations,
        )
        self.step = 0
        self.state: dict[str, Any] = {}

    # ----- setup -----------------------------------------------------------------------------
    def _make_backend(self):
        from agentrl.vllm_backend import VLLMBackend, vllm_available

        choice = self.recipe.backend
        if choice == "auto":
            choice = "vllm" if self.device == "cuda" and vllm_available() else "hf"
        if choice == "vllm":
            self._adapter_dir = self.out / "rollout_adapter"
            return VLLMBackend(
                self.recipe.model.name,
                enable_lora=True,
                max_lora_rank=self.recipe.lora.r,
                max_model_len=self.recipe.grpo.max_total_tokens + self.recipe.sampling.max_new_tokens,
            )
        from agentrl.generation import HFBackend

        return HFBackend(self.model, self.tokenizer)

    def _policy(self, *, base: bool = False):
        """Context for sampling with the adapter (or, ``base=True``, without it)."""
        self.model.eval()
        if self.backend.name == "vllm":
            if base:
                self.backend.set_adapter(None)
            else:
                self.model.save_pretrained(self._adapter_dir)
                self.backend.set_adapter(str(self._adapter_dir))
            return nullcontext()
        return self.model.disable_adapter() if base else nullcontext()

    def _task_order(self, epoch: int) -> list[str]:
        order = list(self.train_ids)
        random.Random(f"{self.recipe.seed}/epoch/{epoch}").shuffle(order)
        return order

    def _tasks_for_step(self, step: int) -> list[str]:
        k = self.recipe.grpo.tasks_per_step
        start = step * k
        out = []
        while len(out) < k:
            epoch, pos = divmod(start + len(out), len(self.train_ids))
            out.append(self._task_order(epoch)[pos])
        return out

    # ----- evaluation ------------------------------------------------------------------------
    def evaluate(self, *, base: bool, progress: Any = None) -> dict[str, Any]:
        e = self.recipe.eval
        test_ids = _task_ids(self.test_env)[: e.num_tasks]
        engine = RolloutEngine(
            self.backend,
            self.chat,
            self.test_env,
            eval_config(self.rollout_config, temperature=e.temperature, max_new_tokens=e.max_new_tokens),
        )
        label = "eval " + ("base" if base else "adapter")
        task = progress.add_task(label, total=len(test_ids), info="") if progress else None
        with self._policy(base=base):
            summary, trajs = evaluate(
                engine,
                test_ids,
                seed=self.recipe.seed,
                on_progress=(lambda n: progress.advance(task, n)) if progress else None,
            )
        if progress:
            progress.remove_task(task)
        name = "eval_before" if base else "eval_after"
        self._write_trajectories(self.out / f"{name}_trajectories.jsonl", trajs, mode="w")
        # Per-task results make the before/after comparison a paired one (same tasks, same seeds).
        self.state[f"{name}_tasks"] = per_task_success(trajs)
        return summary

    # ----- one step --------------------------------------------------------------------------
    def _advantages(self, groups: list[Group]) -> list[tuple[Any, float]]:
        """(trajectory, advantage) for every valid episode of the trainable groups."""
        out = []
        for group in groups:
            adv = group_advantages(group.rewards, self.recipe.grpo.advantage)
            out += list(zip(group.valid, adv.tolist(), strict=True))
        return out

    def _train_on(self, scored: list[tuple[Any, float]]) -> dict[str, float]:
        g = self.recipe.grpo
        seqs = [(t, a) for t, a in scored if sum(t.mask) and a != 0.0]
        if not seqs:
            return {"trained_sequences": 0.0}
        micro = [seqs[i : i + g.micro_batch_size] for i in range(0, len(seqs), g.micro_batch_size)]
        norm = LossNorm(
            sequences=len(seqs),
            tokens=sum(sum(t.mask) for t, _ in seqs),
            micro_batches=len(micro),
            max_completion_length=g.max_total_tokens,
        )
        temperature = self.recipe.sampling.temperature or 1.0
        self.model.train()
        totals: dict[str, float] = {}
        gaps: list[float] = []
        for iteration in range(g.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for mb in micro:
                ids = _pad([t.ids for t, _ in mb], self.tokenizer.pad_token_id or 0, torch.long).to(self.device)
                attn = _pad([[1] * len(t.ids) for t, _ in mb], 0, torch.long).to(self.device)
                mask = _pad([t.mask for t, _ in mb], 0, torch.long).to(self.device)
                old = _pad([[x or 0.0 for x in t.logprobs] for t, _ in mb], 0.0, torch.float32).to(self.device)
                adv = torch.tensor([a for _, a in mb], dtype=torch.float32, device=self.device)
                ref = None
                if g.beta:
                    with torch.no_grad(), self.model.disable_adapter():
                        ref = token_logprobs(self.model, ids, attn, mask, temperature=temperature)
                lp = token_logprobs(
                    self.model, ids, attn, mask, temperature=temperature, chunk_size=g.logprob_chunk_size
                )
                if iteration == 0:
                    m = mask.bool()
                    gaps.append(float((lp.detach() - old)[m].abs().sum()))
                loss, stats = grpo_loss(
                    lp, old, adv, mask, norm, loss_type=g.loss_type, epsilon_low=g.epsilon_low,
                    epsilon_high=g.epsilon_high, beta=g.beta, ref_logprobs=ref,
                )  # fmt: skip
                loss.backward()
                loss_sum += loss.item()
                n_tok = stats.pop("trained_tokens")
                totals["trained_tokens"] = totals.get("trained_tokens", 0.0) + n_tok
                for k, v in stats.items():  # token-weighted means over the step
                    totals[k] = totals.get(k, 0.0) + v * n_tok
            params = [p for p in self.model.parameters() if p.requires_grad]
            limit = g.max_grad_norm if g.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
            self.optimizer.step()
            self.scheduler.step()
        tokens = totals.pop("trained_tokens")
        out = {k: v / max(tokens, 1) for k, v in totals.items()}
        out.update(
            loss=loss_sum,
            grad_norm=grad_norm,
            learning_rate=self.scheduler.get_last_lr()[0],
            trained_sequences=float(len(seqs)),
            trained_tokens=tokens / g.num_iterations,
            logprob_gap=sum(gaps) / max(norm.tokens, 1),
        )
        return out

    def _write_trajectories(self, path: Path, trajs, *, mode: str = "a", step: int | None = None, adv=None) -> None:
        if not self.recipe.save_trajectories:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open(mode) as f:
            for t in trajs:
                row = {"step": step, **t.to_dict(), "text": self.tokenizer.decode(t.ids, skip_special_tokens=False)}
                if adv is not None:
                    row["advantage"] = adv.get(id(t))
                f.write(json.dumps(row) + "\n")

    # ----- the loop --------------------------------------------------------------------------
    def _resume(self, logger: MetricsLogger) -> None:
        ckpt = latest_checkpoint(self.out) if self.recipe.resume else None
        if ckpt is None:
            return
        self.state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
        self.step = int(self.state["step"])
        logger.truncate_after(self.step)

    def _save(self) -> None:
        save_checkpoint(self.out, self.step, self.model, self.optimizer, self.scheduler, self.state)

    def train(self) -> dict[str, Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        r, start = self.recipe, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.json").write_text(json.dumps(recipe_to_dict(r), indent=2))
        logger = MetricsLogger(self.out, report_to=r.report_to, config=recipe_to_dict(r))
        self._resume(logger)
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, TextColumn("{task.fields[info]}"), disable=not self.show_progress) as progress:
            if r.eval.before and "eval_before" not in self.state:
                self.state["eval_before"] = self.evaluate(base=True, progress=progress)
                progress.console.print(f"eval before: {_fmt(self.state['eval_before'])}")
            bar = progress.add_task("train", total=r.grpo.steps, completed=self.step, info="")
            while self.step < r.grpo.steps:
                metrics = self.train_step()
                progress.update(
                    bar, advance=1, info=f"reward {metrics['reward_mean']:.3f}  loss {metrics.get('loss', 0):.4f}"
                )
                logger.log(self.step, metrics)
                if (r.save_every and self.step % r.save_every == 0) or self.step == r.grpo.steps:
                    self._save()
            if r.eval.after:
                self.state["eval_after"] = self.evaluate(base=False, progress=progress)
                progress.console.print(f"eval after:  {_fmt(self.state['eval_after'])}")
        logger.close()
        adapter = self.out / "adapter"
        self.model.save_pretrained(adapter)
        self.tokenizer.save_pretrained(adapter)
        summary = {
            "eval_before": self.state.get("eval_before"),
            "eval_after": self.state.get("eval_after"),
            "steps": self.step,
            "wall_seconds": round(time.perf_counter() - start + self.state.get("wall_seconds", 0.0), 1),
            "adapter": str(adapter),
            "model": r.model.name,
            "env": r.env.id,
        }
        if "eval_before_tasks" in self.state and "eval_after_tasks" in self.state:
            summary["success_difference"] = paired_difference(
                self.state["eval_before_tasks"], self.state["eval_after_tasks"], seed=r.seed
            )
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        summary["reward_curve"] = self._plot()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _plot(self) -> str | None:
        """Draw OUTPUT_DIR/reward_curve.png; a plotting problem must not cost the user the run."""
        try:
            from agentrl.plots import reward_curve

            return str(reward_curve(self.out))
        except Exception as exc:  # the run's results are already on disk
            warnings.warn(f"could not draw the reward curve: {exc}", stacklevel=2)
            return None

    def train_step(self) -> dict[str, float]:
        """Roll out, update, and return the step's metrics (the rollout's health metrics included)."""
        t0 = time.perf_counter()
        task_ids = self._tasks_for_step(self.step)
        with self._policy():
            batch = self.engine.run(task_ids, seed=self.recipe.seed * 1_000_003 + self.step)
        t1 = time.perf_counter()
        scored = self._advantages(batch.trainable_groups)
        metrics = dict(batch.metrics)
        metrics.update(self._train_on(scored))
        metrics["rollout_seconds"] = t1 - t0
        metrics["train_seconds"] = time.perf_counter() - t1
        adv = {id(t): a for t, a in scored}
        self.step += 1
        self._write_trajectories(
            self.out / "trajectories.jsonl", [t for g in batch.groups for t in g.trajectories], step=self.step, adv=adv
        )
        return metrics


def _fmt(s: dict[str, Any]) -> str:
    return f"success {s['success_rate']:.1%}  mean reward {s['mean_reward']:.3f}  n={s['n']}"
