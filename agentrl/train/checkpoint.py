"""Atomic training checkpoints: adapter, optimizer, scheduler, RNG states, step, the recipe's hash.

A checkpoint is written into a temporary directory next to its final place and renamed into it,
so a run killed mid-write leaves either the previous checkpoint or the new one, never half of one.
Loading restores every piece, so the continued run samples the same tasks (chosen by step) with the
same RNG streams as a run that was never interrupted. A checkpoint made by another recipe is refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from agentrl import faults
from agentrl.errors import RecipeError

CHECKPOINTS = "checkpoints"


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: str | Path, step: int, model: Any, optimizer: Any, scheduler: Any, extra: dict[str, Any]
) -> Path:
    """Write ``output_dir/checkpoints/step-N`` atomically and return it. ``extra`` must be JSON-serialisable."""
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        faults.fire("write", path=tmp)
        model.save_pretrained(tmp / "adapter")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
            tmp / "trainer_state.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    except BaseException:  # a full disk: free what was written; the previous checkpoint stays the latest
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(
    path: str | Path, model: Any, optimizer: Any, scheduler: Any, *, recipe_hash: str | None = None
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG; return the saved ``state.json``.

    With ``recipe_hash``, a checkpoint written by a different recipe is refused before anything is loaded.
    """
    path = Path(path)
    saved = json.loads((path / "state.json").read_text())
    if recipe_hash is not None and saved.get("recipe_hash") != recipe_hash:
        raise RecipeError(
            f"checkpoint {path} was written by another recipe (hash {saved.get('recipe_hash')}, this recipe's is "
            f"{recipe_hash}); pass overwrite=true to start again"
        )
    load_adapter_weights(model, path / "adapter")
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return saved


def load_adapter_weights(model: Any, adapter_dir: str | Path) -> None:
    """Copy a saved adapter's LoRA weights into ``model``'s adapter (same configuration), in place."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    set_peft_model_state_dict(model, load_file(str(weights), device=str(next(model.parameters()).device)))
