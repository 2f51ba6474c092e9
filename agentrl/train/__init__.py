"""Training: GRPO with a LoRA adapter, configured by a recipe.

- :mod:`~agentrl.train.advantages`: group-relative advantages;
- :mod:`~agentrl.train.logprobs`: chunked token logprobs from hidden states;
- :mod:`~agentrl.train.loss`: the clipped loss, its aggregations, the rollout-engine correction;
- :mod:`~agentrl.train.model`: the LoRA model on a 16-bit or 4-bit base (:mod:`agentrl.quantize` decides how);
- :mod:`~agentrl.train.memory`, :mod:`~agentrl.train.architecture`: the memory preflight and the parameter
  counts it starts from;
- :mod:`~agentrl.train.recipe`: the recipe dataclasses, YAML and ``key=value`` overrides;
- :mod:`~agentrl.train.run_dir`: an output directory's run: resume, overwrite, the recipe's hash;
- :mod:`~agentrl.train.checkpoint`, :mod:`~agentrl.train.metrics`, :mod:`~agentrl.train.curve`;
- :mod:`~agentrl.train.backend_settings`: the rollout backend's settings (vLLM's memory share, the servers);
- :mod:`~agentrl.train.async_rollouts`: bounded-staleness asynchronous rollouts;
- :mod:`~agentrl.train.distributed`: several trainer processes (accelerate launch, torchrun);
- :mod:`~agentrl.train.trainer`: the loop.
"""

from agentrl.lazy import lazy_exports

_EXPORTS = {
    "Trainer": "agentrl.train.trainer",
    "Recipe": "agentrl.train.recipe",
    "load_recipe": "agentrl.train.recipe",
    "group_advantages": "agentrl.train.advantages",
    "grpo_loss": "agentrl.train.loss",
    "rollout_correction": "agentrl.train.loss",
    "token_logprobs": "agentrl.train.logprobs",
    "load_lora_model": "agentrl.train.model",
    "estimate_memory": "agentrl.train.memory",
    "check_fits": "agentrl.train.memory",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
