"""Evaluation: held-out tasks through the training rollout loop, with honest statistics.

- :mod:`~agentrl.eval.loop`: ``evaluate`` and the metrics of a set of episodes (the trainer uses it);
- :mod:`~agentrl.eval.stats`: pass@k, pass^k, Wilson and bootstrap intervals, paired differences;
- :mod:`~agentrl.eval.run`: ``agentrl eval`` (resumable runs, base-vs-adapter comparison);
- :mod:`~agentrl.eval.openai_backend`: ``agentrl eval --backend openai``, any OpenAI-compatible chat API;
- :mod:`~agentrl.eval.report` and :mod:`~agentrl.eval.plots`: report.md, report.html, figures;
- :mod:`~agentrl.eval.view`: ``agentrl view``, trajectories as HTML.
"""

from agentrl.lazy import lazy_exports

_EXPORTS = {
    "evaluate": "agentrl.eval.loop",
    "eval_metrics": "agentrl.eval.loop",
    "pass_at_k": "agentrl.eval.stats",
    "pass_hat_k": "agentrl.eval.stats",
    "wilson_interval": "agentrl.eval.stats",
    "paired_difference": "agentrl.eval.stats",
    "EvalSettings": "agentrl.eval.run",
    "run_eval": "agentrl.eval.run",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
