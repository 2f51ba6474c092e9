"""Where training metrics go: ``metrics.jsonl`` always, TensorBoard, and W&B or trackio when installed.

Each step also passes through :func:`health_warnings`, which turns out-of-range values into one-line
warnings that name the likely cause, because a silent run that learns nothing is the costliest bug.
A run on a mix of environments logs the rollout metrics of each environment too (:func:`env_metrics`,
``env/NAME/KEY``: TensorBoard groups them by environment), and its warnings name the environment.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

from agentrl.redact import redact
from agentrl.rollout.engine import batch_metrics
from agentrl.rollout.trajectory import Group
from agentrl.train.guards import append_lines

ENV_METRICS = (
    "reward_mean", "reward_std", "groups", "episodes", "zero_variance_fraction", "dropped_zero_variance",
    "dropped_too_few_valid", "resamples", "infra_failures", "infra_failure_rate", "truncation_rate",
    "tool_call_rate", "parse_failure_rate", "tool_error_rate", "mean_turns", "generated_tokens",
)  # fmt: skip
"""The rollout metrics a run on a mix of environments also logs per environment, as ``env/NAME/KEY``."""


def env_metrics(groups: list[Group]) -> dict[str, float]:
    """``env/NAME/KEY`` for each environment of a mix (the ``env`` its trajectories were labelled with); empty
    for a single environment. Computed from the whole step's groups, so every rank's share counts."""
    by_env: dict[str, list[Group]] = {}
    for g in groups:
        name = next((t.env for t in g.trajectories if t.env is not None), None)
        if name is not None:
            by_env.setdefault(name, []).append(g)
    out: dict[str, float] = {}
    for name, own in by_env.items():
        m = batch_metrics(own, 0.0, {"generation": 0.0, "tools_only": 0.0})
        out.update({f"env/{name}/{k}": m[k] for k in ENV_METRICS})
    return out


def per_env(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{NAME: {KEY: value}}`` from the ``env/NAME/KEY`` entries of one step's metrics."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in m.items():
        if key.startswith("env/"):
            name, _, metric = key[4:].rpartition("/")  # names hold no "/"
            out.setdefault(name, {})[metric] = value
    return out


def progress_info(m: dict[str, Any]) -> str:
    """The progress bar's line: the step's reward and loss, and each environment's reward on a mix."""
    line = f"reward {m['reward_mean']:.3f}  loss {m.get('loss', 0):.4f}"
    envs = per_env(m)
    if envs:
        line += "  (" + ", ".join(f"{name} {v.get('reward_mean', 0.0):.3f}" for name, v in envs.items()) + ")"
    return line


def health_warnings(m: dict[str, Any]) -> list[str]:
    """Warnings for one step's metrics; empty when everything is in range.

    On a mix of environments a rollout warning is given for each environment it concerns, naming it, and not
    again for the whole step; an average can hide one environment that fails (or, with too few groups per
    environment to judge, show what none of them does alone: then the step's own warning stays)."""
    envs = [(key, f"{name}: {text}") for name, sub in per_env(m).items() for key, text in _checks(sub)]
    covered = {key for key, _ in envs}
    return [text for key, text in _checks(m) if key not in covered] + [text for _, text in envs]


def _checks(m: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, warning) for each out-of-range value of ``m``."""
    out: list[tuple[str, str]] = []

    def warn(key: str, text: str) -> None:
        out.append((key, text))

    for key in ("loss", "grad_norm", "reward_mean"):
        if key in m and not math.isfinite(m[key]):
            warn(key, f"{key} is {m[key]}: the learning rate may be too high, or a reward function returned NaN")
    if m.get("logprob_gap", 0.0) > 0.5:
        warn(
            "logprob_gap",
            f"logprob_gap {m['logprob_gap']:.2f}: trainer and rollout engine disagree; check that both use the same "
            "weights, dtype and temperature",
        )
    off = m.get("rollout_is_clipped_fraction", m.get("rollout_is_masked_fraction", 0.0))
    if off > 0.2:
        warn(
            "rollout_is",
            f"{off:.0%} of sampled tokens are past grpo.rollout_correction_cap: the rollout engine samples far from "
            "the trainer's policy; check that the served adapter is the current one and that both use the same "
            "weights and temperature",
        )
    if m.get("infra_failure_rate", 0.0) > 0.2:
        warn(
            "infra_failure_rate",
            f"infra_failure_rate {m['infra_failure_rate']:.0%}: the sandbox or backend is failing; see trajectories",
        )
    if m.get("skipped_updates", 0.0) > 0:
        warn(
            "skipped_updates",
            f"{m['skipped_updates']:g} of {m.get('updates', 1):g} updates skipped: the loss or gradients were not "
            "finite (weights unchanged); if it persists, lower grpo.learning_rate or check the rewards",
        )
    if m.get("unwritten_trajectories", 0.0) > 0:
        warn(
            "unwritten_trajectories",
            f"{m['unwritten_trajectories']:g} trajectories could not be written (is the disk full?); they are kept "
            "and written with the next step's",
        )
    if m.get("zero_variance_fraction", 0.0) >= 0.9 and m.get("groups", 0) >= 2:
        warn(
            "zero_variance_fraction",
            f"zero_variance_fraction {m['zero_variance_fraction']:.0%}: almost no group has signal; the task is too "
            "easy or too hard for the model, or the group size is too small",
        )
    if m.get("truncation_rate", 0.0) > 0.5:
        warn(
            "truncation_rate",
            f"truncation_rate {m['truncation_rate']:.0%}: most episodes hit a limit; raise sampling.max_new_tokens, "
            "grpo.max_turns or grpo.max_total_tokens",
        )
    if m.get("parse_failure_rate", 0.0) > 0.5:
        warn(
            "parse_failure_rate",
            f"parse_failure_rate {m['parse_failure_rate']:.0%}: the model's tool calls are malformed",
        )
    if m.get("clip_high_fraction", 0.0) + m.get("clip_low_fraction", 0.0) > 0.3:
        warn("clip", "over 30% of tokens are clipped: the policy moves too far per step; lower the learning rate")
    return out


class MetricsLogger:
    """Append one JSON line per step and mirror scalars to the optional sinks."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        report_to: list[str],
        config: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
    ):
        """``history``: the rows of ``metrics.jsonl`` a resumed run keeps. TensorBoard is rebuilt from them,
        so a step that a killed run logged after its last checkpoint does not appear twice."""
        config = redact(config)  # W&B and trackio keep the config on their servers: no keys in it
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._tb = self._wandb = self._trackio = None
        self._pending: list[str] = []  # rows a failed write left behind
        if "tensorboard" in report_to:
            from tensorboardX import SummaryWriter

            shutil.rmtree(self.dir / "tensorboard", ignore_errors=True)
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            for row in history or []:
                self._scalars_to_tensorboard(int(row["step"]), _scalars(row))
        if "wandb" in report_to and importlib.util.find_spec("wandb"):
            import wandb

            self._wandb = wandb.init(project="agentrl", dir=str(self.dir), config=config, resume="allow")
        if "trackio" in report_to and importlib.util.find_spec("trackio"):
            import trackio

            self._trackio = trackio
            trackio.init(project="agentrl", config=config)

    def log(self, step: int, metrics: dict[str, float]) -> list[str]:
        """Record ``metrics`` for ``step``; returns (and emits) the health warnings."""
        self._pending.append(json.dumps({"step": step, **metrics}))
        try:  # a full disk costs the line until there is room again, never the run
            append_lines(self.path, self._pending)
            self._pending = []
        except OSError as exc:
            warnings.warn(f"could not write {self.path.name} ({exc}); the run continues", RuntimeWarning, stacklevel=2)
        scalars = _scalars(metrics)
        self._scalars_to_tensorboard(step, scalars)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._trackio is not None:
            self._trackio.log(scalars, step=step)
        problems = health_warnings(metrics)
        for p in problems:
            warnings.warn(f"step {step}: {p}", RuntimeWarning, stacklevel=2)
        return problems

    def _scalars_to_tensorboard(self, step: int, scalars: dict[str, float]) -> None:
        if self._tb is None:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._trackio is not None:
            self._trackio.finish()


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"}


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
