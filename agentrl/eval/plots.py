"""Figures of an evaluation, drawn with matplotlib's file-only backend (no display needed).

One colour per evaluated model (base grey, adapter red): the reward histogram, pass@k and pass^k
against k, and per-turn statistics. A training run's own curve is :mod:`agentrl.train.curve`.
"""

from __future__ import annotations

from pathlib import Path

_COLORS = {"base": "#7f7f7f", "adapter": "#d62728"}


def _figure(size: tuple[float, float] = (6.0, 3.6)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    return plt, fig, ax


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def reward_histogram(rewards: dict[str, list[float]], path: str | Path) -> Path:
    """Distribution of episode rewards, one series per evaluated model."""
    plt, fig, ax = _figure()
    values = [v for vs in rewards.values() for v in vs]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    bins = [lo + (hi - lo) * i / 20 for i in range(21)]
    for label, vs in rewards.items():
        ax.hist(vs, bins=bins, alpha=0.55, label=f"{label} (n={len(vs)})", color=_COLORS.get(label))
    ax.set_xlabel("episode reward")
    ax.set_ylabel("episodes")
    ax.legend(fontsize=8)
    ax.set_title("reward histogram")
    return _save(plt, fig, path)


def pass_at_k_curve(results: dict[str, dict], path: str | Path) -> Path:
    """pass@k (solid, with its 95% CI) and pass^k (dashed) against k, one colour per model."""
    plt, fig, ax = _figure()
    for label, m in results.items():
        ks = sorted(int(k) for k in m["pass_at_k"])
        at = [m["pass_at_k"][str(k)] for k in ks]
        hat = [m["pass_hat_k"][str(k)]["mean"] for k in ks]
        color = _COLORS.get(label)
        ax.plot(ks, [a["mean"] for a in at], marker="o", color=color, label=f"{label} pass@k")
        ax.fill_between(ks, [a["ci95_low"] for a in at], [a["ci95_high"] for a in at], color=color, alpha=0.15, lw=0)
        if len(ks) > 1:
            ax.plot(ks, hat, marker="x", ls="--", color=color, label=f"{label} pass^k")
    ax.set_xlabel("k")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("pass@k and pass^k")
    return _save(plt, fig, path)


def per_turn_plot(results: dict[str, dict], path: str | Path) -> Path:
    """Per turn: episodes still running (bars) and the fraction of those that call a tool (line)."""
    plt, fig, ax = _figure()
    ax2 = ax.twinx()
    width = 0.8 / max(len(results), 1)
    for i, (label, m) in enumerate(results.items()):
        rows = m["per_turn"]
        turns = [r["turn"] for r in rows]
        color = _COLORS.get(label)
        ax.bar([t + (i - (len(results) - 1) / 2) * width for t in turns], [r["episodes"] for r in rows], width,
               color=color, alpha=0.45, label=f"{label}: episodes reaching the turn")  # fmt: skip
        ax2.plot(turns, [r["tool_call_fraction"] for r in rows], marker="o", color=color, label=f"{label}: tool calls")
    last = max((r["turn"] for m in results.values() for r in m["per_turn"]), default=1)
    ax.set_xticks(range(1, last + 1))
    ax.set_xlabel("assistant turn")
    ax.set_ylabel("episodes")
    ax2.set_ylabel("fraction calling a tool")
    ax2.set_ylim(-0.02, 1.02)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    # Above the axes: inside, the bars of turn 1 would always be under it.
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, ncol=2, loc="lower left",
              bbox_to_anchor=(0.0, 1.01), frameon=False)  # fmt: skip
    fig.set_size_inches(6.0, 4.0)
    return _save(plt, fig, path)
