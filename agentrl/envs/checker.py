"""``check_env``: verify that an environment honours the agentrl API contract.

Like Gymnasium's checker, it drives the environment through a few episodes and fails loudly on
anything a trainer would trip over later: wrong return shapes, non-message observations, a reset
that ignores its seed, a crash on malformed model output. Hard violations raise
:class:`EnvCheckError`; softer problems are returned as warnings.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema

from agentrl.envs.core import Env, ResetNeeded

# Model outputs every environment must survive without raising.
MALFORMED_ACTIONS: list[Any] = [
    "",
    "<tool_call>",
    "<tool_call>{not json}</tool_call>",
    '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
    '<tool_call>{"name": 3, "arguments": []}</tool_call></tool_call>',
    "<think><tool_call>{}</tool_call>",
    {"role": "assistant", "content": None},
]


class EnvCheckError(AssertionError):
    """The environment violates the API contract."""


def _fail(msg: str) -> None:
    raise EnvCheckError(msg)


def _check_messages(obs: Any, where: str) -> None:
    if not isinstance(obs, list):
        _fail(f"{where}: observation must be a list of messages, got {type(obs).__name__}")
    for i, m in enumerate(obs):
        if not isinstance(m, dict):
            _fail(f"{where}: message {i} must be a dict, got {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            _fail(f"{where}: message {i} has no string 'role'")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            _fail(f"{where}: message {i} has unknown role {m['role']!r}")
        if not isinstance(m.get("content"), str):
            _fail(f"{where}: message {i} ({m['role']}) needs string 'content'")
    try:
        json.dumps(obs)
    except (TypeError, ValueError) as exc:
        _fail(f"{where}: observation is not JSON-serialisable ({exc}); trajectories could not be saved")


def _check_reset(env: Env, seed: int) -> tuple[list, dict]:
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2):
        _fail(f"reset() must return (observation, info), got {type(out).__name__}")
    obs, info = out
    _check_messages(obs, "reset()")
    if not obs:
        _fail("reset() returned no messages; the policy would have nothing to answer")
    if not isinstance(info, dict):
        _fail(f"reset() info must be a dict, got {type(info).__name__}")
    return obs, info


def _check_step(env: Env, action: Any) -> tuple:
    try:
        out = env.step(action)
    except ResetNeeded:
        raise
    except Exception as exc:
        _fail(f"step({action!r:.60}) raised {type(exc).__name__}: {exc}; malformed model output must not crash")
    if not (isinstance(out, tuple) and len(out) == 5):
        _fail("step() must return (observation, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = out
    _check_messages(obs, "step()")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        _fail(f"step() reward must be a finite float, got {reward!r}")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, bool):
            _fail(f"step() {name} must be a bool, got {type(flag).__name__}")
    if terminated and truncated:
        _fail("step() returned terminated and truncated both True; a limit cannot cut an episode that ended")
    if not isinstance(info, dict):
        _fail(f"step() info must be a dict, got {type(info).__name__}")
    return out


def check_env(env: Env, *, max_steps: int = 20) -> list[str]:
    """Check ``env`` against the contract; raise :class:`EnvCheckError` or return warnings."""
    warnings: list[str] = []
    if not isinstance(env, Env):
        _fail(f"expected an agentrl.Env, got {type(env).__name__}")

    for spec in getattr(env, "tool_specs", []) or []:
        try:
            fn = spec["function"]
            if not isinstance(fn["name"], str) or not fn["name"]:
                _fail("a tool spec has no name")
            jsonschema.Draft202012Validator.check_schema(fn.get("parameters", {}))
        except (KeyError, TypeError) as exc:
            _fail(f"malformed tool spec {spec!r:.80}: missing {exc}")
        except jsonschema.SchemaError as exc:
            _fail(f"tool {spec['function']['name']!r} has an invalid JSON schema: {exc.message}")

    obs_a, info_a = _check_reset(env, seed=123)
    obs_b, _ = _check_reset(env, seed=123)
    if obs_a != obs_b:
        _fail("reset(seed=123) twice gave different observations; seeding must make resets reproducible")
    prompts = {json.dumps(_check_reset(env, seed=s)[0]) for s in range(8)}
    if len(prompts) == 1:
        warnings.append("8 different seeds all gave the same first observation; is the seed used to draw tasks?")

    task_id = info_a.get("task_id")
    if task_id is None:
        warnings.append("reset() info has no 'task_id'; evaluation cannot select or report tasks")
    else:
        obs_c, info_c = env.reset(seed=999, options={"task_id": task_id})
        if info_c.get("task_id") != task_id or obs_c != obs_a:
            _fail("reset(options={'task_id': ...}) did not select the requested task")

    from agentrl.envs.agent_env import AgentEnv

    if isinstance(env.unwrapped, AgentEnv):
        return warnings + _check_agent(env)

    # Malformed output: each must give a valid step, never an exception.
    for action in MALFORMED_ACTIONS:
        env.reset(seed=1)
        _check_step(env, action)

    # A plain final answer must end the episode within max_steps (most envs end at once).
    env.reset(seed=2)
    for _ in range(max_steps):
        _, _, terminated, truncated, _ = _check_step(env, "My final answer is 0.")
        if terminated or truncated:
            break
    else:
        warnings.append(f"the episode did not end within {max_steps} plain-text turns; is there a turn limit?")
    try:
        env.step("another turn")
    except ResetNeeded:
        pass
    except Exception as exc:
        _fail(f"step() after the episode ended raised {type(exc).__name__}; raise agentrl.env.ResetNeeded instead")
    else:
        warnings.append("step() after the episode ended did not raise ResetNeeded")

    return warnings


def _check_agent(env: Env) -> list[str]:
    """An ``AgentEnv``: its agent code plays real episodes through the real endpoint, against a scripted policy
    (the exact Qwen3 tokenizer, no model) that answers in plain text, then with a malformed tool call. The code
    must not raise on either (a malformed call reaches it as plain content, as from vLLM), must make at least
    one request, and ``score`` must give a finite reward."""
    from agentrl.assets import qwen3_tokenizer
    from agentrl.chat.format import load_chat_format
    from agentrl.rollout.engine import RolloutConfig, RolloutEngine
    from agentrl.rollout.generation import Completion

    warnings: list[str] = []
    tok = qwen3_tokenizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")

    class Scripted:
        name = "scripted"

        def __init__(self, text: str):
            self.text = text

        def generate(self, prompts, params):
            ids = [*tok.encode(self.text, add_special_tokens=False), end]
            return [Completion(ids, [-1.0] * len(ids), "stop") for _ in prompts]

    unwrapped = env.unwrapped
    task_id = unwrapped.task_ids[0]
    for text in ("My final answer is 0.", MALFORMED_ACTIONS[2]):
        engine = RolloutEngine(Scripted(text), load_chat_format(tok), lambda: unwrapped,
                               RolloutConfig(group_size=1, max_turns=4, zero_variance="keep"))  # fmt: skip
        try:
            traj = engine.run([task_id]).groups[0].trajectories[0]
        finally:
            engine.close()
        if traj.infra_error and not traj.requests:
            _fail(f"the agent code failed before its first request, answered {text!r}: {traj.infra_error}")
        if traj.infra_error:
            _fail(f"the agent code failed when the policy answered {text!r}: {traj.infra_error}")
        if not math.isfinite(traj.reward):
            _fail(f"score() returned a non-finite reward ({traj.reward}) for the answer {text!r}")
        if traj.truncated:
            warnings.append(
                f"with the policy answering {text!r} every time, the agent ran into a limit "
                f"({traj.truncated_by}); does it stop when the model answers without a tool call?"
            )
    return warnings
