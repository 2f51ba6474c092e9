"""A training run's output directory: whose it is, resuming it cleanly, and the time spent on it.

A directory holds one run of one recipe (``recipe.json``). Running the same recipe again continues
it from its latest checkpoint; a different recipe, or a directory that holds something else, is
refused in one line. ``overwrite=true`` deletes the run's own files (never anything else) and starts
again; ``resume=false`` refuses to touch an existing run at all.

On resume, everything a killed run wrote after its last checkpoint is cut back to that step, so every
step appears exactly once: ``metrics.jsonl`` and ``trajectories.jsonl`` lose their later lines (and a
line cut short by the kill), TensorBoard is rebuilt from ``metrics.jsonl``, and a checkpoint left half
written is deleted. The held-out evaluation before training is saved in ``eval_before.json`` as soon as
it exists and is never recomputed.

``wall.json`` records each session's start and last heartbeat (a daemon thread writes it every second),
so ``wall_seconds`` counts the time of sessions that were killed, too.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from agentrl.errors import RecipeError
from agentrl.redact import redact
from agentrl.train.checkpoint import latest_checkpoint
from agentrl.train.recipe import Recipe, recipe_diff, recipe_hash, recipe_to_dict

ARTEFACTS = (
    "metrics.jsonl", "trajectories.jsonl", "tensorboard", "checkpoints", "adapter", "summary.json",
    "reward_curve.png", "eval_before.json", "eval_after.json", "eval_before_trajectories.jsonl",
    "eval_after_trajectories.jsonl", "wall.json", "base.json", "rollout_adapter", "eval", "sft",
    "eval_sft.json", "eval_sft_trajectories.jsonl", "recipe.json",
)  # fmt: skip
"""Everything a training run writes; ``overwrite`` deletes these and nothing else (``recipe.json`` last, so
a directory whose deletion was interrupted is still recognised as a run)."""
PROGRESS = ("checkpoints", "metrics.jsonl", "eval_before.json", "sft", "trajectories.jsonl")
"""What a run has to show for itself. A directory with only ``recipe.json`` (the run failed while loading the
model, or a typo in the recipe stopped it) is free for any recipe."""


def claim(out: Path, recipe: Recipe) -> None:
    """Make ``out`` this recipe's run directory, or refuse in one line (a :class:`RecipeError`)."""
    meta = out / "recipe.json"
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not meta.is_file():
        raise RecipeError(f"output_dir {out} is not empty and holds no agentrl run; choose another output_dir")
    if occupied and recipe.overwrite:
        done = latest_step(out)
        if done:
            warnings.warn(f"overwrite=true: deleting the run in {out} (checkpointed at step {done})", stacklevel=3)
        for name in ARTEFACTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif occupied and _has_progress(out):
        old = json.loads(meta.read_text())
        if recipe_hash(old) != recipe_hash(recipe):
            # The message goes to the terminal: neither side quotes a key (an older recipe.json may hold one).
            changes = recipe_diff(redact(old), redact(recipe_to_dict(recipe)))
            more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
            raise RecipeError(
                f"output_dir {out} holds a run of a different recipe ({changes[0] if changes else 'changed'}{more}); "
                "pass overwrite=true to replace it, or choose another output_dir"
            )
        if not recipe.resume:
            raise RecipeError(
                f"output_dir {out} already holds a run of this recipe; pass resume=true to continue it, "
                "or overwrite=true to start again"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta, redact(recipe_to_dict(recipe)))  # a key given in the recipe stays out of the record


def _has_progress(out: Path) -> bool:
    for name in PROGRESS:
        path = out / name
        if (path.is_dir() and any(path.iterdir())) or (path.is_file() and path.stat().st_size > 0):
            return True
    return False


def latest_step(out: Path) -> int:
    """The step of the latest complete checkpoint in ``out``, 0 without one."""
    ckpt = latest_checkpoint(out)
    return int(ckpt.name.removeprefix("step-")) if ckpt else 0


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (or a resumed run) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def cut_back(out: Path, step: int) -> list[dict[str, Any]]:
    """Drop what was written after ``step`` (the last checkpoint); return the metrics rows that remain."""
    for tmp in (out / "checkpoints").glob(".tmp-*") if (out / "checkpoints").is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)  # a checkpoint the kill interrupted
    rows = _keep_until(out / "metrics.jsonl", step)
    _keep_until(out / "trajectories.jsonl", step)
    return rows


def _keep_until(path: Path, step: int) -> list[dict[str, Any]]:
    """Rewrite a JSONL file keeping the rows of steps up to ``step``; a line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    kept, rows = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
            rows.append(row)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return rows


class WallClock:
    """Seconds spent on the run over all its sessions, killed ones included (to within one heartbeat)."""

    def __init__(self, path: Path, started: float, interval: float = 1.0):
        self.path, self.interval = path, interval
        saved = read_json(path) or {}
        self.sessions: list[list[float]] = [list(s) for s in saved.get("sessions", [])]
        self.sessions.append([started, time.time()])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seconds(self) -> float:
        self.sessions[-1][1] = time.time()
        return sum(end - start for start, end in self.sessions)

    def beat(self) -> None:
        self.sessions[-1][1] = time.time()
        write_json(self.path, {"sessions": self.sessions})

    def start(self) -> None:
        self.beat()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.beat()
                except OSError:  # a full disk must not kill the run; the next beat tries again
                    pass

        self._thread = threading.Thread(target=loop, name="agentrl-wall-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.beat()
