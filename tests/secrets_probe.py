"""Shared by the secrets tests: sentinel keys, code that dumps everything a sandbox can see of its
environment, and an environment that carries that dump (and an API key of its own) through a run.

A sentinel is a value that exists only in the test's environment, so finding it in any output, file
or request proves that it leaked; finding it nowhere, with the probes shown to have run, proves it did not.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import textwrap
from typing import Any

# The variables the package or its dependencies read keys from, and two that stand for the
# *_API_KEY / *_TOKEN families (any service a user's environment may hold a key for).
SECRET_VARS = (
    "E2B_API_KEY",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "ANTHROPIC_API_KEY",
    "GITHUB_TOKEN",
)


def sentinels() -> dict[str, str]:
    """A fresh, unguessable value per variable; E2B's keeps the ``e2b_`` form its SDK expects."""
    out = {name: f"sentinel-{name.lower().replace('_', '-')}-{secrets.token_hex(8)}" for name in SECRET_VARS}
    out["E2B_API_KEY"] = "e2b_" + secrets.token_hex(20)
    return out


def leaks(data: bytes | str, values: dict[str, str]) -> list[str]:
    """The names of the sentinels found in ``data``."""
    raw = data.encode() if isinstance(data, str) else data
    return [name for name, value in values.items() if value.encode() in raw]


# Everything a process inside a sandbox can read about environments: its own variables, the
# environment blocks of itself, its server (the parent), the server's parent and PID 1, every other
# visible process, and what a subprocess would inherit. Each probe reports what it read or why it
# could not; the JSON goes to stdout. Ancestors are found through /proc/<pid>/status, which the
# hardened levels may refuse: then the PIDs fall back to what getppid() says.
DUMP_CODE = textwrap.dedent(
    """
    import glob, json, os, subprocess
    def _ppid(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return int(next(line for line in f if line.startswith("PPid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            return None
    _server = os.getppid()
    _client = _ppid(_server)
    _paths = ["/proc/self/environ", f"/proc/{_server}/environ", "/proc/1/environ"]
    if _client:
        _paths.append(f"/proc/{_client}/environ")
    _paths += sorted(set(glob.glob("/proc/[0-9]*/environ")) - set(_paths))
    _reads = {}
    for _p in _paths:
        try:
            with open(_p, "rb") as f:
                _reads[_p] = f.read().decode(errors="replace")
        except OSError as e:
            _reads[_p] = "unreadable: " + type(e).__name__
    try:
        _sub = subprocess.run(["env"], capture_output=True, text=True, timeout=5).stdout
    except Exception as e:
        _sub = "refused: " + type(e).__name__
    print(json.dumps({"environ": dict(os.environ), "server": _server, "client": _client, "reads": _reads,
                      "subprocess": _sub}))
    """
)

_dump: str | None = None


def sandbox_dump() -> str:
    """What :data:`DUMP_CODE` prints in this process's own sandbox (the one the ``python`` tool uses)."""
    global _dump
    if _dump is None:
        from agentrl.tools.python import default_sandbox

        res = default_sandbox().run(DUMP_CODE)
        _dump = res.stdout or f"no output: {res}"
    return _dump


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ProbeEnv(split: str = "train", num_tasks: int = 6, api_key: str = "", **options: Any):
    """A tool environment with the ``python`` tool, for runs of the trainer and of ``agentrl eval``.

    ``api_key`` stands for an environment that calls a service of its own (a judge model, say): it must
    arrive intact, which ``$PROBE_KEY_SHA256`` checks without the key itself being anywhere else.
    Every prompt quotes what sandboxed code saw of the environment, so that output travels through
    the trajectories, reports and logs like a tool result would. The reward is the share of ASCII
    letters in the reply, which a random policy gets with variance (the trainer has something to do).
    """
    from agentrl.envs.tasks import Task
    from agentrl.envs.tool_env import ToolEnv
    from agentrl.tools import python_tool

    expected = os.environ.get("PROBE_KEY_SHA256")
    if expected and key_digest(api_key) != expected:
        raise ValueError("ProbeEnv did not get the api_key it was given")

    class _Probe(ToolEnv):
        def score(self, task, answer, messages):
            text = answer.replace("<|im_end|>", "")
            return {"reward": sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1)}

    dump = sandbox_dump()
    tasks = [Task(id=f"{split}-{i}", prompt=f"The sandbox printed: {dump}\nSay something.") for i in range(num_tasks)]
    return _Probe(tasks, [python_tool()])
