"""``agentrl doctor --memory``: the memory preflight's estimate as a table, with a verdict for each device.

The estimate and the verdicts are :mod:`agentrl.train.memory`'s; this module picks the devices to judge
against (the one asked for, this machine's GPU, else common cards and this CPU) and lays the text out.
"""

from __future__ import annotations

from typing import Any

from agentrl.train.memory import (
    GiB,
    MemoryEstimate,
    _gib,
    device_capacity,
    estimate_memory,
    model_config,
    suggest,
    vllm_memory_fraction,
)
from agentrl.train.recipe import Recipe

CARDS = {"24 GB card": int(23.65 * GiB), "80 GB card": int(79.15 * GiB)}
"""What torch reports as the total memory of an RTX 3090/4090 and of an A100/H100 80GB (the "total
capacity" in CUDA out-of-memory messages): a little under the number on the box."""


def memory_report(recipe: Recipe, *, device_memory_gib: float | None = None) -> str:
    """``agentrl doctor --memory``: the CUDA breakdown and verdicts for ``device_memory_gib``, else for this
    machine's GPU, else for 24 GB and 80 GB cards and (with its own breakdown) for this CPU."""
    config = model_config(recipe.model.name)
    estimate = estimate_memory(recipe, device="cuda", config=config)
    local = device_capacity("cuda")
    if device_memory_gib:
        targets = {f"{device_memory_gib:g} GiB device": int(device_memory_gib * GiB)}
    elif local:
        import torch

        targets = {f"this GPU ({torch.cuda.get_device_name()})": local}
    else:
        targets = dict(CARDS)
    lines = [estimate.format_table(), ""]
    for label, capacity in targets.items():
        lines.append(f"{label}: {_verdict_line(recipe, estimate, 'cuda', capacity, config)}")
    if not device_memory_gib and not local:
        cpu = estimate_memory(recipe, device="cpu", config=config)
        ram = device_capacity("cpu") or 0
        lines += [
            "",
            cpu.format_table(),
            "",
            f"this CPU ({_gib(ram)} RAM): {_verdict_line(recipe, cpu, 'cpu', ram, config)}",
        ]
    return "\n".join(lines)


def _verdict_line(recipe: Recipe, estimate: MemoryEstimate, device: str, capacity: int, config: dict[str, Any]) -> str:
    line = estimate.verdict(capacity)
    if estimate.total > capacity:
        fix = suggest(recipe, device, capacity, config)
        return f"{line}; {fix or 'even the smallest settings do not fit'}"
    if estimate.parts.get("vllm") and device == "cuda":
        line += f"; vLLM gpu_memory_utilization={vllm_memory_fraction(estimate, capacity)}"
    return line
