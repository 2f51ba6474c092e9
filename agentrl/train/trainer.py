"""The GRPO training loop, readable in one sitting.

One step:

1. take the next ``tasks_per_step`` training tasks (a seeded shuffle, chosen by step number; on a mix of
   environments, each environment's weighted share: :mod:`agentrl.train.environments`);
2. roll out ``group_size`` episodes per task with the current adapter (:mod:`agentrl.rollout.engine`);
3. turn each group's rewards into advantages (:mod:`agentrl.train.advantages`); dropped groups and
   infrastructure failures carry none, and episodes with a zero advantage still count in the loss's
   normalisers and in its KL term, as in TRL;
4. before the first optimizer step, without gradients: the reference logprobs (adapter off) when
   ``beta > 0``, and pi_old, the trainer's own logprobs of the sampled tokens, when there is more
   than one pass over the batch or the rollout correction is on (TRL's rule; otherwise pi_old is the
   detached current logprob). The engine's logprobs only weigh tokens by ``pi_old / pi_engine``
   (:func:`~agentrl.train.loss.rollout_correction`, on by default when the engine is not the trainer's
   own forward pass);
5. ``num_iterations`` optimizer steps over the batch in micro-batches: the clipped loss
   (:mod:`agentrl.train.loss`), accumulated gradients, clipping, AdamW;
6. log metrics and trajectories; checkpoint every ``save_every`` steps.

Before the first step and after the last, the held-out split is evaluated with the same rollout loop;
``summary.json`` records both and their paired difference. The output directory's bookkeeping
(resume, overwrite, cutting back a killed run, wall time) is :mod:`agentrl.train.run_dir`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import threading
import time
import warnings
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from agentrl import faults
from agentrl.chat.format import load_chat_format
from agentrl.envs import mix
from agentrl.envs.tasks import split_task_ids
from agentrl.errors import RecipeError
from agentrl.eval.loop import eval_config, evaluate, per_task_success
from agentrl.models import default_device, set_training
from agentrl.rollout import ray_workers
from agentrl.rollout.backends import auto_backend, make_backend
from agentrl.rollout.engine import RolloutBatch, RolloutConfig, RolloutEngine
from agentrl.rollout.generation import SamplingParams
from agentrl.rollout.trajectory import Group, Trajectory
from agentrl.tools.mcp_tools import close_servers
from agentrl.train import backend_settings
from agentrl.train.advantages import group_advantages
from agentrl.train.async_rollouts import RolloutPipeline, staleness_metrics
from agentrl.train.batches import MicroBatch, micro_batches
from agentrl.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from agentrl.train.curve import try_reward_curve
from agentrl.train.distributed import NullLogger, QuietClock, claim_output, init_distributed
from agentrl.train.environments import TaskSchedule, env_factory, weights
from agentrl.train.guards import RunGuard, append_lines
from agentrl.train.logprobs import token_logprobs
from agentrl.train.loss import LossNorm, grpo_loss, rollout_correction
from agentrl.train.memory import check_fits
from agentrl.train.metrics import MetricsLogger, env_metrics, progress_info
from agentrl.train.model import load_lora_model, resolve_dtype
from agentrl.train.recipe import Recipe, recipe_hash
from agentrl.train.run_dir import WallClock, cut_back, read_json, write_json
from agentrl.train.summary import eval_line, run_summary

log = logging.getLogger("agentrl")


class Trainer:
    """GRPO with a LoRA adapter, configured by a :class:`~agentrl.train.recipe.Recipe`."""

    def __init__(self, recipe: Recipe, *, show_progress: bool = True):
        self._started = time.time()
        self.recipe = r = recipe
        self.out = Path(r.output_dir)
        self.dist = init_distributed()  # under accelerate launch or torchrun: a process per device, rank 0 writes
        claim_output(self.dist, self.out, r)  # refuse another run's directory before spending time on the model
        # The clock starts now: a session killed while loading the model (minutes, for vLLM) still counts.
        self.clock = (WallClock if self.dist.is_main else QuietClock)(self.out / "wall.json", started=self._started)
        self.clock.start()
        try:
            self._setup(show_progress and self.dist.is_main)  # one progress display: rank 0's
        except BaseException:
            self.clock.stop()
            raise

    def _setup(self, show_progress: bool) -> None:
        r = self.recipe
        self.show_progress = show_progress
        random.seed(r.seed)
        torch.manual_seed(r.seed)
        self.device = default_device()
        if r.preflight:  # minutes before the model would load and then run out of memory
            check_fits(r, self.device)
        self.model, self.tokenizer, self.base_info = load_lora_model(
            r.model.name,
            lora=asdict(r.lora),
            device=self.device,
            dtype=r.model.dtype,
            load_in_4bit=r.model.load_in_4bit,
            keep_high_precision=r.model.keep_high_precision,
            gradient_checkpointing=r.model.gradient_checkpointing,
            loader=r.model.loader,
            seed=r.seed,
        )
        # Which loader, and why, goes to the log, and to base.json, which `agentrl eval` reads to
        # evaluate the adapter on the base precision it was trained on.
        log.info(self.base_info.describe())
        if show_progress:
            from rich.console import Console

            Console(stderr=True).print(self.base_info.describe(), markup=False, highlight=False)
        self.dist.from_main(write_json, self.out / "base.json", self.base_info.to_json())
        self.chat = load_chat_format(self.tokenizer, r.model.chat_template, enable_thinking=r.model.enable_thinking)
        self.train_env, self.test_env = self._env_factory(r.env.train_split), self._env_factory(r.env.test_split)
        self.train_ids = split_task_ids(self.train_env)
        self.mixed = bool(r.env.mix)  # a mix of environments: trajectories are labelled and reported by environment
        self.schedule = TaskSchedule(self.train_ids, r.grpo.tasks_per_step, r.seed, weights(r.env))
        s = r.sampling
        self.rollout_config = RolloutConfig(
            group_size=r.grpo.group_size,
            max_turns=r.grpo.max_turns,
            max_total_tokens=r.grpo.max_total_tokens,
            sampling=SamplingParams(s.temperature, s.top_p, s.top_k, s.min_p, s.max_new_tokens, stop=list(s.stop)),
            zero_variance=r.grpo.zero_variance,
            max_resamples=r.grpo.max_resamples,
            step_timeout=r.limits.step_timeout,
            seed=r.seed,
            endpoint_host=r.env.endpoint_host,
        )
        kind = r.backend
        if kind == "auto":  # vLLM serves rollouts on CUDA; on a CPU the trainer's own model samples
            kind = auto_backend(self.device, processes=self.dist.world, server_urls=r.server_urls)
        self.backend = make_backend(
            kind, r.model.name, model=self.model, tokenizer=self.tokenizer, enable_lora=True,
            max_lora_rank=r.lora.r, max_model_len=r.grpo.max_total_tokens + s.max_new_tokens, seed=r.seed,
            **backend_settings.settings(kind, r, self.device, self.base_info.choice.load_in_4bit),
        )  # fmt: skip
        self.correction = r.grpo.rollout_correction
        if self.correction == "auto":  # the hf backend samples with this very model: nothing to correct
            self.correction = "none" if self.backend.name == "hf" else "token_truncate"
        # What "auto" became on this machine: a run is only resumed where it resolves the same way.
        self.resolved = {
            "backend": self.backend.name,
            "rollout_correction": self.correction,
            "load_in_4bit": self.base_info.choice.load_in_4bit,
            "loader": self.base_info.choice.loader,
            "dtype": str(resolve_dtype(r.model.dtype, self.device)).removeprefix("torch."),
        }
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
        self.served_version = 0
        """The adapter version (optimizer steps) the rollout backend samples with."""
        self._adapter_lock = threading.Lock()
        self.pipeline: RolloutPipeline | None = None
        """Asynchronous rollouts (grpo.max_off_policy_steps > 0) while train() runs."""
        self.guard = RunGuard(r.limits.max_infra_failure_rate, r.limits.max_skipped_steps)
        self._unwritten: list[str] = []
        self._last_infra_error: str | None = None
        """Trajectory lines a failed write (a full disk) left behind; written with the next step's."""
        self.last_update: dict[str, list[float]] = {}
        """Per optimizer step of the last update: ``loss`` and ``grad_norm`` (for tests and debugging)."""
        self.dist.broadcast_trainable(self.model)  # every rank starts from rank 0's adapter

    # ----- setup -----------------------------------------------------------------------------
    def _env_factory(self, split: str):
        """Environments of ``split`` (one, or a mix), built here or, with ``workers.kind: ray``, in Ray actors."""
        return env_factory(self.recipe.env, split, self.recipe.workers)

    def _sync_adapter(self, *, every_rank: bool = True) -> None:
        """Serve the current adapter: a vLLM engine loads it from files, under a new version each step.

        With several ranks on shared servers, rank 0 (whose adapter every rank holds) saves and loads it
        once, and the others name the version it was loaded under. ``every_rank=False`` is for code that
        runs on rank 0 alone (evaluation), where the others are not there to hear the name."""
        with self._adapter_lock:
            self.served_version = self.step
            if self.backend.name == "hf":
                return  # the hf backend samples with this very model
            path = self.out / "rollout_adapter" / f"step-{self.step:06d}"

            def publish() -> str | None:
                self.model.save_pretrained(path)
                self.backend.load_adapter(str(path), version=f"step-{self.step}")
                keep = backend_settings.adapter_versions_in_use(self.recipe)
                for old in sorted((self.out / "rollout_adapter").glob("step-*"))[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)  # no engine samples with them any more
                return getattr(self.backend, "adapter_name", None)

            name = self.dist.from_main(publish) if every_rank else publish()
            if not self.dist.is_main:
                self.backend.adopt_adapter(name)

    def _tasks_for_step(self, step: int) -> list[str]:
        """The step's tasks: a function of the step and the seed (:class:`~agentrl.train.environments.TaskSchedule`)."""
        return self.schedule.tasks(step)

    # ----- evaluation ------------------------------------------------------------------------
    def evaluate(self, *, base: bool, progress: Any = None, name: str | None = None) -> dict[str, Any]:
        """Held-out success of the base model (``base``) or the adapter; saved as ``name``.json (by default
        eval_before or eval_after)."""
        e = self.recipe.eval
        test_ids = split_task_ids(self.test_env)[: e.num_tasks]
        config = eval_config(self.rollout_config, temperature=e.temperature, max_new_tokens=e.max_new_tokens)
        engine = RolloutEngine(self.backend, self.chat, self.test_env, config)
        name = name or ("eval_before" if base else "eval_after")
        label = "eval " + ("base" if base else name.removeprefix("eval_").replace("after", "adapter"))
        task = progress.add_task(label, total=len(test_ids), info="") if progress else None
        if not base:
            self._sync_adapter(every_rank=False)  # evaluation runs on rank 0 alone
        with self.backend.use_adapter(not base):
            summary, trajs = evaluate(
                engine,
                test_ids,
                seed=self.recipe.seed,
                on_progress=(lambda n: progress.advance(task, n)) if progress else None,
                on_chunk=mix.label if self.mixed else None,  # before the summary, which splits a mix by env
            )
        if progress:
            progress.remove_task(task)
        self._write_trajectories(self.out / f"{name}_trajectories.jsonl", trajs, mode="w")
        # Per-task results make the before/after comparison a paired one (same tasks, same seeds).
        result = {"summary": summary, "tasks": per_task_success(trajs), "step": self.step}
        write_json(self.out / f"{name}.json", result)
        return result

    # ----- one update ------------------------------------------------------------------------
    def _scored(self, groups: list[Group]) -> list[tuple[Trajectory, float]]:
        """Every valid episode of the trainable groups, with its advantage (zero ones included); an agent-harness
        episode whose history was rewritten trains each of its segments (``Trajectory.samples``) with it."""
        scored: list[tuple[Trajectory, float]] = []
        for group in (g for g in groups if g.dropped is None):
            adv = group_advantages(group.rewards, self.recipe.grpo.advantage).tolist()
            scored += [(s, a) for t, a in zip(group.valid, adv, strict=True) for s in t.samples()]
        return scored

    def _micro_batches(self, scored: list[tuple[Trajectory, float]]) -> list[MicroBatch]:
        g = self.recipe.grpo
        return micro_batches(scored, g.micro_batch_size, mask_truncated=g.mask_truncated,
                             pad_id=self.tokenizer.pad_token_id or 0, device=self.device)  # fmt: skip

    def _logprobs(self, mb: MicroBatch) -> torch.Tensor:
        temperature = self.recipe.sampling.temperature or 1.0
        chunk = self.recipe.grpo.logprob_chunk_size
        return token_logprobs(self.model, mb.ids, mb.attention, mb.mask, temperature=temperature, chunk_size=chunk)

    def update(self, groups: list[Group], scored: list[tuple[Trajectory, float]] | None = None) -> dict[str, float]:
        """One GRPO update on a rollout batch: advantages (``scored``, when the caller has them already),
        then ``num_iterations`` optimizer steps."""
        g = self.recipe.grpo
        scored = self._scored(groups) if scored is None else scored
        micro = self._micro_batches(self.dist.shard(scored, g.micro_batch_size))  # this rank's share of the batch
        if not scored:  # every group dropped: no update, but the schedule still counts the step
            with warnings.catch_warnings():  # torch warns when this happens before the first update
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                for _ in range(g.num_iterations):
                    self.scheduler.step()
            return {"trained_sequences": 0.0, "updates": 0.0, "skipped_updates": 0.0}
        norm = LossNorm(
            sequences=sum(len(mb.advantages) for mb in micro),
            tokens=int(sum(int(mb.mask.sum()) for mb in micro)),
            micro_batches=len(micro),
            max_completion_length=g.max_total_tokens,
        )
        norm = self.dist.total(norm)  # the step's, over every rank: the ranks' losses add up to the step's loss
        set_training(self.model, True)  # through Unsloth's own switch where there is one
        # Before any optimizer step, without gradients: pi_old, the reference, and the correction weights.
        need_old = g.num_iterations > 1 or self.correction != "none"
        gap = [0.0, 0.0]  # sum of |trainer - engine| over sampled tokens, and their count
        correction_stats: dict[str, float] = {}  # token-weighted sums, once per batch
        ratio_max = 0.0
        with torch.no_grad():
            for mb in micro:
                if need_old:
                    mb.old = self._logprobs(mb)
                if g.beta:
                    with self.model.disable_adapter():
                        mb.ref = self._logprobs(mb)
                if mb.old is not None:
                    mb.correction, stats = rollout_correction(
                        mb.old, mb.engine_logprobs, mb.mask, self.correction, g.rollout_correction_cap
                    )
                    if stats:
                        ratio_max = max(ratio_max, stats.pop("rollout_is_ratio_max"))
                    _accumulate(correction_stats, stats, float(mb.mask.sum()))
                    _gap(gap, mb.old, mb.engine_logprobs, mb.mask.bool())

        self.last_update = {"loss": [], "grad_norm": []}
        loss_stats: dict[str, float] = {}  # token-weighted sums over every pass
        params = [p for p in self.model.parameters() if p.requires_grad]
        skipped = 0
        for iteration in range(g.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for mb in micro:
                lp = self._logprobs(mb)
                if iteration == 0 and mb.old is None:
                    _gap(gap, lp.detach(), mb.engine_logprobs, mb.mask.bool())
                loss, stats = grpo_loss(
                    lp, lp.detach() if mb.old is None else mb.old, mb.advantages, mb.mask, norm,
                    loss_type=g.loss_type, epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high, beta=g.beta,
                    ref_logprobs=mb.ref, importance_sampling_level=g.importance_sampling_level,
                    correction=mb.correction,
                )  # fmt: skip
                injected = faults.fire("loss", loss=loss)
                loss = loss if injected is None else injected
                if loss.requires_grad:  # not when every episode of the micro-batch is a masked truncation
                    loss.backward()
                loss_sum += loss.item()
                tokens = stats.pop("trained_tokens")
                kl = stats.pop("kl", None)
                # Sequence-level clip fractions are fractions of sequences; weigh them as such.
                per_sequence = g.importance_sampling_level == "sequence"
                _accumulate(
                    loss_stats, stats, len(mb.advantages) * norm.tokens / norm.sequences if per_sequence else tokens
                )
                if kl is not None:
                    _accumulate(loss_stats, {"kl": kl}, tokens)
            faults.fire("gradients", params=params)
            self.dist.reduce_gradients(params)  # summed over ranks before clipping, which sees the global norm
            limit = g.max_grad_norm if g.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
            learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step uses
            total_loss = self.dist.sum(loss_sum)
            # Both are global (summed over ranks), so every rank makes the same choice. A skipped step leaves
            # the weights and AdamW's moments untouched; the schedule still counts it, as a resumed run would.
            if math.isfinite(grad_norm) and math.isfinite(total_loss):
                self.optimizer.step()
            else:
                skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                warnings.warn(
                    f"step {self.step + 1}: the {'loss' if not math.isfinite(total_loss) else 'gradient norm'} is "
                    f"not finite ({total_loss if not math.isfinite(total_loss) else grad_norm}); this update was "
                    "skipped and the weights are unchanged",
                    RuntimeWarning,
                    stacklevel=2,
                )
            with warnings.catch_warnings():  # torch warns when the first update was skipped
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                self.scheduler.step()
            self.last_update["loss"].append(total_loss)
            self.last_update["grad_norm"].append(grad_norm)
        # Free the gradients until the next update: written among the activations' blocks, they would keep
        # whole allocator segments from empty_cache while a sleeping vLLM engine wakes up beside the trainer.
        self.optimizer.zero_grad(set_to_none=True)
        ratio_max = self.dist.reduce_stats(loss_stats, correction_stats, gap, ratio_max)  # every rank's, in place
        passes = g.num_iterations
        out = {k: v / max(norm.tokens * passes, 1) for k, v in loss_stats.items()}
        out.update({k: v / max(norm.tokens, 1) for k, v in correction_stats.items()})
        if correction_stats:
            out["rollout_is_ratio_max"] = ratio_max
        out.update(
            loss=sum(self.last_update["loss"]) / passes,
            grad_norm=self.last_update["grad_norm"][-1],
            learning_rate=learning_rate,
            trained_sequences=float(norm.sequences),
            trained_tokens=float(norm.tokens),
            logprob_gap=gap[0] / max(gap[1], 1.0),
            updates=float(passes),
            skipped_updates=float(skipped),
        )
        return out

    def _write_trajectories(self, path: Path, trajs, *, mode: str = "a", step: int | None = None, adv=None) -> None:
        """Write the rows, or keep them for the next call when the write fails (a full disk): nothing is lost
        unless the run ends before the disk has room again."""
        if not self.recipe.save_trajectories or not self.dist.is_main:  # rank 0 holds every rank's groups
            return
        lines = []
        for t in trajs:
            row = {"step": step, **t.to_dict(), "text": self.tokenizer.decode(t.ids, skip_special_tokens=False)}
            if adv is not None:
                row["advantage"] = adv.get(id(t))
            lines.append(json.dumps(row))
        if mode == "a":  # the training log: earlier lines that could not be written go first
            lines, self._unwritten = self._unwritten + lines, []
        path.parent.mkdir(parents=True, exist_ok=True)
        written = self.guard.attempt(
            f"{len(lines)} trajectories to {path.name}", lambda: append_lines(path, lines, mode=mode)
        )
        if not written and mode == "a":
            self._unwritten = lines

    def sample(self, step: int) -> tuple[RolloutBatch, int]:
        """This rank's share of the rollout batch of ``step``, sampled with the adapter served now, and that
        adapter's version, which each trajectory records. :meth:`train_step` gathers the ranks' shares.

        The asynchronous pipeline calls this from its thread while the trainer updates and serves new
        versions; the lock makes the version read and the adapter chosen one and the same. Nothing here is a
        collective: those run on the main thread only (see :mod:`agentrl.train.distributed`).
        """
        with ExitStack() as scope:
            with self._adapter_lock:
                version = self.served_version
                scope.enter_context(self.backend.use_adapter(True))
            tasks = self.dist.my_tasks(self._tasks_for_step(step))
            batch = self.engine.run(tasks, seed=self.recipe.seed * 1_000_003 + step)
        for t in (t for g in batch.groups for t in g.trajectories):
            t.stamp(version)
            if self.mixed:
                t.env = mix.env_name(t.task_id)
        return batch, version

    def train_step(self, pipeline: RolloutPipeline | None = None) -> dict[str, float]:
        """Roll out (or take the batch ``pipeline`` sampled ahead), update, and return the step's metrics."""
        t0 = time.perf_counter()
        if pipeline is None:
            self._sync_adapter()
            batch, _ = self.sample(self.step)
        else:
            produced = pipeline.get(self.step)
            batch = produced.batch
        batch = self.dist.gather_batch(batch, self.recipe.grpo.tasks_per_step)  # every rank's groups, in task order
        t1 = time.perf_counter()
        scored = self._scored(batch.groups)
        if hasattr(self.backend, "sleep"):  # a colocated vLLM engine frees its GPU memory for the update
            self.backend.sleep()  # and wakes up on its next generate()
        metrics = dict(batch.metrics) | env_metrics(batch.groups)  # the whole step's, per env on a mix
        metrics.update(self.update(batch.groups, scored))
        metrics["rollout_seconds"] = t1 - t0
        metrics["train_seconds"] = time.perf_counter() - t1
        metrics.update(staleness_metrics(batch, self.step, None if pipeline is None else produced))
        self.step += 1
        self._last_infra_error = next(
            (t.infra_error for g in batch.groups for t in g.trajectories if t.infra_error), None
        )
        if pipeline is not None:  # serve the new adapter, and let the pipeline sample with it
            self._sync_adapter()
            pipeline.trained(self.step)
        adv = {id(t): a for t, a in scored}
        trajs = [t for g in batch.groups for t in g.trajectories]
        self._write_trajectories(self.out / "trajectories.jsonl", trajs, step=self.step, adv=adv)
        metrics["unwritten_trajectories"] = float(len(self._unwritten))
        metrics["write_failures"] = float(self.guard.write_failures)
        return metrics

    # ----- the loop --------------------------------------------------------------------------
    def _resume(self) -> list[dict[str, Any]]:
        """Continue from the latest checkpoint (if any); cut back what a killed run wrote after it."""
        ckpt = latest_checkpoint(self.out)
        if ckpt is not None:
            state = load_checkpoint(
                ckpt, self.model, self.optimizer, self.scheduler, recipe_hash=recipe_hash(self.recipe)
            )
            changed = [f"{k}: {v!r} -> {self.resolved[k]!r}" for k, v in state.get("resolved", {}).items()
                       if self.resolved.get(k) != v]  # fmt: skip
            if changed:
                raise RecipeError(
                    f"{ckpt} was trained with other settings than 'auto' gives on this machine ({changed[0]}); "
                    "set them explicitly in the recipe to continue, or pass overwrite=true"
                )
            self.step = int(state["step"])
        return cut_back(self.out, self.step) if self.dist.is_main else []

    def train(self, *, grpo: bool = True) -> dict[str, Any]:
        """Run the recipe: eval before, the SFT warm start (if any) and its eval, GRPO, eval after.

        ``grpo=False`` stops after the warm start (``agentrl sft``); the same recipe and output_dir later
        continue with GRPO from the SFT adapter without repeating anything.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        r = self.recipe
        history = self._resume()
        main, on_main = self.dist.is_main, self.dist.from_main  # rank 0 reads, evaluates and writes; the rest wait
        logger = (MetricsLogger if main else NullLogger)(self.out, report_to=r.report_to, config=asdict(r),
                                                         history=history)  # fmt: skip
        clock = self.clock
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        try:
            with Progress(*columns, TextColumn("{task.fields[info]}"), disable=not self.show_progress,
                          console=self.dist.console()) as progress:  # fmt: skip
                before = on_main(read_json, self.out / "eval_before.json")
                if r.eval.before and before is None:
                    before = on_main(self.evaluate, base=True, progress=progress)
                if before:
                    progress.console.print(f"eval before: {eval_line(before['summary'])}")
                sft = self._warm_start(progress)
                after_sft = on_main(read_json, self.out / "eval_sft.json")
                if sft and r.eval.after_sft and after_sft is None:
                    after_sft = on_main(self.evaluate, base=False, progress=progress, name="eval_sft")
                if after_sft:
                    progress.console.print(f"eval sft:    {eval_line(after_sft['summary'])}")
                steps = r.grpo.steps if grpo else self.step
                bar = progress.add_task("train", total=steps, completed=self.step, info="", visible=grpo)
                ahead = r.grpo.max_off_policy_steps
                if ahead and self.step < steps:  # asynchronous: sampling runs ahead on its own thread
                    self._sync_adapter()
                    self.pipeline = RolloutPipeline(self.sample, start=self.step, stop=steps, max_off_policy=ahead)
                while self.step < steps:
                    metrics = self.train_step(self.pipeline)
                    progress.update(bar, advance=1, info=progress_info(metrics))
                    logger.log(self.step, metrics)
                    if (r.save_every and self.step % r.save_every == 0) or self.step == steps:
                        on_main(self._checkpoint)
                    self.guard.check(self.step, metrics, self._last_infra_error)
                after = on_main(read_json, self.out / "eval_after.json")
                if after is not None and after.get("step") != self.step:
                    after = None  # an evaluation of an earlier adapter
                if r.eval.after and after is None and grpo:
                    after = on_main(self.evaluate, base=False, progress=progress)
                if after:
                    progress.console.print(f"eval after:  {eval_line(after['summary'])}")
            adapter = self.out / "adapter"
            if main:
                self.model.save_pretrained(adapter)
                self.tokenizer.save_pretrained(adapter)
        finally:
            self.close()
            logger.close()
        evals = {"eval_before": before, "eval_sft": after_sft, "eval_after": after}
        summary = run_summary(r, evals, sft=sft, steps=self.step, wall_seconds=round(clock.seconds, 1),
                              adapter=str(adapter), base=self.base_info.describe())  # fmt: skip
        if not main:
            return summary
        write_json(self.out / "summary.json", summary)
        summary["reward_curve"] = try_reward_curve(self.out) if self.step else None
        write_json(self.out / "summary.json", summary)
        return summary

    def _checkpoint(self) -> None:
        """Save a checkpoint; one that cannot be written (a full disk) is warned about and the previous one kept."""
        extra = {"recipe_hash": recipe_hash(self.recipe), "resolved": self.resolved}
        self.guard.attempt(
            f"the checkpoint of step {self.step}",
            lambda: save_checkpoint(self.out, self.step, self.model, self.optimizer, self.scheduler, extra),
        )

    def _warm_start(self, progress: Any) -> dict[str, Any] | None:
        """The SFT stage (:mod:`agentrl.train.sft`), before the first GRPO step; None without one."""
        from agentrl.train.sft import warm_start

        return warm_start(self.recipe, self.model, self.tokenizer, self.chat, self.train_env, self.out,
                          step=self.step, progress=progress)  # fmt: skip

    def close(self) -> None:
        """Stop the wall clock's heartbeat and the rollout pipeline (``train`` does this itself when it ends)."""
        if self.pipeline is not None:
            self.pipeline.close()
        ray_workers.close()
        close_servers()  # the run's MCP servers (env.mcp, from_mcp tools) end with it
        self.clock.stop()


def _accumulate(totals: dict[str, float], stats: dict[str, float], weight: float) -> None:
    for k, v in stats.items():
        totals[k] = totals.get(k, 0.0) + v * weight


def _gap(acc: list[float], trainer: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor) -> None:
    """Accumulate |trainer - engine| over sampled tokens whose engine logprob is known."""
    known = mask & ~torch.isnan(engine)
    acc[0] += float((trainer - engine)[known].abs().sum())
    acc[1] += float(known.sum())
