"""The training curve of a run: reward per step, with held-out success before and after.

Drawn with matplotlib's file-only backend (no display needed). It is what a user looks at first: the
mean training reward of each step (sampled at the training temperature, with one standard deviation
shaded) and the held-out success before and after training when the run evaluated them. The trainer
writes it to ``OUTPUT_DIR/reward_curve.png`` at the end of every run; ``agentrl eval`` reports reuse it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from agentrl.train.metrics import read_metrics


def reward_curve(run_dir: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Plot the run's reward per step (and held-out success before/after) to a PNG; return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"no metrics in {run_dir / 'metrics.jsonl'}; is {run_dir} a training run directory?")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    steps = [r["step"] for r in rows]
    mean = [r.get("reward_mean", float("nan")) for r in rows]
    std = [r.get("reward_std", 0.0) for r in rows]

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(steps, mean, marker="o", lw=1.8, color="#1f77b4", label="training reward (mean per step, sampled)")
    lo = [m - s for m, s in zip(mean, std, strict=True)]
    hi = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(steps, lo, hi, color="#1f77b4", alpha=0.12, lw=0)
    # A mix of environments: each one's mean reward too (an average over the mix can hide one that stalls).
    names = dict.fromkeys(k[4:].rpartition("/")[0] for r in rows for k in r if k.startswith("env/"))
    env_values: list[float] = []
    for i, name in enumerate(names):
        env_mean = [r.get(f"env/{name}/reward_mean", float("nan")) for r in rows]
        ax.plot(steps, env_mean, ls="--", lw=1.2, color=f"C{_ENV_COLOURS[i % 8]}", label=f"{name} (training reward)")
        env_values += env_mean
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before and after and steps:
        # Two separate markers: nothing was measured in between, so no line joins them.
        label = f"held-out success (greedy, n={after['n']})"
        for x, e, name in ((0, before, "before"), (steps[-1], after, "after")):
            y = e["success_rate"]
            ax.plot([x], [y], ls="none", marker="s", ms=8, color="#d62728", label=label)
            ax.annotate(
                f"{name}: {y:.1%}", (x, y), textcoords="offset points", xytext=(0, 9), ha="center", color="#d62728"
            )
            label = None
    ax.set_xlabel("step")
    ax.set_ylabel("reward / success rate")
    # Room for shaped or negative rewards: the axis covers every plotted value, and at least [0, 1].
    values = [v for v in lo + hi + env_values if math.isfinite(v)]
    if before and after:
        values += [before["success_rate"], after["success_rate"]]
    low, high = min([0.0, *values]), max([1.0, *values])
    pad = 0.08 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    if steps:
        ax.set_xlim(-1.0, steps[-1] + 0.8)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or _title(summary) or run_dir.name)
    fig.tight_layout()
    path = Path(out) if out else run_dir / "reward_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


_ENV_COLOURS = (2, 4, 5, 6, 7, 8, 9, 1)
"""Matplotlib's cycle without blue and red, the step mean's and the held-out markers' colours."""


def _title(summary: dict) -> str:
    """ "MODEL on ENV" from the run's summary, or whichever of the two is known."""
    model, env = summary.get("model"), summary.get("env")
    if model and env:
        return f"{model} on {env}"
    return model or env or ""


def try_reward_curve(out: Path) -> str | None:
    """Draw OUTPUT_DIR/reward_curve.png and return its path; a plotting problem must not cost the user
    the run (its results are already on disk), so it becomes a warning."""
    try:
        return str(reward_curve(out))
    except Exception as exc:
        warnings.warn(f"could not draw the reward curve: {exc}", stacklevel=2)
        return None
