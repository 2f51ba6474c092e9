"""Environments in Ray actors: the rollout engine's ``make_env``, backed by a pool of workers.

The rollout engine asks for one environment per episode and calls ``reset``, ``astep``,
``on_truncate`` and ``close`` on it. :class:`RayEnvPool` hands it :class:`RayEnv` proxies instead
of environments: each episode's real environment is built with ``agentrl.make`` inside one of N Ray
actors (:class:`EnvWorker`), kept there by episode key, and every call is forwarded to it. Tools,
sandbox pools (the process-wide ``LocalSandbox`` of each actor) and grading therefore run on the
cluster's CPUs, while generation stays in the trainer's process, which batches it across all
episodes as before. The engine itself does not change, so a run gives the same trajectories with
or without workers.

Failures, as the engine sees them:

* An exception raised by the environment in the actor is re-raised in the trainer as the very same
  exception (Ray's wrapper removed), so a :class:`~agentrl.errors.UserError` still stops the run in
  one line and any other error marks its episode ``infra_error`` with the same message as in-process.
* A worker that dies (killed, out of memory, a crash in native code) fails the steps of exactly the
  episodes it held, with :class:`WorkerDied`: their state died with it, so they are infrastructure
  failures. The pool starts a replacement at once; episodes that had not started yet start there
  (a ``reset`` is retried once, since nothing of the episode exists yet), and the run goes on.

Each episode stays on the worker that reset it. New episodes go to the worker with the fewest open
episodes. :func:`env_factory` picks the in-process path or a shared pool from a recipe's workers
section; :func:`close` shuts the shared pool down.

What this does not cover: generation on remote GPUs (only environments move); placement by a
task's cost (every episode counts the same when choosing a worker); and overlapping the starts of
episodes: the engine resets them one after another (``reset`` is synchronous), so each start costs
one round trip to a worker in series, while steps overlap.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrl.envs.agent_env import AgentEnv
from agentrl.envs.core import Action, Env, Message, StepResult
from agentrl.envs.registry import make
from agentrl.errors import MissingDependency, UserError

RESET_TIMEOUT = 300.0
"""Seconds a ``reset`` (building the environment in the worker) may take before the episode is an infra failure.
Steps have the engine's own ``step_timeout``."""
SHUTDOWN_TIMEOUT = 10.0
"""Seconds the workers get to close their environments (and sandbox sessions) when the pool closes."""


class WorkerDied(RuntimeError):
    """The Ray actor holding an episode's environment died; the episode's state is lost with it."""


@dataclass(frozen=True)
class EnvRecipe:
    """How a worker builds an environment: ``agentrl.make(env_id, split=split, **kwargs)``."""

    env_id: str
    split: str | None
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self) -> Env:
        kwargs = dict(self.kwargs)
        if self.split is not None:
            kwargs["split"] = self.split
        return make(self.env_id, **kwargs)


# ----- the actor ------------------------------------------------------------------------------------
class EnvWorker:
    """One Ray actor's environments, by episode key. Its methods are coroutines: Ray then runs the actor's
    calls concurrently on one event loop, so the tool calls of many episodes overlap, as in-process."""

    def __init__(self) -> None:
        self.envs: dict[int, Env] = {}

    async def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    async def reset(
        self, key: int, recipe: EnvRecipe, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[list[Message], dict[str, Any], list[dict[str, Any]]]:
        env = self.envs.get(key)
        if env is None:
            # Building may be slow (task lists, datasets): off the loop, so other episodes' steps go on.
            env = await asyncio.to_thread(recipe.build)
            self.envs[key] = env
        try:
            obs, info = env.reset(seed=seed, options=options)
        except BaseException:
            # The engine never closes an episode that failed to start; nothing must stay behind here.
            self.envs.pop(key, None)
            await asyncio.to_thread(env.close)
            raise
        return obs, info, list(env.tool_specs)

    async def step(self, key: int, action: Action) -> StepResult:
        env = self.envs.get(key)
        if env is None:
            raise WorkerDied(f"episode {key} is not on this worker (it was reset on a worker that has died)")
        return await env.astep(action)

    async def on_truncate(self, key: int) -> None:
        env = self.envs.get(key)
        if env is not None:
            await asyncio.to_thread(env.on_truncate)  # may end a sandbox session: a blocking round trip

    async def close(self, key: int) -> None:
        env = self.envs.pop(key, None)
        if env is not None:
            await asyncio.to_thread(env.close)

    async def describe(self, recipe: EnvRecipe) -> dict[str, Any]:
        """What the trainer reads from an environment without playing it: its task ids and tools."""
        env = await asyncio.to_thread(recipe.build)
        try:
            inner = env.unwrapped
            return {"task_ids": list(getattr(inner, "task_ids", []) or []), "tool_specs": list(env.tool_specs),
                    "agent": isinstance(inner, AgentEnv)}  # fmt: skip
        finally:
            env.close()

    async def demonstrations(self, recipe: EnvRecipe, n: int, split: str) -> list[list[Message]]:
        """``env.demonstrations``, played through the real tools here, where the sandbox is."""

        def play() -> list[list[Message]]:
            env = recipe.build()
            try:
                if not hasattr(env, "demonstrations"):
                    raise UserError(f"sft.demonstrations: {env!r} cannot write demonstrations; use sft.data")
                return env.demonstrations(n, split=split)
            finally:
                env.close()

        return await asyncio.to_thread(play)

    async def shutdown(self) -> int:
        """Close every open environment (ending its sandbox sessions); returns how many there were."""
        envs, self.envs = list(self.envs.values()), {}
        for env in envs:
            try:
                await asyncio.to_thread(env.close)
            except Exception:  # closing is best effort: the process ends next
                pass
        from agentrl.tools.mcp_tools import close_servers

        await asyncio.to_thread(close_servers)  # MCP servers this worker's environments started
        return len(envs)


# ----- the driver side ----------------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(
            f"workers.kind=ray needs Ray: pip install 'agentrl[ray]' (import failed with: {exc})"
        ) from None
    return ray


@functools.cache
def _actor_class() -> Any:
    return _ray().remote(EnvWorker)


@dataclass
class _Slot:
    actor: Any
    generation: int
    load: int = 0
    """Open episodes on this generation of the slot's actor."""


class RayEnvPool:
    """N :class:`EnvWorker` actors and the episodes placed on them.

    Args:
        num_workers: Actors to start; 0 means one per CPU of the Ray cluster.
        address: Passed to ``ray.init`` when Ray is not running in this process yet: ``"HOST:6379"``
            joins that head node; ``"auto"`` joins the cluster that ``ray start`` runs on this node (or
            ``RAY_ADDRESS``) and fails without one; None does the same but starts a Ray here if there is
            none; ``"local"`` always starts a private one.
        init_kwargs: More ``ray.init`` arguments (e.g. ``num_cpus`` for a private Ray).
    """

    def __init__(self, num_workers: int = 0, *, address: str | None = None, **init_kwargs: Any):
        ray = _ray()
        if num_workers < 0:
            raise UserError(f"workers.num_workers: must be at least 0, got {num_workers}")
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            try:
                ray.init(address=address, include_dashboard=False, **init_kwargs)
            except ConnectionError as exc:
                raise UserError(
                    f"workers.address={address!r}: cannot reach a Ray cluster ({exc}); start one with "
                    "`ray start --head` or leave workers.address unset"
                ) from None
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.num_workers = num_workers or max(int(cpus), 1)
        # Each actor reserves one CPU, so they spread one per core over the cluster's nodes; asking for
        # more actors than CPUs shares them out instead of leaving the extra actors waiting forever.
        self.cpus_per_worker = min(1.0, cpus / self.num_workers)
        self.restarts = 0
        """Workers replaced after dying, over the pool's life."""
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._slots = [_Slot(self._start(), 0) for _ in range(self.num_workers)]
        self._closed = False

    def _start(self) -> Any:
        options = {"num_cpus": self.cpus_per_worker, "scheduling_strategy": "SPREAD", "max_restarts": 0}
        return _actor_class().options(**options).remote()

    # ----- public ---------------------------------------------------------------------------------
    def factory(self, env_id: str, *, split: str | None = None, **kwargs: Any) -> Callable[[], Env]:
        """A ``make_env`` for the rollout engine: each call returns a :class:`RayEnv` of this environment."""
        recipe = EnvRecipe(env_id, split, tuple(sorted(kwargs.items())))
        return functools.partial(RayEnv, self, recipe)

    def workers(self) -> list[dict[str, Any]]:
        """Each worker's slot, generation, process id, node address and open episodes (waits for them to start)."""
        ray = _ray()
        slots = list(self._slots)
        infos = ray.get([s.actor.info.remote() for s in slots], timeout=RESET_TIMEOUT)
        return [
            {"slot": i, "generation": s.generation, "load": s.load, **info}
            for i, (s, info) in enumerate(zip(slots, infos, strict=True))
        ]

    def close(self) -> None:
        """Close every worker's environments, end the actors, and stop Ray if this pool started it."""
        if self._closed:
            return
        self._closed = True
        ray = _ray()
        if not ray.is_initialized():
            return
        actors = [s.actor for s in self._slots]
        ray.wait([a.shutdown.remote() for a in actors], num_returns=len(actors), timeout=SHUTDOWN_TIMEOUT)
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead
                pass
        if self.owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- used by RayEnv -------------------------------------------------------------------------
    def _assign(self) -> tuple[int, int, int]:
        """(slot, generation, key) for a new episode: the least loaded worker, the lowest slot on a tie."""
        if self._closed:
            raise RuntimeError("the environment worker pool is closed")
        with self._lock:
            index = min(range(len(self._slots)), key=lambda i: self._slots[i].load)
            slot = self._slots[index]
            slot.load += 1
            return index, slot.generation, next(self._keys)

    def _release(self, index: int, generation: int) -> None:
        with self._lock:
            slot = self._slots[index]
            if slot.generation == generation and slot.load > 0:
                slot.load -= 1

    def _actor(self, index: int, generation: int) -> Any:
        slot = self._slots[index]
        if slot.generation != generation:
            raise WorkerDied(f"environment worker {index} died and was replaced; this episode's state is gone")
        return slot.actor

    def _replace(self, index: int, generation: int) -> None:
        """Start a new actor in a dead one's slot (once, however many of its episodes notice)."""
        ray = _ray()
        with self._lock:
            slot = self._slots[index]
            if slot.generation != generation or self._closed:
                return
            try:
                ray.kill(slot.actor)  # an unreachable actor may yet be alive: make sure it is gone
            except Exception:
                pass
            self._slots[index] = _Slot(self._start(), generation + 1)
            self.restarts += 1

    def _translate(self, exc: BaseException, index: int, generation: int) -> BaseException:
        """The exception the engine should see for a failed call to worker ``index``."""
        ray = _ray()
        if isinstance(exc, ray.exceptions.RayActorError):
            self._replace(index, generation)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return WorkerDied(f"environment worker {index} died: {type(exc).__name__}: {first}")
        if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
            return exc.cause  # the environment's own exception, exactly as in-process
        return exc


class RayEnv(Env):
    """An environment living in a :class:`RayEnvPool` worker; every call is forwarded to it."""

    def __init__(self, pool: RayEnvPool, recipe: EnvRecipe):
        self.pool, self.recipe = pool, recipe
        self.split = recipe.split
        self.worker: int | None = None
        """The slot of the worker this environment was last reset on (kept after ``close``)."""
        self._placed: tuple[int, int, int] | None = None  # (slot, generation, key) once reset
        self._tool_specs: list[dict[str, Any]] | None = None
        self._described: dict[str, Any] | None = None

    # ----- the Env API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        if self._describe().get("agent"):
            raise UserError("an AgentEnv's agent code runs beside the endpoint, in the trainer's process; "
                            "use workers.kind=local for it")  # fmt: skip
        ray = _ray()
        for attempt in range(2):
            if self._placed is None or self.pool._slots[self._placed[0]].generation != self._placed[1]:
                self._release()
                self._placed = self.pool._assign()
            index, generation, key = self._placed
            try:
                actor = self.pool._actor(index, generation)
                ref = actor.reset.remote(key, self.recipe, seed, options)
                obs, info, self._tool_specs = ray.get(ref, timeout=RESET_TIMEOUT)
                self.worker = index
                return obs, info
            except ray.exceptions.GetTimeoutError:
                self.close()
                raise TimeoutError(f"environment worker {index} did not reset within {RESET_TIMEOUT:g} s") from None
            except ray.exceptions.RayError as exc:
                err = self.pool._translate(exc, index, generation)
            except WorkerDied as exc:
                err = exc
            if not isinstance(err, WorkerDied) or attempt == 1:
                self._release()  # the engine never closes an episode that failed to start
                self._placed = None
                raise err from None
            # Nothing of this episode existed on the dead worker: start it afresh on the replacement.
        raise AssertionError("unreachable")

    async def astep(self, action: Action) -> StepResult:
        if self._placed is None:
            raise RuntimeError("call reset() before step()")
        ray = _ray()
        index, generation, key = self._placed
        ref = self.pool._actor(index, generation).step.remote(key, action)
        try:
            obs, reward, terminated, truncated, info = await ref
        except asyncio.CancelledError:  # the harness timed the step out: stop it in the worker too
            try:
                ray.cancel(ref)
            except Exception:
                pass
            raise
        except ray.exceptions.RayError as exc:
            raise self.pool._translate(exc, index, generation) from None
        return obs, reward, terminated, truncated, info

    def step(self, action: Action) -> StepResult:
        if self._placed is None:
            raise RuntimeError("call reset() before step()")
        ray = _ray()
        index, generation, key = self._placed
        try:
            return tuple(ray.get(self.pool._actor(index, generation).step.remote(key, action)))  # type: ignore[return-value]
        except ray.exceptions.RayError as exc:
            raise self.pool._translate(exc, index, generation) from None

    def on_truncate(self) -> None:
        self._send("on_truncate")

    def close(self) -> None:
        self._send("close")
        self._release()
        self._placed = None

    @property
    def tool_specs(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if self._tool_specs is None:
            return self._describe()["tool_specs"]
        return self._tool_specs

    # ----- what the trainer reads besides the Env API ---------------------------------------------
    @property
    def task_ids(self) -> list[str]:
        return self._describe()["task_ids"]

    def demonstrations(self, n: int, *, split: str = "train") -> list[list[Message]]:
        return self._call_any("demonstrations", self.recipe, n, split)

    # ----- plumbing -------------------------------------------------------------------------------
    def _send(self, method: str) -> None:
        """Fire and forget: the engine does not wait for an episode's resources to be released."""
        if self._placed is None:
            return
        index, generation, key = self._placed
        if self.pool._slots[index].generation == generation:
            getattr(self.pool._slots[index].actor, method).remote(key)

    def _release(self) -> None:
        if self._placed is not None:
            self.pool._release(self._placed[0], self._placed[1])

    def _describe(self) -> dict[str, Any]:
        if self._described is None:
            self._described = self._call_any("describe", self.recipe)
        return self._described

    def _call_any(self, method: str, *args: Any) -> Any:
        """Run a one-off call on the least loaded worker (once more on its replacement if it died)."""
        ray = _ray()
        for attempt in range(2):
            index, generation, _ = self.pool._assign()
            try:
                return ray.get(getattr(self.pool._actor(index, generation), method).remote(*args))
            except ray.exceptions.RayError as exc:
                err = self.pool._translate(exc, index, generation)
                if not isinstance(err, WorkerDied) or attempt == 1:
                    raise err from None
            finally:
                self.pool._release(index, generation)
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        where = f" on worker {self._placed[0]}" if self._placed else ""
        return f"<RayEnv {self.recipe.env_id}{where}>"


# ----- the recipe's choice ------------------------------------------------------------------------------
_shared: RayEnvPool | None = None
_shared_settings: tuple[int, str | None] | None = None


def shared_pool(num_workers: int = 0, address: str | None = None) -> RayEnvPool:
    """The process's one pool, so the training and the held-out split share the same workers."""
    global _shared, _shared_settings
    settings = (num_workers, address)
    if _shared is not None and _shared_settings != settings:
        raise UserError(
            f"environment workers are already running with (num_workers, address) = {_shared_settings}; "
            f"close() them before asking for {settings}"
        )
    if _shared is None:
        _shared, _shared_settings = RayEnvPool(num_workers, address=address), settings
    return _shared


def env_factory(env_id: str, split: str | None, env_kwargs: dict[str, Any], workers: Any = None) -> Callable[[], Env]:
    """``make_env`` for ``agentrl.make(env_id, split=split, **env_kwargs)``, in this process or in Ray workers.

    ``workers`` is a recipe's workers section (``kind``: "local" or "ray", ``num_workers``, ``address``);
    None means local.
    """
    kind = getattr(workers, "kind", "local")
    if kind == "local":
        if split is None:
            return functools.partial(make, env_id, **env_kwargs)
        return functools.partial(make, env_id, split=split, **env_kwargs)
    if kind != "ray":
        raise UserError(f"workers.kind: must be local or ray, got {kind!r}")
    pool = shared_pool(getattr(workers, "num_workers", 0), getattr(workers, "address", None))
    return pool.factory(env_id, split=split, **env_kwargs)


def close() -> None:
    """Shut the shared pool down (its actors, and Ray if the pool started it). Safe to call more than once."""
    global _shared, _shared_settings
    pool, _shared, _shared_settings = _shared, None, None
    if pool is not None:
        pool.close()
