"""What a training run reports when it ends: ``summary.json``, and each held-out evaluation as a console line.

Held-out success is compared between stages over the same tasks and seeds (a paired difference): base to
final, and with an SFT warm start base to SFT and SFT to GRPO. On a mix of environments every evaluation
and every comparison is also given per environment (``per_env``), over that environment's tasks alone:
the overall number is an average over the mix, and one environment's gain can hide another's loss.
"""

from __future__ import annotations

from typing import Any

from agentrl.envs.mix import env_name
from agentrl.eval.stats import paired_difference
from agentrl.train.recipe import recipe_hash

STAGES = (
    ("success_difference", "eval_before", "eval_after"),
    ("sft_difference", "eval_before", "eval_sft"),
    ("grpo_difference", "eval_sft", "eval_after"),
)
"""(key, from, to): the paired comparisons of summary.json, when both evaluations exist."""


def env_label(env: Any) -> str:
    """The run's environment as reports name it: its id, or the mix's names joined by '+'."""
    return "+".join(e.name or e.id for e in env.mix) if env.mix else env.id


def run_summary(
    recipe: Any, evals: dict[str, dict[str, Any] | None], *, sft: dict[str, Any] | None, **fields: Any
) -> dict[str, Any]:
    """summary.json's contents: ``fields`` (steps, wall time, adapter, ...), the evaluations of ``evals`` (by name:
    eval_before, eval_sft, eval_after; each as the trainer saved it, or None), the SFT stage's record (if there was
    one) and the paired differences."""
    r = recipe
    summary: dict[str, Any] = {
        "eval_before": _summary_of(evals.get("eval_before")),
        "eval_after": _summary_of(evals.get("eval_after")),
        **fields,
        "model": r.model.name,
        "env": env_label(r.env),
        "recipe_hash": recipe_hash(r),
    }
    if r.env.mix:
        summary["envs"] = {e.name or e.id: {"id": e.id, "weight": e.weight} for e in r.env.mix}
    if sft:
        summary["sft"] = sft
        summary["eval_sft"] = _summary_of(evals.get("eval_sft"))
    for key, a, b in STAGES:
        first, second = evals.get(a), evals.get(b)
        if first and second:
            summary[key] = compare(first["tasks"], second["tasks"], seed=r.seed, mixed=bool(r.env.mix))
    return summary


def compare(before: dict[str, float], after: dict[str, float], *, seed: int, mixed: bool) -> dict[str, Any]:
    """The paired difference of per-task success, with each environment's own under ``per_env`` on a mix."""
    out = paired_difference(before, after, seed=seed)
    if mixed:
        names = dict.fromkeys(env_name(t) for t in before)
        out["per_env"] = {name: paired_difference(_of(before, name), _of(after, name), seed=seed) for name in names}
    return out


def _of(tasks: dict[str, float], name: str) -> dict[str, float]:
    return {t: v for t, v in tasks.items() if env_name(t) == name}


def _summary_of(result: dict[str, Any] | None) -> dict[str, Any] | None:
    return result["summary"] if result else None


def eval_line(s: dict[str, Any]) -> str:
    """One evaluation's summary as a console line; on a mix, each environment's success follows."""
    ci = s.get("success_ci95")
    interval = f" [95% CI {ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
    line = f"success {s['success_rate']:.1%}{interval}  mean reward {s['mean_reward']:.3f}  n={s['n']}"
    envs = s.get("per_env") or {}
    if envs:
        line += "; " + ", ".join(
            f"{name} {e['success_rate']:.1%} (reward {e['mean_reward']:.3f}, n={e['n']})" for name, e in envs.items()
        )
    return line
