"""Recipes: everything a training run needs, as nested dataclasses loaded from YAML.

``agentrl train recipes/x.yaml grpo.learning_rate=1e-4 model.name=smollm2-135m`` reads the YAML,
applies the ``key=value`` overrides (values parsed as YAML scalars), and checks every key and type
against these dataclasses. A mistake fails with one line that names the key. The docstring under
each field is the documentation, and ``agentrl train --help`` prints it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.errors import RecipeError, one_line
from agentrl.redact import redact
from agentrl.train.recipe_help import describe as describe_section
from agentrl.train.recipe_help import field_docs
from agentrl.train.recipe_values import (
    check_mcp,
    check_mix,
    check_type,
    key_text,
    refuse_beside_mix,
    show,
    unbuildable_value,
)

__all__ = ["Recipe", "describe", "field_docs", "load_recipe", "recipe_hash"]


@dataclass
class ModelSection:
    name: str = "smollm2-135m"
    """Hub id, local directory, or an offline alias: smollm2-135m, tiny-qwen3, tiny-qwen3-training."""
    dtype: str = "auto"
    """Weights dtype for training: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."""
    load_in_4bit: bool | None = None
    """4-bit NF4 base: on CUDA through Unsloth, else bitsandbytes; on CPU through bitsandbytes (pip install
    'agentrl[4bit]'). None means yes on CUDA, no on CPU."""
    loader: str = "auto"
    """Who loads the base: auto, unsloth, bitsandbytes or transformers. auto: Unsloth for a 4-bit base on CUDA
    when it imports (bitsandbytes for MoE models or without it), transformers for full precision, bitsandbytes
    for 4-bit on a CPU. unsloth also runs on a CPU, through Unsloth's CPU fallback; transformers is full
    precision only, bitsandbytes 4-bit only. Printed and kept in base.json, which agentrl eval reads."""
    keep_high_precision: list[str] | None = None
    """With a 4-bit base: module and parameter names (whole dotted components, e.g. self_attn, mlp.gate) kept in
    16-bit. None: [lm_head] for dense models; for MoE models attention, the router, shared experts, embeddings,
    norms and lm_head, so that the fused expert weights alone go to 4-bit."""
    chat_template: str = "auto"
    """auto (the tokenizer's), training (TRL's Qwen3 training template), or a .jinja path."""
    enable_thinking: bool | None = None
    """Passed to templates that support it (Qwen3); None keeps the template's default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""


@dataclass
class MixEntry:
    id: str = ""
    """Registered environment id (see `agentrl envs`) or module:Class."""
    weight: float = 1.0
    """Share of each step's tasks drawn from this environment, relative to the other entries' weights."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for agentrl.make of this environment alone, shared by both splits."""
    name: str = ""
    """How metrics, evaluations and trajectories name this environment (no '/'); the id when left empty."""
    mcp: list[dict[str, Any]] = field(default_factory=list)
    """MCP servers whose tools this environment gets besides its own; see env.mcp."""


@dataclass
class EnvSection:
    id: str = "arithmetic"
    """Registered environment id (see `agentrl envs`) or module:Class."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for agentrl.make, shared by both splits (e.g. digits: 3). A key under a secret name
    (api_key, token, ...) reaches the environment but is recorded as <redacted> (agentrl.redact)."""
    train_split: str = "train"
    """Split whose tasks are trained on."""
    test_split: str = "test"
    """Held-out split for eval_before / eval_after."""
    endpoint_host: str = "127.0.0.1"
    """Where the endpoint that AgentEnv agent code talks to listens. Loopback by default; every request needs its
    episode's key whatever the address. It never changes results, so it is not part of the recipe hash."""
    mcp: list[dict[str, Any]] = field(default_factory=list)
    """MCP servers whose tools the environment (a ToolEnv) gets besides its own: each {command: "..."} (stdio) or
    {url: "..."} (streamable HTTP), with optional tools/exclude (names), prefix, env, headers, per_episode, timeout
    and startup_timeout. A key under a secret name in env or headers is recorded as <redacted>."""
    mix: list[MixEntry] = field(default_factory=list)
    """Several environments in one run instead of env.id/env.kwargs: a list of {id, weight, kwargs, name}. Each
    keeps its own tools, prompt and scoring; a group never mixes them; metrics and evaluations are also per env."""


@dataclass
class SamplingSection:
    temperature: float = 1.0
    """Sampling temperature of training rollouts; the trainer's logprobs use the same value."""
    top_p: float = 1.0
    """Nucleus sampling; must stay 1 for training (the trainer's logprobs are of the unfiltered softmax)."""
    top_k: int = 0
    """Keep the k most likely tokens; must stay 0 for training (see top_p)."""
    min_p: float = 0.0
    """Drop tokens below min_p times the top probability; must stay 0 for training (see top_p)."""
    max_new_tokens: int = 256
    """Tokens per assistant turn; a turn that runs out of them is truncated (truncated_by=max_new_tokens)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end an assistant turn (kept in it), besides the end-of-turn token, e.g. [</answer>]."""


@dataclass
class GRPOSection:
    steps: int = 100
    """Optimizer steps (one rollout batch each)."""
    tasks_per_step: int = 8
    """Tasks per rollout batch; each gets group_size episodes."""
    group_size: int = 8
    """Episodes per task (G)."""
    max_turns: int = 4
    """Assistant turns per episode."""
    max_total_tokens: int = 2048
    """Token budget of one episode, prompt included; also dr_grpo's normaliser."""
    advantage: str = "grpo"
    """grpo (z-score in the group), dr_grpo (no std scaling) or rloo (leave-one-out baseline)."""
    loss_type: str = "dapo"
    """Token aggregation, as in TRL: grpo, dr_grpo, dapo or bnpo."""
    epsilon_low: float = 0.2
    """Lower clip of the importance ratio: 1 - epsilon_low."""
    epsilon_high: float = 0.28
    """Upper clip of the importance ratio: 1 + epsilon_high (DAPO's clip-higher)."""
    importance_sampling_level: str = "token"
    """PPO ratio per token, or per sequence (GSPO: the exponential of the mean per-token log-ratio)."""
    rollout_correction: str = "auto"
    """Reweigh tokens by pi_trainer / pi_engine for a rollout engine that is not the trainer's own forward pass:
    token_truncate, token_mask, sequence_truncate, sequence_mask, none, or auto (token_truncate unless the backend
    is hf, which samples with the trainer's own model)."""
    rollout_correction_cap: float = 2.0
    """Importance weights above this are truncated to it (*_truncate) or zeroed (*_mask)."""
    mask_truncated: bool = False
    """Leave episodes cut by a token limit (max_new_tokens, max_total_tokens) out of the loss, as TRL's
    mask_truncated_completions does; they still count in the sequence normalisers."""
    beta: float = 0.0
    """Weight of the k3 KL to the reference (the base model: adapter disabled); 0 skips it."""
    num_iterations: int = 1
    """Optimizer passes over each rollout batch (PPO epochs)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; gradients accumulate over the batch."""
    learning_rate: float = 1e-5
    """AdamW peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_schedule: str = "constant"
    """constant, linear or cosine decay after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 disables."""
    zero_variance: str = "drop"
    """Groups whose rewards are all equal: keep, drop or resample."""
    max_resamples: int = 2
    """Resampling attempts for a zero-variance group."""
    logprob_chunk_size: int = 512
    """Positions per chunk when computing logprobs (bounds the logits held in memory)."""
    max_off_policy_steps: int = 0
    """Asynchronous rollouts: sample up to this many steps ahead of the trainer on vLLM servers (backend
    vllm-server), so generation overlaps training; the rollout correction reweighs the staleness. 0 is the
    synchronous loop (sample with the current adapter, then update)."""


@dataclass
class LoRASection:
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters."""
    last_n_layers: int = 0
    """Adapt only the top n decoder layers (the backward pass then stops early); 0 means all layers."""
    target_parameters: list[str] = field(default_factory=list)
    """MoE only: fused expert parameters that also get adapters, e.g. [mlp.experts.gate_up_proj,
    mlp.experts.down_proj]; those experts must be kept 16-bit (model.keep_high_precision)."""


@dataclass
class SFTSection:
    demonstrations: int = 0
    """Solved training episodes the environment writes for a warm start (env.demonstrations); 0 for none."""
    data: str = ""
    """Or a JSONL file of chat conversations ({"messages": [...], "tools": [...]} per line) to learn from."""
    epochs: float = 1.0
    """Passes over the demonstrations."""
    learning_rate: float = 2e-4
    """AdamW peak learning rate of the SFT stage (its own optimizer; GRPO's starts fresh after it)."""
    lr_schedule: str = "linear"
    """constant, linear or cosine decay over the SFT stage."""
    batch_size: int = 8
    """Conversations per forward/backward."""
    gradient_accumulation_steps: int = 1
    """Batches per optimizer step."""
    max_length: int = 0
    """Demonstrations longer than this many tokens are left out; 0 uses grpo.max_total_tokens."""

    @property
    def enabled(self) -> bool:
        return bool(self.demonstrations or self.data)


@dataclass
class EvalSection:
    num_tasks: int = 200
    """Held-out tasks for eval_before / eval_after (one greedy episode each)."""
    temperature: float = 0.0
    """Evaluation temperature; 0 is greedy."""
    max_new_tokens: int = 0
    """Tokens per turn in evaluation; 0 uses sampling.max_new_tokens."""
    before: bool = True
    """Evaluate the base model before training."""
    after: bool = True
    """Evaluate the trained adapter after training."""
    after_sft: bool = True
    """Evaluate the SFT adapter between the warm start and GRPO (when there is an sft stage)."""


@dataclass
class VLLMSection:
    gpu_memory_utilization: float = 0.0
    """Share of the GPU the vLLM engine may take beside the trainer; 0 sets it from the memory preflight."""
    sleep: bool = True
    """Free the engine's GPU memory during each update (vLLM sleep mode, level 1: weights to CPU; CUDA only)."""
    base_precision: str = "auto"
    """The engine's base: 4bit (vLLM's bitsandbytes loading, as a 4-bit trainer's), 16bit (bfloat16; the rollout
    correction reweighs the gap), or auto (the trainer's own precision)."""


@dataclass
class ServerSection:
    timeout: float = 600.0
    """Seconds one generation request may take before it is retried elsewhere (backend vllm-server)."""
    retries: int = 2
    """Extra rounds over the servers a failed request gets before its episodes are infrastructure failures."""
    max_failure_rate: float = 0.5
    """Stop the run when more than this share of the last 20 requests failed (dead or overloaded servers)."""


@dataclass
class WorkersSection:
    kind: str = "local"
    """Where environments, their tools and sandboxes run: local (in this process) or ray (in Ray actors spread
    over the cluster's CPUs; pip install 'agentrl[ray]'). Generation stays here; results are the same."""
    num_workers: int = 0
    """Ray actors hosting environments (kind ray); 0 means one per CPU of the Ray cluster."""
    address: str | None = None
    """Ray cluster (kind ray): HOST:6379 joins that head node; auto joins the one `ray start` runs on this node (or
    RAY_ADDRESS) and fails without it; unset does the same but starts a Ray here when there is none."""


@dataclass
class LimitsSection:
    max_infra_failure_rate: float = 0.5
    """Stop the run when more than this share of the episodes of the last 3 steps (fewer at the start of a
    session) were infrastructure failures: a dead sandbox, a tool's service down, a backend returning garbage.
    Below it, failed episodes are only left out of training."""
    max_skipped_steps: int = 3
    """Stop the run after this many steps in a row whose every update was skipped for a non-finite loss or
    gradient (the weights never take one); 0 never stops."""
    step_timeout: float = 300.0
    """Seconds one environment step (its tool calls, or grading) may take before the harness gives up on it;
    the episode is then an infrastructure failure."""


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    """The policy."""
    env: EnvSection = field(default_factory=EnvSection)
    """The environment."""
    sampling: SamplingSection = field(default_factory=SamplingSection)
    """Rollout sampling."""
    grpo: GRPOSection = field(default_factory=GRPOSection)
    """The RL algorithm and optimizer."""
    lora: LoRASection = field(default_factory=LoRASection)
    """The adapter."""
    sft: SFTSection = field(default_factory=SFTSection)
    """Supervised warm start of the same adapter before GRPO; it runs when it has demonstrations or data."""
    eval: EvalSection = field(default_factory=EvalSection)
    """Held-out evaluation before and after training."""
    backend: str = "auto"
    """Rollout backend: hf, vllm (an engine beside the trainer), vllm-server (running vLLM servers, server_urls),
    or auto (vllm when importable and the device is CUDA)."""
    server_urls: list[str] = field(default_factory=list)
    """Base URLs of running vLLM servers for backend vllm-server (http://host:port); batches are split across
    them. Start each with the flags `python -m agentrl.rollout.vllm_server MODEL` prints."""
    server: ServerSection = field(default_factory=ServerSection)
    """Timeouts, retries and the failure threshold of backend vllm-server."""
    vllm: VLLMSection = field(default_factory=VLLMSection)
    """The vLLM rollout engine, colocated with the trainer (backend vllm)."""
    workers: WorkersSection = field(default_factory=WorkersSection)
    """Environment workers: in this process, or Ray actors over a cluster's CPUs."""
    limits: LimitsSection = field(default_factory=LimitsSection)
    """When failures of the infrastructure or of the numerics stop the run, instead of being skipped."""
    output_dir: str = "runs/agentrl"
    """Where checkpoints, metrics, trajectories, the adapter and summary.json go."""
    seed: int = 0
    """Seed for task order, sampling and initialisation."""
    save_every: int = 25
    """Checkpoint every N steps (and at the end); 0 saves only at the end."""
    resume: bool = True
    """Continue the run in output_dir (same recipe) from its latest checkpoint; false refuses to touch it."""
    overwrite: bool = False
    """Delete the run in output_dir (its files only) and start again; needed to reuse it for another recipe."""
    preflight: bool = True
    """Estimate peak memory before loading the model and refuse to start, with a suggested change, when it
    exceeds the device (agentrl doctor --memory RECIPE shows the breakdown)."""
    save_trajectories: bool = True
    """Write every trajectory to output_dir/trajectories.jsonl."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Metric sinks besides metrics.jsonl: tensorboard, wandb, trackio (used when installed)."""


# ----- validation ---------------------------------------------------------------------------------
_CHOICES = {
    "grpo.advantage": ("grpo", "dr_grpo", "rloo"),
    "grpo.loss_type": ("grpo", "dr_grpo", "dapo", "bnpo"),
    "grpo.lr_schedule": ("constant", "linear", "cosine"),
    "grpo.zero_variance": ("keep", "drop", "resample"),
    "grpo.importance_sampling_level": ("token", "sequence"),
    "grpo.rollout_correction": ("auto", "none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    "backend": ("hf", "vllm", "vllm-server", "auto"),
    "vllm.base_precision": ("auto", "4bit", "16bit"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.loader": ("auto", "unsloth", "bitsandbytes", "transformers"),
    "sft.lr_schedule": ("constant", "linear", "cosine"),
    "workers.kind": ("local", "ray"),
}
_POSITIVE = ("grpo.steps", "grpo.tasks_per_step", "grpo.group_size", "grpo.max_turns", "grpo.max_total_tokens",
             "grpo.num_iterations", "grpo.micro_batch_size", "grpo.logprob_chunk_size", "lora.r",
             "sampling.max_new_tokens")  # fmt: skip


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    # Keys need not be strings in YAML ({1: x}, {null: x}); sort them by their text so that any mix compares.
    unknown = sorted((k for k in data if k not in names), key=str)
    if unknown:
        shown = (prefix + str(unknown[0]))[:80]
        raise RecipeError(f"unknown recipe key {shown!r}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp, key = hints[name], prefix + name
        item = (typing.get_args(tp) or (None,))[0]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(item):  # env.mix: a list of sections
            if not isinstance(value, list):
                raise RecipeError(f"{key}: expected a list, got {show(value)}")
            kwargs[name] = [_build(item, v, f"{key}[{i}].") for i, v in enumerate(value)]
        else:
            kwargs[name] = check_type(key, value, tp)
    return cls(**kwargs)


def _validate(recipe: Recipe) -> None:
    for key, choices in _CHOICES.items():
        value = get_key(recipe, key)
        if value not in choices:
            raise RecipeError(f"{key}: must be one of {', '.join(choices)}, got {show(value)}")
    for key in _POSITIVE:
        if get_key(recipe, key) < 1:
            raise RecipeError(f"{key}: must be at least 1, got {get_key(recipe, key)!r}")
    m = recipe.model
    if m.loader == "transformers" and m.load_in_4bit:
        raise RecipeError("model.loader=transformers loads a full-precision base: for 4-bit, bitsandbytes or unsloth")
    if m.loader == "bitsandbytes" and m.load_in_4bit is False:
        raise RecipeError("model.loader=bitsandbytes loads a 4-bit base: for full precision, transformers or unsloth")
    if m.loader == "unsloth" and m.keep_high_precision is not None:
        raise RecipeError("model.keep_high_precision needs model.loader=bitsandbytes (Unsloth keeps its own layers)")
    if m.loader == "unsloth" and recipe.lora.target_parameters:
        raise RecipeError("lora.target_parameters needs PEFT's own LoRA: set model.loader=bitsandbytes")
    if recipe.grpo.group_size < 2:
        raise RecipeError("grpo.group_size: GRPO compares episodes within a group; use at least 2")
    if not 0 <= recipe.grpo.epsilon_low < 1:
        raise RecipeError(f"grpo.epsilon_low: must be in [0, 1), got {recipe.grpo.epsilon_low}")
    if recipe.grpo.learning_rate <= 0:
        raise RecipeError(f"grpo.learning_rate: must be positive, got {recipe.grpo.learning_rate}")
    if not 0 <= recipe.vllm.gpu_memory_utilization < 1:
        raise RecipeError(f"vllm.gpu_memory_utilization: must be in [0, 1), got {recipe.vllm.gpu_memory_utilization}")
    if recipe.grpo.rollout_correction_cap <= 1:
        raise RecipeError(f"grpo.rollout_correction_cap: must be above 1, got {recipe.grpo.rollout_correction_cap}")
    # Each rule names its own key: the message must point at the line to fix.
    for key, low, value in (
        ("sft.demonstrations", 0, recipe.sft.demonstrations),
        ("sft.batch_size", 1, recipe.sft.batch_size),
        ("sft.gradient_accumulation_steps", 1, recipe.sft.gradient_accumulation_steps),
        ("server.retries", 0, recipe.server.retries),
        ("workers.num_workers", 0, recipe.workers.num_workers),
        ("grpo.max_off_policy_steps", 0, recipe.grpo.max_off_policy_steps),
        ("limits.max_skipped_steps", 0, recipe.limits.max_skipped_steps),
    ):
        if value < low:
            raise RecipeError(f"{key}: must be at least {low}, got {value!r}")
    for key, value in (
        ("sft.epochs", recipe.sft.epochs),
        ("sft.learning_rate", recipe.sft.learning_rate),
        ("server.timeout", recipe.server.timeout),
        ("limits.step_timeout", recipe.limits.step_timeout),
    ):
        if value <= 0:
            raise RecipeError(f"{key}: must be positive, got {value!r}")
    for key, value in (
        ("server.max_failure_rate", recipe.server.max_failure_rate),
        ("limits.max_infra_failure_rate", recipe.limits.max_infra_failure_rate),
    ):
        if not 0 < value <= 1:
            raise RecipeError(f"{key}: must be in (0, 1], got {value!r}")
    if not 0 <= recipe.seed < 2**32:  # the range every generator seeded from it (numpy, torch, vLLM) accepts
        raise RecipeError(f"seed: must be between 0 and 2**32 - 1, got {show(recipe.seed)}")
    if recipe.grpo.max_off_policy_steps and recipe.backend != "vllm-server":
        raise RecipeError(
            "grpo.max_off_policy_steps: asynchronous rollouts need a separate engine (backend vllm-server); "
            f"backend {recipe.backend} samples in the trainer's process"
        )
    if recipe.grpo.max_off_policy_steps and recipe.grpo.rollout_correction == "none":
        raise RecipeError("grpo.max_off_policy_steps: stale rollouts need a rollout_correction other than none")
    if recipe.backend == "vllm-server" and not recipe.server_urls:
        raise RecipeError("server_urls: backend vllm-server needs the URLs of running vLLM servers")
    for url in recipe.server_urls:
        if not url.startswith(("http://", "https://")):
            raise RecipeError(f"server_urls: {show(url)} is not an http(s) URL")
    _refuse_filters(recipe.sampling)
    check_mix(recipe.env)
    check_mcp(recipe.env)


def _refuse_filters(s: SamplingSection) -> None:
    """Training rollouts must sample from the distribution the trainer computes logprobs of.

    With top-p, top-k or min-p the engine samples from a renormalised, truncated distribution while
    the trainer's logprobs are of the full softmax, so the PPO ratio is off by the kept mass on every
    token, and tokens outside the kept set can never be sampled, so no importance weight can correct
    it (the proposal's support is smaller than the target's). Reproducing the filter in the trainer
    is not exact either: wherever engine and trainer logits differ (a 16-bit engine against a 4-bit
    trainer), tokens at the cut-off flip in or out. So these filters are refused for training;
    evaluation may use them (agentrl eval --top-p ...).
    """
    filters = (("top_p", s.top_p, 1.0), ("top_k", s.top_k, 0), ("min_p", s.min_p, 0.0))
    used = [f"{k}={v}" for k, v, off in filters if v != off]
    if used:
        raise RecipeError(
            f"sampling.{used[0]}: training samples from the full softmax at sampling.temperature; the trainer cannot "
            "reproduce top_p/top_k/min_p filtering, so the policy gradient would be biased. Use top_p=1, top_k=0, "
            "min_p=0 (lower the temperature instead); filters are fine in agentrl eval"
        )


def get_key(recipe: Any, dotted: str) -> Any:
    obj = recipe
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set_nested(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{key_text(dotted)}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["grpo.steps=10", "env.kwargs.digits=2"]`` -> nested dict; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {show(item)} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        # Not only YAMLError: PyYAML raises ValueError for dates like 2024-02-30 and ints over 4300 digits,
        # and RecursionError for deeply nested brackets.
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            reason = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise RecipeError(f"{key_text(key.strip())}: cannot parse value {show(raw)}: {reason}") from None
        _set_nested(out, key.strip(), value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = _merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or start from the defaults), apply ``key=value`` overrides, validate."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(one_line(f"{p}: cannot read the recipe: {exc}")) from None
        try:
            data = yaml.safe_load(text)
        except ValueError as exc:  # a value PyYAML parsed but cannot build: say which key holds it
            where = unbuildable_value(text)
            raise RecipeError(one_line(f"{p}: {where + ': ' if where else ''}cannot read the value: {exc}")) from None
        except (yaml.YAMLError, RecursionError) as exc:  # see parse_overrides
            raise RecipeError(one_line(f"{p}: not valid YAML: {exc or type(exc).__name__}")) from None
        if data is None:  # an empty file: all defaults
            data = {}
        if not isinstance(data, dict):
            raise RecipeError(f"{p}: a recipe is a mapping of keys to values, got {type(data).__name__} {show(data)}")
    data = _merge(data, parse_overrides(overrides or []))
    refuse_beside_mix(data.get("env"))
    recipe = _build(Recipe, data, "")
    _validate(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


BOOKKEEPING_KEYS = (
    "output_dir", "resume", "overwrite", "report_to", "save_every", "preflight", "server_urls", "server", "workers",
    "limits",
)  # fmt: skip
"""Keys that change where and how often a run is recorded, or where it generates or runs its environments, not
what it computes (a run may resume against other servers or workers)."""


def recipe_hash(recipe: Recipe | dict[str, Any]) -> str:
    """A hash of everything that decides the run's results; a checkpoint resumes only the recipe it was made by."""
    # Hashed as recorded (recipe.json holds no keys): a run resumes with its key given again, or a new one.
    # Only keys under secret names are left out, never values found in this machine's environment: the
    # same recipe must hash alike wherever it runs.
    full = redact(recipe if isinstance(recipe, dict) else recipe_to_dict(recipe), values=[])
    data = {k: v for k, v in full.items() if k not in BOOKKEEPING_KEYS}
    if data.get("sft") == dataclasses.asdict(SFTSection()):
        # No warm start: hash as recipes did before the sft section existed, so their runs still resume.
        data.pop("sft")
        data["eval"] = {k: v for k, v in data.get("eval", {}).items() if k != "after_sft"}
    if data.get("model", {}).get("loader") == "auto":  # likewise for the default loader
        data["model"] = {k: v for k, v in data["model"].items() if k != "loader"}
    data["env"] = {k: v for k, v in data.get("env", {}).items() if k != "endpoint_host"}  # where, not what
    # One environment hashes as before env.mix existed; a mix hashes its entries, not the unused id and kwargs.
    unused = ("mix",) if not data["env"].get("mix") else ("id", "kwargs")
    data["env"] = {k: v for k, v in data["env"].items() if k not in unused}
    # Likewise for MCP servers: none hashes as before env.mcp existed.
    data["env"] = {k: v for k, v in data["env"].items() if k != "mcp" or v}
    if data["env"].get("mix"):
        data["env"]["mix"] = [{k: v for k, v in e.items() if k != "mcp" or v} for e in data["env"]["mix"]]
    if data.get("grpo", {}).get("max_off_policy_steps") == 0:  # likewise for the synchronous loop
        data["grpo"] = {k: v for k, v in data["grpo"].items() if k != "max_off_policy_steps"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``["grpo.steps: 6 -> 10", ...]``: the keys (dotted) whose values differ, bookkeeping keys aside."""
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in BOOKKEEPING_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "kwargs":
            out += recipe_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def describe() -> list[str]:
    """One line per recipe key, ``key = default  doc``, for ``agentrl train --help``."""
    return describe_section(Recipe)
