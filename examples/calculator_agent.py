"""A plain tool-calling agent written against the ``openai`` SDK, trained with agentrl as it is.

Nothing here is agentrl-specific except the last few lines: ``solve`` is the kind of loop people already
have, and it would run unchanged against OpenAI or a vLLM server. agentrl passes it a client bound to one
episode of its recording endpoint, so every request is sampled by the policy being trained.

    agentrl train recipes/harness.yaml

The tasks, system prompt and worked examples are the quickstart's (``arithmetic``, two-digit operands), so
the two recipes can be compared on the same held-out tasks.
"""

from __future__ import annotations

import json

from agentrl import AgentEnv
from agentrl.environments.answers import extract_final_number
from agentrl.environments.arithmetic import ArithmeticEnv
from agentrl.tools import calculator

MAX_TOOL_ROUNDS = 4


async def solve(messages: list[dict], client, model: str) -> str:
    """Ask the model; run each calculator call it makes; stop at the first reply without a tool call."""
    messages = list(messages)
    for _ in range(MAX_TOOL_ROUNDS):
        response = await client.chat.completions.create(model=model, messages=messages, tools=[calculator.spec])
        reply = response.choices[0].message
        messages.append(reply.model_dump(exclude_none=True))
        if not reply.tool_calls:
            return reply.content or ""
        for call in reply.tool_calls:
            try:
                result = calculator(**json.loads(call.function.arguments))
            except Exception as exc:  # a bad call goes back to the model, as any harness would do
                result = f"Error: {exc}"
            messages.append({"role": "tool", "name": call.function.name, "content": str(result)})
    return ""


# ----- the agentrl side: tasks, how to run one, how to score it ------------------------------------------


def make_env(split: str = "train", num_tasks: int | None = None, digits: int = 2, num_ops: int = 1,
             worked_examples: int = 2) -> AgentEnv:  # fmt: skip
    """The quickstart's tasks and prompt, played by :func:`solve`."""
    native = ArithmeticEnv(split, num_tasks, digits=digits, num_ops=num_ops, worked_examples=worked_examples)

    async def run(task, client, model):
        return await solve(native.build_prompt(task), client, model)

    def score(task, answer: str) -> dict[str, float]:
        correct = float(extract_final_number(answer) == task.answer)
        return {"reward": correct, "correct": correct}

    env = AgentEnv(native.tasks, run=run, score=score)
    env.split = split
    return env
