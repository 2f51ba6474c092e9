"""How the trainer's rollout engine is set up, by backend: vLLM beside the trainer, or vLLM servers.

The hf backend needs nothing here (it samples with the trainer's own model); these are the keyword
arguments :func:`agentrl.rollout.backends.make_backend` gets for the other two.
"""

from __future__ import annotations

from typing import Any

from agentrl.train.recipe import Recipe


def vllm_settings(recipe: Recipe, device: str, trained_in_4bit: bool) -> dict[str, Any]:
    """A vLLM engine beside the trainer: its base precision, and on CUDA its memory.

    vLLM would take 90% of the GPU by default while the trainer's model already sits there. Its share
    comes from the memory preflight instead (its base weights and the KV cache of one rollout batch,
    with headroom), and sleep mode hands the memory back during each update.
    """
    v = recipe.vllm
    four_bit = v.base_precision == "4bit" or (v.base_precision == "auto" and trained_in_4bit)
    out: dict[str, Any] = {"load_in_4bit": four_bit, "keep_high_precision": recipe.model.keep_high_precision}
    if device == "cuda":
        from agentrl.train.memory import device_capacity, estimate_memory, vllm_memory_fraction

        fraction = v.gpu_memory_utilization
        if not fraction:
            fraction = vllm_memory_fraction(estimate_memory(recipe, device="cuda"), device_capacity("cuda") or 0)
        out.update(gpu_memory_utilization=fraction, enable_sleep_mode=v.sleep)
    return out


def adapter_versions_in_use(recipe: Recipe) -> int:
    """Adapter versions a run may still sample with: the current one, plus one for each step an asynchronous
    batch may be behind. The servers keep this many loaded, and the trainer keeps their files (a server that
    comes back after an outage loads them again)."""
    return 1 + recipe.grpo.max_off_policy_steps


def server_settings(recipe: Recipe) -> dict[str, Any]:
    """Running vLLM servers: where they are, how long to wait for them, and how many adapter versions
    they keep loaded (:func:`adapter_versions_in_use`)."""
    s = recipe.server
    return {
        "server_urls": list(recipe.server_urls),
        "timeout": s.timeout,
        "retries": s.retries,
        "max_failure_rate": s.max_failure_rate,
        "keep_versions": adapter_versions_in_use(recipe),
    }


def settings(kind: str, recipe: Recipe, device: str, trained_in_4bit: bool) -> dict[str, Any]:
    """``make_backend``'s extra keyword arguments for backend ``kind`` (none for hf)."""
    if kind == "vllm":
        return vllm_settings(recipe, device, trained_in_4bit)
    if kind == "vllm-server":
        return server_settings(recipe)
    return {}
