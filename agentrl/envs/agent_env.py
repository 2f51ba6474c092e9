"""``AgentEnv``: train and evaluate agent code you already have, written for any framework.

The agent is an ordinary function that talks to an OpenAI-compatible API::

    async def run(task, client, model):   # client: an openai.AsyncOpenAI bound to this episode
        ...                                # any loop, any framework, any tools
        return answer

    def score(task, answer) -> float: ...

    env = AgentEnv(tasks, run=run, score=score)

During rollouts agentrl serves the policy behind a local endpoint (:mod:`agentrl.rollout.endpoint`) and
gives each episode its own key. Every request the agent makes is sampled by the policy and recorded token
for token; when ``run`` returns, ``score`` gives the episode's reward. ``run`` may take ``(task, client)``
when it does not need the model's name, or ``(task, base_url, api_key, model)`` for frameworks that build
their own client; it may be a plain function (it then runs in a worker thread, so a synchronous client is
fine). Under ``agentrl eval --backend openai`` the same code talks to the served model directly.

An exception raised by the agent code is an infrastructure failure of that episode (left out of training,
counted against ``limits.max_infra_failure_rate``), with its traceback logged once. It is not scored as the
model's failure: the model did nothing wrong that we know of.

The Gymnasium ``reset`` works as for every environment (it picks the task and returns its prompt), so task
splits, seeding and ``check_env`` behave alike. ``step`` does not exist: the agent code, not the trainer,
decides what happens after each turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentrl.envs.core import Action, Env, Message, StepResult
from agentrl.envs.tasks import Task, index_tasks, select_task
from agentrl.errors import MissingDependency

Run = Callable[..., Any]
"""``run(task, client, model)``, ``run(task, client)`` or ``run(task, base_url, api_key, model)``, async or not;
returns what ``score`` grades."""
Score = Callable[[Task, Any], "float | Mapping[str, float]"]


class AgentEnv(Env):
    """Episodes played by user agent code through agentrl's recording endpoint."""

    def __init__(
        self,
        tasks: Sequence[Task],
        run: Run,
        score: Score,
        *,
        select: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 600.0,
    ):
        """
        Args:
            tasks: the tasks of this split; ``task.prompt`` is what the agent is asked (a string or messages).
            run: the agent; see the module docstring for its two signatures.
            score: grades what ``run`` returned; a reward, or a dict with ``"reward"`` and other logged parts.
            select: given a request's JSON body, whether it trains; side calls (a title request) should not.
                None trains on every request.
            timeout: seconds an episode's ``run`` may take before it is abandoned (an infrastructure failure).
        """
        if not tasks:
            raise ValueError("AgentEnv needs at least one task")
        if not callable(run) or not callable(score):
            raise TypeError("AgentEnv needs callable run and score")
        self.tasks = list(tasks)
        self._tasks_by_id = index_tasks(self.tasks)
        self.run, self.score_fn, self.select, self.timeout = run, score, select, float(timeout)
        self.signature = _signature(run)
        self.task: Task | None = None

    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        super().reset(seed=seed)
        self.task = select_task(self.tasks, self._tasks_by_id, options, self.np_random, type(self).__name__)
        prompt = self.task.prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        return messages, {"task_id": self.task.id, "metadata": dict(self.task.metadata)}

    def step(self, action: Action) -> StepResult:
        raise TypeError(
            "an AgentEnv's episodes are played by its agent code through agentrl's endpoint, not by step(); "
            "train or evaluate it as any environment (agentrl train / agentrl eval)"
        )

    def arguments(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        asynchronous: bool,
        http_client: Any = None,
        max_retries: int = 0,
    ) -> tuple:
        """What ``run`` is called with after the task: an OpenAI client (and the model's name), or the coordinates."""
        if self.signature == "url":
            return (base_url, api_key, model)
        try:
            import openai
        except ImportError:  # the client form only; the URL form needs nothing
            raise MissingDependency(
                'this AgentEnv\'s run(task, client) needs the openai package: pip install "agentrl[agents]" '
                "(or write run(task, base_url, api_key, model))"
            ) from None
        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        # No retries in training (the default): a retried request would be sampled twice and break the sequence.
        # ``http_client``: the HTTP client the rollout built for this episode (cheap to create, see run_agent).
        extra = {"http_client": http_client} if http_client is not None else {}
        client = cls(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=self.timeout, **extra)
        return (client, model) if self.signature == "client_model" else (client,)

    def grade(self, task: Task, result: Any) -> tuple[float, dict[str, float]]:
        """The reward of ``result`` and its logged components."""
        out = self.score_fn(task, result)
        if isinstance(out, Mapping):
            if "reward" not in out:
                raise ValueError("a score dict needs a 'reward' entry")
            return float(out["reward"]), {k: float(v) for k, v in out.items()}
        return float(out), {}


def _signature(run: Run) -> str:
    """Which of the three forms ``run`` has, by its number of positional parameters."""
    try:
        params = [p for p in inspect.signature(run).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    except (TypeError, ValueError):
        return "client"
    forms = {2: "client", 3: "client_model", 4: "url"}
    if len(params) not in forms:
        raise TypeError(f"run must take (task, client), (task, client, model) or (task, base_url, api_key, model); "
                        f"it takes {len(params)} positional arguments")  # fmt: skip
    return forms[len(params)]
