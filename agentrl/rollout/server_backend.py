"""The ``vllm-server`` generation backend: one or several running vLLM OpenAI-compatible servers.

Generation leaves the trainer's machine: ``vllm serve MODEL --enable-lora ...`` runs on other GPUs
(or other hosts), and this backend sends each batch's prompts to them as *token ids* through
``/v1/completions`` and reads back the sampled token ids (``return_token_ids``) and their logprobs.
Text is never the interface, so nothing is re-tokenized and rollouts stay token-exact.

Each prompt is its own request, all in flight at once, dealt to the servers in contiguous shares, so
N servers generate N shares at once and each batches what it receives. The adapter is
pushed after each optimizer step with ``/v1/load_lora_adapter`` under a versioned name (the previous
version is unloaded); requests name the version they mean, so a server that missed an update answers
with an error (an infrastructure failure, retried elsewhere) instead of silently serving a stale
adapter. The adapter directory must be readable by the servers (a shared filesystem across hosts).

Failures of a server (refused connection, timeout, 5xx, a body without token ids) are retried on
another server; a batch that fails everywhere raises, and the rollout engine marks its episodes as
infrastructure failures, never zero rewards. When more than ``max_failure_rate`` of the recent
requests failed, the backend raises :class:`ServerUnavailable` (a ``UserError``): the run stops with
one line naming the servers and the last error instead of training on what is left.

See :mod:`agentrl.rollout.vllm_server` for the server flags this backend relies on.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from agentrl.errors import UserError
from agentrl.rollout.generation import Completion, SamplingParams, prompt_seed


class ServerUnavailable(UserError):
    """The vLLM servers failed too many recent requests to go on."""


class ServerError(RuntimeError):
    """One request failed for a reason of the server's, not of the request (retried elsewhere)."""


class VLLMServerBackend:
    """Batched generation on running vLLM servers, token ids in and token ids out."""

    name = "vllm-server"

    def __init__(
        self,
        urls: Sequence[str],
        *,
        model: str | None = None,
        timeout: float = 600.0,
        retries: int = 2,
        max_failure_rate: float = 0.5,
        window: int = 20,
        api_key: str | None = None,
        vocab_size: int | None = None,
        max_in_flight: int = 256,
        keep_versions: int = 1,
    ):
        import httpx

        if not urls:
            raise UserError("backend vllm-server needs at least one server URL (server_urls: [...] / --server-url)")
        self.urls = [u.rstrip("/").removesuffix("/v1") for u in urls]
        self.timeout, self.retries, self.max_failure_rate = timeout, retries, max_failure_rate
        key = api_key if api_key is not None else os.environ.get("VLLM_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)  # True = failed
        self._last_error = ""
        self._lock = threading.Lock()
        # Requests are I/O-bound: enough threads to keep every server's batch full.
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="agentrl-server")
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers=headers,
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
        )
        self.vocab_size = vocab_size
        self.base_model = model or self._served_model()
        self.adapter_name: str | None = None
        """The versioned name of the adapter the servers hold; requests use it inside ``use_adapter(True)``."""
        self._active: str | None = None
        self.keep_versions = keep_versions
        self.tag = uuid.uuid4().hex[:8]
        self._loaded: list[str] = []
        self.requests = 0
        self.failures = 0

    # ----- health ----------------------------------------------------------------------------
    def health(self) -> dict[str, bool]:
        """``{url: answered /health with 200}`` for every server."""
        out = {}
        for url in self.urls:
            try:
                out[url] = self.client.get(url + "/health", timeout=5.0).status_code == 200
            except Exception:
                out[url] = False
        return out

    def _served_model(self) -> str:
        """The base model's name as the servers know it (the first of ``/v1/models`` without a parent)."""
        errors = []
        for url in self.urls:
            try:
                r = self.client.get(url + "/v1/models", timeout=10.0)
                r.raise_for_status()
                models = [m for m in r.json()["data"] if not m.get("parent")]
                if models:
                    return models[0]["id"]
            except Exception as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
        raise ServerUnavailable(f"no vLLM server answered /v1/models ({'; '.join(errors) or 'no base model'})")

    def _record(self, failed: bool, error: str = "") -> None:
        with self._lock:
            self.requests += 1
            self._recent.append(failed)
            if failed:
                self.failures += 1
                self._last_error = error
            n = len(self._recent)
            if n >= 4 and sum(self._recent) / n > self.max_failure_rate:
                raise ServerUnavailable(
                    f"vLLM servers failing: {sum(self._recent)} of the last {n} requests to "
                    f"{', '.join(self.urls)} failed (last error: {self._last_error}); stopping the run"
                )

    # ----- adapters --------------------------------------------------------------------------
    def load_adapter(self, path: str, version: str) -> None:
        """Serve the PEFT adapter saved in ``path`` under the name ``version`` on every server.

        Versions older than the last ``keep_versions`` are unloaded once the new one is loaded
        everywhere (asynchronous rollouts keep the ones a batch in flight may still use). A server that
        refuses the load fails the call (a ``ServerError``): training must not go on with a stale policy.
        """
        # The served name carries this client's own tag: runs sharing a server (or a run restarted
        # against it) never collide on a name, so none can be answered with another's weights.
        name = f"{version}.{self.tag}"
        if name in self._loaded:  # the same version saved again (an evaluation, then the step): replace it
            for url in self.urls:
                self._post_admin(url, "/v1/unload_lora_adapter", {"lora_name": name})
        for url in self.urls:
            r = self._post_admin(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
            if r.status_code != 200:
                raise ServerError(f"{url} could not load adapter {name!r} from {path}: {r.text[:300]}")
        self.adapter_name = name
        self._loaded = [v for v in self._loaded if v != name] + [name]
        while len(self._loaded) > self.keep_versions:
            old = self._loaded.pop(0)
            for url in self.urls:
                self._post_admin(url, "/v1/unload_lora_adapter", {"lora_name": old})

    def adopt_adapter(self, name: str) -> None:
        """Sample with an adapter another client loaded under ``name`` (the trainer's rank 0 loads each
        version once for every rank; the others only name it in their requests)."""
        self.adapter_name = name

    def _post_admin(self, url: str, route: str, body: dict[str, Any]) -> Any:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self.client.post(url + route, json=body)
            except Exception as exc:  # refused or timed out: the same server is tried again
                last = exc
                time.sleep(0.5 * 2**attempt)
        raise ServerError(f"{url}{route} failed: {type(last).__name__}: {last}")

    @contextmanager
    def use_adapter(self, on: bool) -> Iterator[None]:
        """Sample with the served adapter (``on``) or with the base model, for the ``with`` block."""
        if on and self.adapter_name is None:
            raise ValueError("no adapter is loaded; call load_adapter(path, version) first")
        saved, self._active = self._active, (self.adapter_name if on else None)
        try:
            yield
        finally:
            self._active = saved

    # ----- generation ------------------------------------------------------------------------
    def request_body(self, prompt: list[int], params: SamplingParams) -> dict[str, Any]:
        greedy = params.temperature <= 0
        body: dict[str, Any] = {
            "model": self._active or self.base_model,
            "prompt": list(prompt),
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else -1,
            "min_p": params.min_p,
            "logprobs": 0,  # the sampled token's own logprob
            "return_token_ids": True,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "ignore_eos": bool(params.stop_token_ids),  # our stop ids decide, not the model's config
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        if not prompts:
            return []
        # One request per prompt, all in flight at once: each server batches what it receives, and a
        # request's seed covers only its own prompt (a seed shared by a list of prompts would give
        # identical samples to the identical prompts of a GRPO group). The prompts are dealt to the
        # servers in contiguous shares, so a group's shared prompt stays in one server's prefix cache.
        n = min(len(self.urls), len(prompts))
        futures = []
        for i, prompt in enumerate(prompts):
            p = params if params.seed is None else replace(params, seed=prompt_seed(params.seed, i))
            futures.append(self._pool.submit(self._generate_one, i * n // len(prompts), prompt, p))
        return [f.result() for f in futures]

    def _generate_one(self, home: int, prompt: list[int], params: SamplingParams) -> Completion:
        # Start at the prompt's own server and move on to the others on failure, in a random order
        # so that a dead server's requests do not all pile onto the same neighbour.
        order = [self.urls[home]]
        others = [u for u in self.urls if u != order[0]]
        random.shuffle(others)
        order += others
        attempts = order * (self.retries + 1)
        last = ""
        for attempt, url in enumerate(attempts):
            try:
                result = self._request(url, prompt, params)
            except ServerError as exc:
                last = str(exc)
                self._record(True, last)
                if attempt + 1 < len(attempts):
                    time.sleep(min(0.25 * 2 ** (attempt // len(order)), 4.0))
                continue
            self._record(False)
            return result
        raise ServerError(f"generation failed on every server after {len(attempts)} attempts (last: {last})")

    def _request(self, url: str, prompt: list[int], params: SamplingParams) -> Completion:
        import httpx

        try:
            r = self.client.post(url + "/v1/completions", json=self.request_body(prompt, params))
        except httpx.HTTPError as exc:
            raise ServerError(f"{url}: {type(exc).__name__}: {exc}") from None
        if r.status_code == 404 and self._active:
            raise ServerError(f"{url} does not serve adapter {self._active!r} (it missed an update?): {r.text[:200]}")
        if r.status_code == 400:
            # A request the server refuses as such (too long a prompt, a bad parameter) would fail on
            # every server and every step the same way: a setting to fix, not a server to retry.
            raise UserError(f"{url} refused the request: {r.text[:300]}")
        if r.status_code != 200:
            raise ServerError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            choices = r.json()["choices"]
            if len(choices) != 1:
                raise ServerError(f"{url} returned {len(choices)} completions for one prompt")
            return self._completion(choices[0])
        except ServerError:
            raise
        except Exception as exc:
            raise ServerError(f"{url}: unreadable response: {type(exc).__name__}: {exc}") from None

    def _completion(self, choice: dict[str, Any]) -> Completion:
        ids = choice.get("token_ids")
        if ids is None:
            raise ServerError("the server returned no token ids (a vLLM server with return_token_ids is needed)")
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if len(logprobs) != len(ids) or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ServerError(f"malformed completion: {len(ids)} token ids and {len(logprobs)} logprobs")
        if self.vocab_size is not None and any(t >= self.vocab_size for t in ids):
            raise ServerError(f"the server returned token ids beyond the vocabulary ({self.vocab_size})")
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(list(ids), [float(x) for x in logprobs], reason)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()
