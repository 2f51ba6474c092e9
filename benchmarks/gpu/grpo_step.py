"""One GRPO optimizer step on fixed synthetic rollouts, three ways, each in its own process.

- ``agentrl-unsloth``: agentrl's ``Trainer`` with the recipe's default 4-bit base on CUDA, which is
  Unsloth when it imports (``model.keep_high_precision`` unset);
- ``agentrl-bnb``: the same trainer forced onto bitsandbytes NF4 (``model.keep_high_precision=[lm_head]``:
  an explicit keep list makes the loader skip Unsloth);
- ``trl``: TRL's ``GRPOTrainer`` loss on the same tokens, with the model a TRL user builds: transformers'
  ``BitsAndBytesConfig`` NF4, ``peft.prepare_model_for_kbit_training`` and ``get_peft_model``.

The agentrl variants take the step through ``Trainer.update``, the trainer's own code: micro-batches,
chunked logprobs, the clipped loss, gradient clipping and AdamW. The recipe below is also what the
memory preflight is asked about, so estimate and measurement describe the same run. The TRL variant
calls ``GRPOTrainer.compute_loss`` on the inputs dict its generation step would have produced, then
backward, clipping and its own optimizer's step.

Both sides see the same settings: loss_type dapo, epsilon 0.2 / 0.28, beta 0, one pass over the batch
(so pi_old is the detached current logprob and every ratio is 1), learning rate 1e-5, gradient
clipping at 1, LoRA r=16, alpha=32 on every projection, gradient checkpointing on. Each variant runs a
warm-up step, then a timed one; memory is the process's peak over loading and both steps.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from typing import Any

from synthetic import Batch

VARIANTS = ("agentrl-unsloth", "agentrl-bnb", "trl")
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=16, alpha=32, dropout=0.0)
LEARNING_RATE = 1e-5
EPSILON_LOW, EPSILON_HIGH = 0.2, 0.28
MICRO_BATCH = 8


def recipe_overrides(model_dir: str, variant: str, seq_len: int, output_dir: str) -> list[str]:
    """The agentrl recipe of one variant, as ``key=value`` overrides (the trainer's and the preflight's)."""
    out = [
        f"model.name={model_dir}",
        "model.load_in_4bit=true",
        "model.gradient_checkpointing=true",
        f"lora.r={LORA['r']}",
        f"lora.alpha={LORA['alpha']}",
        f"lora.dropout={LORA['dropout']}",
        f"lora.target_modules=[{','.join(TARGET_MODULES)}]",
        "lora.last_n_layers=0",
        "lora.target_parameters=[]",
        f"grpo.micro_batch_size={MICRO_BATCH}",
        f"grpo.max_total_tokens={seq_len}",
        "grpo.loss_type=dapo",
        f"grpo.epsilon_low={EPSILON_LOW}",
        f"grpo.epsilon_high={EPSILON_HIGH}",
        "grpo.beta=0.0",
        "grpo.num_iterations=1",
        f"grpo.learning_rate={LEARNING_RATE}",
        "grpo.lr_schedule=constant",
        "grpo.max_grad_norm=1.0",
        "grpo.rollout_correction=none",
        "sampling.temperature=1.0",
        "backend=hf",
        "env.id=agentrl.testing:LatinLettersEnv",
        "report_to=[]",
        "save_trajectories=false",
        f"output_dir={output_dir}",
    ]
    if variant == "agentrl-bnb":
        out.append("model.keep_high_precision=[lm_head]")
    return out


# ----- measuring ---------------------------------------------------------------------------------------------------
class Meter:
    """Peak memory and synchronised time: CUDA's allocator on a GPU, the resident set on a CPU."""

    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, device
        self.rss_base = _rss()
        self.cuda_peak = self.cuda_reserved = 0
        """CUDA peaks (allocated, reserved) of the spans before the last reset of CUDA's counters."""

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def reset(self) -> None:
        self.sync()
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()
        self.rss_base, self.cuda_peak, self.cuda_reserved = _rss(), 0, 0

    def peak(self) -> int:
        """Bytes since ``reset``: ``max_memory_allocated`` on CUDA, the rise of peak RSS on a CPU.

        The process's peak RSS cannot be reset, so on a CPU this is only meaningful for a ``reset``
        before the first large allocation (the model load): then it is the run's peak over the baseline.
        """
        self.sync()
        if self.device == "cuda":
            return max(self.cuda_peak, int(self.torch.cuda.max_memory_allocated()))
        return max(_peak_rss() - self.rss_base, 0)

    def reserved(self) -> int | None:
        """CUDA: the caching allocator's peak reservation since ``reset`` (allocated plus its slack)."""
        if self.device != "cuda":
            return None
        return max(self.cuda_reserved, int(self.torch.cuda.max_memory_reserved()))

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t

    def step_peak(self, fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
        """``fn()``, its seconds, and on CUDA the peak allocated while it ran (weights and optimizer included)."""
        if self.device == "cuda":
            self.cuda_peak, self.cuda_reserved = self.peak(), self.reserved() or 0
            self.torch.cuda.reset_peak_memory_stats()
        out, seconds = self.timed(fn)
        return out, seconds, int(self.torch.cuda.max_memory_allocated()) if self.device == "cuda" else None


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    from agentrl.train.memory import peak_rss  # VmHWM: ru_maxrss would carry a large parent's size

    return peak_rss()


def _finish(result: dict[str, Any], batch: Batch, meter: Meter, step_peak: int | None, seconds: float) -> dict:
    finite = math.isfinite(result["loss"])
    result.update(
        status="ok" if finite else "error",
        peak_bytes=meter.peak(),
        peak_reserved_bytes=meter.reserved(),
        step_peak_bytes=step_peak,
        step_seconds=seconds,
        tokens=batch.tokens,
        completion_tokens=batch.completion_tokens,
        tokens_per_s=batch.tokens / seconds if seconds > 0 else None,
    )
    if not finite:
        result["error"] = f"loss is not finite: {result['loss']}"
    return result


def _preimport() -> None:
    """Import what the trainer imports lazily while it loads, so that neither the load's seconds nor (on a
    CPU) its rise in resident memory counts library imports; the TRL variant imports its libraries first too."""
    import importlib

    for name in ("transformers", "peft", "bitsandbytes", "agentrl.train.trainer", "agentrl.chat.format",
                 "agentrl.rollout.hf_backend", "agentrl.testing"):  # fmt: skip
        try:
            importlib.import_module(name)
        except ImportError:  # reported where it is needed, by the loader
            pass
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (lazy module attributes)


# ----- agentrl ------------------------------------------------------------------------------------------------------
def agentrl_step(variant: str, model_dir: str, batch: Batch, seq_len: int, device: str) -> dict[str, Any]:
    if variant == "agentrl-unsloth":
        if device != "cuda":
            return {"status": "skipped", "reason": "skipped: CPU (Unsloth is CUDA-only)"}
        from agentrl.quantize import unsloth_problem

        problem = unsloth_problem()  # imports Unsloth before transformers and peft, as Unsloth asks
        if problem is not None:  # on a GPU the check expects Unsloth: its absence is a failure, not a skip
            return {"status": "error", "error": problem}
    _preimport()
    meter = Meter(device)
    from agentrl.rollout.trajectory import Trajectory
    from agentrl.train.recipe import load_recipe
    from agentrl.train.trainer import Trainer

    scored = [
        (
            Trajectory(
                task_id="synthetic",
                group_index=i,
                ids=p + c,
                mask=[0] * len(p) + [1] * len(c),
                logprobs=[None] * (len(p) + len(c)),  # the engine's logprobs; unused without the correction
                prompt_length=len(p),
            ),
            a,
        )
        for i, (p, c, a) in enumerate(zip(batch.prompts, batch.completions, batch.advantages, strict=True))
    ]
    with tempfile.TemporaryDirectory(prefix="agentrl-check-") as out:
        recipe = load_recipe(None, recipe_overrides(model_dir, variant, seq_len, out))
        meter.reset()
        trainer, load_s = meter.timed(lambda: Trainer(recipe, show_progress=False))
        result: dict[str, Any] = {"load_seconds": load_s, "base": trainer.base_info.to_json()}
        try:
            loader = trainer.base_info.choice.loader
            expected = "unsloth" if variant == "agentrl-unsloth" else "bitsandbytes"
            if loader != expected:
                return {**result, "status": "error", "error": f"loader is {loader}, expected {expected}"}
            warm, result["warmup_seconds"] = meter.timed(lambda: trainer.update([], scored))
            metrics, seconds, step_peak = meter.step_peak(lambda: trainer.update([], scored))
            result.update(loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"]))
            result["warmup_loss"] = float(warm["loss"])
            result["padded_width"] = max(len(p) + len(c) for p, c in zip(batch.prompts, batch.completions, strict=True))
            return _finish(result, batch, meter, step_peak, seconds)
        finally:
            trainer.close()


# ----- TRL ----------------------------------------------------------------------------------------------------------
def trl_inputs(batch: Batch, device: str) -> dict[str, Any]:
    """What TRL's generation step hands ``compute_loss``: left-padded prompts, right-padded completions."""
    import torch
    from synthetic import PAD

    width_p = max(map(len, batch.prompts))
    width_c = max(map(len, batch.completions))
    prompt_ids = torch.full((len(batch.prompts), width_p), PAD, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.full((len(batch.prompts), width_c), PAD, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, (p, c) in enumerate(zip(batch.prompts, batch.completions, strict=True)):
        prompt_ids[i, width_p - len(p) :] = torch.tensor(p)
        prompt_mask[i, width_p - len(p) :] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    out = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor(batch.advantages, dtype=torch.float32),
        "num_items_in_batch": completion_mask.sum().float(),
    }
    return {k: v.to(device) for k, v in out.items()}


def _zero_reward(prompts, completions, **kwargs) -> list[float]:
    return [0.0] * len(completions)


def trl_step(model_dir: str, batch: Batch, device: str) -> dict[str, Any]:
    meter = Meter(device)
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import GRPOConfig, GRPOTrainer

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32  # as agentrl's "auto": CPUs have no fast bf16 matmuls
    n = len(batch.prompts)

    def load() -> Any:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, quantization_config=quant, device_map={"": 0 if cuda else "cpu"}
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        lora = LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=TARGET_MODULES,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        args = GRPOConfig(
            output_dir=out,
            report_to="none",
            bf16=cuda,
            use_cpu=not cuda,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            per_device_train_batch_size=n,
            num_generations=n,
            gradient_accumulation_steps=1,
            max_completion_length=max(map(len, batch.completions)),
            temperature=1.0,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant",
            optim="adamw_torch",  # agentrl's optimizer: torch's AdamW
            weight_decay=0.0,
            max_grad_norm=1.0,
            loss_type="dapo",
            beta=0.0,
            epsilon=EPSILON_LOW,
            epsilon_high=EPSILON_HIGH,
            num_iterations=1,
            use_vllm=False,
            save_strategy="no",
            seed=0,
        )
        return GRPOTrainer(
            model=model,
            reward_funcs=_zero_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["w3"] * n}),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )

    with tempfile.TemporaryDirectory(prefix="trl-check-") as out:
        meter.reset()
        trainer, load_s = meter.timed(load)
        result: dict[str, Any] = {"load_seconds": load_s}
        optimizer = trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by train()'s loop, read by the dapo normaliser
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        inputs = trl_inputs(batch, "cuda" if cuda else "cpu")

        def step() -> tuple[float, float]:
            trainer.model.train()
            loss = trainer.compute_loss(trainer.model, inputs)
            trainer.accelerator.backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach()), float(grad_norm)

        (result["warmup_loss"], _), result["warmup_seconds"] = meter.timed(step)
        (loss, grad_norm), seconds, step_peak = meter.step_peak(step)
        result.update(loss=loss, grad_norm=grad_norm)
        result["padded_width"] = inputs["prompt_ids"].shape[1] + inputs["completion_ids"].shape[1]
        return _finish(result, batch, meter, step_peak, seconds)


def run(variant: str, model_dir: str, batch: Batch, seq_len: int, device: str) -> dict[str, Any]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "trl":
        return trl_step(model_dir, batch, device)
    return agentrl_step(variant, model_dir, batch, seq_len, device)


def memory_note(device: str) -> str:
    return (
        "torch.cuda.max_memory_allocated over loading and both steps"
        if device == "cuda"
        else "rise of peak resident memory over loading and both steps (CPU)"
    )
