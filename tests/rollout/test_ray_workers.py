"""Environments in Ray workers: the same batches as in-process, and a dead worker costs only its episodes.

Ray runs in local mode on two CPUs. The environment is the built-in ``sandbox-puzzles`` with its real
``python`` tool, so every worker runs its own sandbox pool; the policy is a script that reads the
conversation and answers with exact tokens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import ray

from agentrl.chat.parsing import render_call_text
from agentrl.envs.registry import make
from agentrl.envs.tasks import split_task_ids
from agentrl.errors import EnvNotFound, RecipeError, UserError
from agentrl.rollout import ray_workers
from agentrl.rollout.engine import RolloutConfig, RolloutEngine
from agentrl.rollout.generation import Completion
from agentrl.rollout.ray_workers import RayEnv, env_factory
from agentrl.train.recipe import load_recipe

ENV_KWARGS = {"num_tasks": 24}
TIMING = ("generation_seconds", "tool_seconds")


def solve(question: str) -> str | None:
    """One line of Python that answers a sandbox-puzzles question."""
    if m := re.search(r'the letter "(.)" appear in "([a-z]+)"', question):
        return f"print('{m[2]}'.count('{m[1]}'))"
    if m := re.search(r"sum of the digits of (\d+\*\*\d+)", question):
        return f"print(sum(int(d) for d in str({m[1]})))"
    if m := re.search(r"distinct numbers are in this list\? (\[[\d, ]+\])", question):
        return f"print(len(set({m[1]})))"
    return None  # the date puzzles: the policy guesses instead (and is wrong)


def policy(text: str, *, sleep: float = 0.0) -> str:
    """Call python once (a first try at the list puzzles fails with a NameError and is retried), then box
    the printed number; guess the date puzzles without the tool."""
    # The first user turn is the question (Qwen3 renders tool results as user turns too).
    question = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", text, flags=re.S)[0]
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, flags=re.S)
    code = solve(question)
    if code is None:
        return "<think>\nAbout a year.\n</think>\n\n\\boxed{365}"
    if results and "[error]" not in results[-1]:
        return f"<think>\nThe tool printed it.\n</think>\n\n\\boxed{{{results[-1].strip()}}}"
    if not results and "distinct" in question:
        code = "print(len(set(numbers)))"
    if sleep:
        code = f"import time\ntime.sleep({sleep})\n{code}"
    return "<think>\nUse python.\n</think>\n\n" + render_call_text("python", {"code": code})


class ScriptedBackend:
    """Answers every prompt with the policy's exact tokens; ``on_batch(i)`` runs before batch i is answered."""

    name = "scripted"

    def __init__(self, tok, on_batch=None, sleep: float = 0.0):
        self.tok, self.on_batch, self.sleep, self.batches = tok, on_batch, sleep, 0

    def generate(self, prompts, params):
        if self.on_batch is not None:
            self.on_batch(self.batches)
        self.batches += 1
        out = []
        for ids in prompts:
            text = policy(self.tok.decode(ids), sleep=self.sleep) + "<|im_end|>"
            toks = self.tok.encode(text, add_special_tokens=False)
            out.append(Completion(toks, [-0.5] * len(toks), "stop"))
        return out


@pytest.fixture(scope="module")
def pool():
    """Two workers on a two-CPU local Ray, shared by the tests (and by the recipe's env_factory)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray_workers.shared_pool(num_workers=2)
    ray_workers.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def chat(training_chat):
    return training_chat


def engine(chat, make_env, backend=None, **cfg):
    cfg = {"group_size": 2, "max_turns": 4, "zero_variance": "keep", **cfg}
    return RolloutEngine(backend or ScriptedBackend(chat.tokenizer), chat, make_env, RolloutConfig(**cfg))


def masked(obj):
    """``obj`` as JSON with tool-call ids masked: they are random (uuid4) on either path, and no token holds them."""
    return json.loads(re.sub(r"call_[0-9a-f]{12}", "call_*", json.dumps(obj)))


def comparable(batch) -> list:
    """Every trajectory field but the timings, group by group."""
    out = []
    for g in batch.groups:
        trajs = [{k: v for k, v in asdict(t).items() if k not in TIMING} for t in g.trajectories]
        out.append((g.task_id, g.dropped, g.resamples, trajs))
    return masked(out)


def test_ray_workers_give_the_same_batch_as_in_process(pool, chat):
    local = env_factory("sandbox-puzzles", "train", ENV_KWARGS, SimpleNamespace(kind="local"))
    remote = pool.factory("sandbox-puzzles", split="train", **ENV_KWARGS)
    task_ids = split_task_ids(local)
    assert split_task_ids(remote) == task_ids and len(task_ids) == 24
    tasks = task_ids[:8]  # two of each kind
    a = engine(chat, local).run(tasks, seed=7)
    b = engine(chat, remote).run(tasks, seed=7)
    assert comparable(a) == comparable(b)
    # The batch is worth comparing: real sandbox output, errors retried, right and wrong answers.
    trajs = [t for g in b.groups for t in g.trajectories]
    assert len(trajs) == 16 and all(t.valid for t in trajs)
    assert sorted({t.reward for t in trajs}) == [0.0, 1.0] and {t.turns for t in trajs} == {1, 2, 3}
    assert any(t.tool_errors == 0 and "[error]" in str(t.messages) for t in trajs)
    assert a.metrics["infra_failure_rate"] == b.metrics["infra_failure_rate"] == 0.0
    # Both workers played, and every episode was closed.
    assert {w["load"] for w in pool.workers()} == {0} and len({w["pid"] for w in pool.workers()}) == 2
    assert os.getpid() not in {w["pid"] for w in pool.workers()}


def test_failures_in_the_worker_surface_as_in_process(pool, chat):
    # A bad keyword fails every reset: the same infra error, word for word, as in-process.
    bad = {"num_tasks": 8, "kinds": ["riddles"]}
    local = engine(chat, lambda: make("sandbox-puzzles", split="train", **bad)).run(["t0"])
    remote = engine(chat, pool.factory("sandbox-puzzles", split="train", **bad)).run(["t0"])
    assert comparable(local) == comparable(remote)
    assert remote.groups[0].trajectories[0].infra_error.startswith("reset failed: ValueError: kinds must be")
    # A UserError raised in the worker is the same class here, so it stops the run in one line.
    with pytest.raises(EnvNotFound, match="no environment named 'sandbox-puzzle'"):
        engine(chat, pool.factory("sandbox-puzzle", split="train")).run(["t0"])
    assert pool.restarts == 0
    # Agent code cannot run in a worker (its requests go to the trainer's endpoint): one line, not per episode.
    with pytest.raises(UserError, match="AgentEnv's agent code runs beside the endpoint"):
        engine(chat, pool.factory("agentrl.testing:CalcAgentEnv", split="train")).run(["train-0"])


def test_the_recipe_chooses_the_workers(pool, chat):
    recipe = load_recipe(None, ["workers.kind=ray", "workers.num_workers=2"])
    assert recipe.workers.kind == "ray" and recipe.workers.address is None
    assert load_recipe(None, []).workers.kind == "local"
    with pytest.raises(RecipeError, match=r"workers\.kind: must be one of local, ray"):
        load_recipe(None, ["workers.kind=dask"])
    with pytest.raises(RecipeError, match=r"workers\.num_workers: must be at least 0"):
        load_recipe(None, ["workers.num_workers=-1"])
    train = env_factory("sandbox-puzzles", "train", ENV_KWARGS, recipe.workers)
    test = env_factory("sandbox-puzzles", "test", ENV_KWARGS, recipe.workers)
    assert isinstance(train(), RayEnv) and train().pool is test().pool is pool  # one pool serves both splits
    assert split_task_ids(test) == split_task_ids(lambda: make("sandbox-puzzles", split="test", **ENV_KWARGS))
    batch = engine(chat, train).run(split_task_ids(train)[:1])
    assert all(t.valid and t.reward == 1.0 for t in batch.groups[0].trajectories)
    # The SFT warm start's demonstrations are played in a worker, through its sandbox.
    demos = train().demonstrations(3)
    assert masked(demos) == masked(make("sandbox-puzzles", split="train", **ENV_KWARGS).demonstrations(3))
    assert all(any(m["role"] == "tool" for m in d) for d in demos) and train().split == "train"
    assert not isinstance(env_factory("sandbox-puzzles", "train", ENV_KWARGS, load_recipe().workers)(), RayEnv)


def test_a_mix_routes_each_episode_to_its_environment_in_the_workers(pool, chat):
    """env.mix with workers.kind=ray: the mix stays here and routes; each environment runs in the workers, as alone."""
    from agentrl.envs.mix import MixedEnv
    from agentrl.train.environments import env_factory as run_env_factory

    mix = ("env.mix=[{id: sandbox-puzzles, name: letters, kwargs: {num_tasks: 8, kinds: [letters]}}, "
           "{id: sandbox-puzzles, name: lists, weight: 2, kwargs: {num_tasks: 8, kinds: [distinct]}}]")  # fmt: skip
    recipe = load_recipe(None, [mix, "workers.kind=ray", "workers.num_workers=2"])
    remote = run_env_factory(recipe.env, "train", recipe.workers)
    local = run_env_factory(recipe.env, "train", load_recipe().workers)
    env = remote()
    assert isinstance(env, MixedEnv) and all(isinstance(env.build(n), RayEnv) for n in env.names)
    ids = split_task_ids(remote)
    assert ids == split_task_ids(local) and len(ids) == 16
    tasks = [ids[0], ids[1], ids[2]]  # the interleave puts both environments first
    assert {t.split("/")[0] for t in tasks} == {"letters", "lists"}
    a = engine(chat, local).run(tasks, seed=3)
    b = engine(chat, remote).run(tasks, seed=3)
    assert comparable(a) == comparable(b)
    for g in b.groups:
        assert all(t.valid and t.reward == 1.0 for t in g.trajectories)
        kind = "distinct numbers" if g.task_id.startswith("lists/") else "the letter"
        assert all(kind in str(t.messages) for t in g.trajectories)  # its own environment's task
    assert {w["load"] for w in pool.workers()} == {0}  # every episode closed in the workers


def test_a_dead_worker_fails_only_its_episodes_and_is_replaced(pool, chat):
    before = {w["slot"]: w["pid"] for w in pool.workers()}
    made: list[RayEnv] = []
    factory = pool.factory("sandbox-puzzles", split="train", **ENV_KWARGS)

    def make_env():
        made.append(factory())
        return made[-1]

    def kill_worker_0(batch):
        # Batch 0 is the first turn: its python calls sleep 1.5 s in the workers; worker 0 is killed
        # (as the kernel's OOM killer would) while they run.
        if batch == 0:
            threading.Timer(0.5, os.kill, (before[0], signal.SIGKILL)).start()

    backend = ScriptedBackend(chat.tokenizer, on_batch=kill_worker_0, sleep=1.5)
    eng = engine(chat, make_env, backend, step_timeout=60.0)
    tasks = split_task_ids(factory)[:4:2]  # a letter count and a distinct count: both solved with the tool
    t0 = time.perf_counter()
    batch = eng.run(tasks, seed=1)
    assert time.perf_counter() - t0 < 30
    trajs = [t for g in batch.groups for t in g.trajectories]
    assert [env.worker for env in made] == [0, 1, 0, 1]
    for env, t in zip(made, trajs, strict=True):
        if env.worker == 0:
            assert not t.valid and "environment worker 0 died" in t.infra_error, t.infra_error
        else:
            assert t.valid and t.reward == 1.0, t.infra_error
    assert batch.metrics["infra_failure_rate"] == 0.5 and pool.restarts == 1
    # The run goes on: the next batch plays on a fresh worker 0 and on the same worker 1.
    eng.backend = ScriptedBackend(chat.tokenizer)
    again = eng.run(tasks, seed=2)
    assert all(t.valid and t.reward == 1.0 for g in again.groups for t in g.trajectories)
    after = {w["slot"]: (w["pid"], w["generation"]) for w in pool.workers()}
    assert after[0][0] != before[0] and after[0][1] == 1 and after[1] == (before[1], 0)
