"""Rollouts: groups of token-exact, multi-turn episodes, for training and evaluation alike.

- :mod:`~agentrl.rollout.trajectory`: ``Trajectory`` (one episode) and ``Group`` (G episodes of a task);
- :mod:`~agentrl.rollout.engine`: ``RolloutEngine``, batched generation overlapping tool calls;
- :mod:`~agentrl.rollout.generation`: ``SamplingParams``, ``Completion`` and the backend interface;
- :mod:`~agentrl.rollout.backends`: ``make_backend``, the one factory;
- :mod:`~agentrl.rollout.hf_backend` / :mod:`~agentrl.rollout.vllm_backend`: in-process backends;
- :mod:`~agentrl.rollout.server_backend`: running vLLM servers (:mod:`~agentrl.rollout.vllm_server` starts one);
- :mod:`~agentrl.rollout.ray_workers`: environments, tools and sandboxes in Ray actors;
- :mod:`~agentrl.rollout.prefix`: the shared prompt opening that sampler and trainer run once.
"""

from agentrl.lazy import lazy_exports

_EXPORTS = {
    "Trajectory": "agentrl.rollout.trajectory",
    "Group": "agentrl.rollout.trajectory",
    "RolloutEngine": "agentrl.rollout.engine",
    "RolloutConfig": "agentrl.rollout.engine",
    "RolloutBatch": "agentrl.rollout.engine",
    "SamplingParams": "agentrl.rollout.generation",
    "Completion": "agentrl.rollout.generation",
    "make_backend": "agentrl.rollout.backends",
    "HFBackend": "agentrl.rollout.hf_backend",
    "VLLMBackend": "agentrl.rollout.vllm_backend",
    "VLLMServerBackend": "agentrl.rollout.server_backend",
    "VLLMServer": "agentrl.rollout.vllm_server",
    "RayEnvPool": "agentrl.rollout.ray_workers",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
