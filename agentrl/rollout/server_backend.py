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
another server. A server that refuses connections is *down*: it is reported once, skipped by later
requests and adapter loads, and asked for ``/health`` again after a back-off (doubling from
``recheck`` seconds up to ``max_recheck``); when it answers, it gets the served adapters again and
takes its share of requests. While every server is down, requests still try them all, so an outage
ends in the failure window below instead of a hang.

A prompt that fails on every server fails alone: its :class:`Completion` carries ``error``, and the
rollout engine marks that one episode an infrastructure failure (never a zero reward); the rest of
the batch goes on. The failure window counts prompt requests, once each after their retries (not
attempts: a refused connection fails in milliseconds while a generation takes seconds, so attempts
would fill the window with one dead server's refusals before any retry lands). When more than
``max_failure_rate`` of the last ``window`` requests failed, the backend raises
:class:`ServerUnavailable` (a ``UserError``): the run stops with one line naming the servers and the
last error instead of training on what is left. A request the server refuses as such (HTTP 400) is a
``UserError`` at once.

See :mod:`agentrl.rollout.vllm_server` for the server flags this backend relies on.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from agentrl.errors import UserError
from agentrl.rollout.generation import Completion, SamplingParams, prompt_seed

log = logging.getLogger("agentrl")


class ServerUnavailable(UserError):
    """The vLLM servers failed too many recent requests to go on."""


class ServerError(RuntimeError):
    """One request failed for a reason of the server's, not of the request (retried elsewhere)."""


class ServerDown(ServerError):
    """The server could not be reached at all (connection refused or not established)."""


@dataclass
class _Down:
    """A server that refused connections: skipped until ``retry_at``, then asked for ``/health``."""

    error: str
    backoff: float
    retry_at: float


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
        recheck: float = 2.0,
        max_recheck: float = 60.0,
    ):
        import httpx

        if not urls:
            raise UserError("backend vllm-server needs at least one server URL (server_urls: [...] / --server-url)")
        self.urls = [u.rstrip("/").removesuffix("/v1") for u in urls]
        self.timeout, self.retries, self.max_failure_rate = timeout, retries, max_failure_rate
        self.recheck, self.max_recheck = recheck, max_recheck
        key = api_key if api_key is not None else os.environ.get("VLLM_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)  # True = failed
        self._last_error = ""
        self._lock = threading.Lock()
        self._down: dict[str, _Down] = {}
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
        self._paths: dict[str, str] = {}
        self.requests = 0
        """Prompt requests answered or given up, each counted once after its retries."""
        self.failures = 0
        """Prompt requests that failed on every server."""

    # ----- health ----------------------------------------------------------------------------
    def health(self) -> dict[str, bool]:
        """``{url: answered /health with 200}`` for every server."""
        return {url: self._healthy(url) for url in self.urls}

    def _healthy(self, url: str) -> bool:
        try:
            return self.client.get(url + "/health", timeout=5.0).status_code == 200
        except Exception:
            return False

    @property
    def down(self) -> list[str]:
        """The servers now skipped because they refused connections."""
        with self._lock:
            return [u for u in self.urls if u in self._down]

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

    def _mark_down(self, url: str, error: str) -> None:
        """Skip ``url`` until its back-off ends; said once, when it goes down (not per request)."""
        with self._lock:
            if url in self._down:
                return
            self._down[url] = _Down(error, self.recheck, time.monotonic() + self.recheck)
            live = [u for u in self.urls if u not in self._down]
        where = f"sending its requests to {', '.join(live)}" if live else "no server is left to take its requests"
        log.warning(f"vLLM server {url} is down ({error}); {where}, and asking its /health again from time to time")

    def _last_down(self) -> str:
        with self._lock:
            return "; ".join(f"{u}: {d.error}" for u, d in self._down.items())

    def _skipped(self, url: str) -> bool:
        """Whether requests pass ``url`` by: it is down and some other server is not."""
        with self._lock:
            return url in self._down and len(self._down) < len(self.urls)

    def _recheck_due(self) -> None:
        """Ask each down server whose back-off has ended for ``/health``; one that answers is used again."""
        now = time.monotonic()
        with self._lock:  # claim the due ones, so that concurrent callers do not probe them twice
            due = [u for u, d in self._down.items() if d.retry_at <= now]
            for u in due:
                self._down[u].retry_at = math.inf
        for url in due:
            back = self._healthy(url) and self._restore_adapters(url)
            with self._lock:
                d = self._down[url]
                if back:
                    del self._down[url]
                else:
                    d.backoff = min(2 * d.backoff, self.max_recheck)
                    d.retry_at = time.monotonic() + d.backoff
            if back:
                log.warning(f"vLLM server {url} answers again; sending it requests")

    def _record(self, failed: bool, error: str = "") -> None:
        """One prompt request's outcome, after its retries; stops the run when too many recent ones failed."""
        with self._lock:
            self.requests += 1
            self._recent.append(failed)
            if failed:
                self.failures += 1
                self._last_error = error
            n, bad = len(self._recent), sum(self._recent)
            down = [u for u in self.urls if u in self._down]
        if n >= 4 and bad / n > self.max_failure_rate:
            status = f"; down: {', '.join(down)}" if down else ""
            raise ServerUnavailable(
                f"vLLM servers failing: {bad} of the last {n} requests to {', '.join(self.urls)} failed on every "
                f"server{status} (last error: {self._last_error}); stopping the run"
            )

    # ----- adapters --------------------------------------------------------------------------
    def load_adapter(self, path: str, version: str) -> None:
        """Serve the PEFT adapter saved in ``path`` under the name ``version`` on every server that is up.

        Versions older than the last ``keep_versions`` are unloaded once the new one is loaded
        everywhere (asynchronous rollouts keep the ones a batch in flight may still use). A server that
        refuses the load fails the call (a ``ServerError``): training must not go on with a stale policy.
        A server that is down is skipped; it gets the loaded versions when it answers again, before any
        request reaches it (and a request naming a version it lacks fails there, never runs stale).
        """
        # The served name carries this client's own tag: runs sharing a server (or a run restarted
        # against it) never collide on a name, so none can be answered with another's weights.
        name = f"{version}.{self.tag}"
        self._recheck_due()
        loaded = 0
        for url in self.urls:
            if self._skipped(url):
                continue
            try:
                if name in self._loaded:  # the same version saved again (an evaluation, then the step): replace it
                    self._post_admin(url, "/v1/unload_lora_adapter", {"lora_name": name})
                r = self._post_admin(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
            except ServerDown as exc:
                self._mark_down(url, str(exc))
                continue
            if r.status_code != 200:
                raise ServerError(f"{url} could not load adapter {name!r} from {path}: {r.text[:300]}")
            loaded += 1
        if not loaded:
            down = self._last_down()
            raise ServerUnavailable(f"no vLLM server could load adapter {name!r}: every server is down ({down})")
        self.adapter_name = name
        self._loaded = [v for v in self._loaded if v != name] + [name]
        self._paths[name] = str(path)
        while len(self._loaded) > self.keep_versions:
            old = self._loaded.pop(0)
            self._paths.pop(old, None)
            for url in self.urls:
                if not self._skipped(url):
                    try:
                        self._post_admin(url, "/v1/unload_lora_adapter", {"lora_name": old})
                    except ServerDown as exc:
                        self._mark_down(url, str(exc))

    def _restore_adapters(self, url: str) -> bool:
        """Load the versions this client serves onto ``url`` (back from being down); False if it refuses."""
        for name in list(self._loaded):
            try:
                # It may still hold the version (it was unreachable, not restarted): load it afresh.
                self._post_admin(url, "/v1/unload_lora_adapter", {"lora_name": name}, tries=1)
                body = {"lora_name": name, "lora_path": self._paths[name]}
                if self._post_admin(url, "/v1/load_lora_adapter", body, tries=1).status_code != 200:
                    return False
            except ServerError:
                return False
        return True

    def adopt_adapter(self, name: str) -> None:
        """Sample with an adapter another client loaded under ``name`` (the trainer's rank 0 loads each
        version once for every rank; the others only name it in their requests)."""
        self.adapter_name = name

    def _post_admin(self, url: str, route: str, body: dict[str, Any], tries: int | None = None) -> Any:
        import httpx

        last: Exception | None = None
        tries = self.retries + 1 if tries is None else tries
        for attempt in range(tries):
            try:
                return self.client.post(url + route, json=body)
            except Exception as exc:  # refused or timed out: the same server is tried again
                last = exc
                if attempt + 1 < tries:
                    time.sleep(0.5 * 2**attempt)
        kind = ServerDown if isinstance(last, httpx.ConnectError | httpx.ConnectTimeout) else ServerError
        raise kind(f"{url}{route} failed: {type(last).__name__}: {last}")

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
        """One completion per prompt; a prompt that failed on every server gets one with ``error`` set."""
        if not prompts:
            return []
        self._recheck_due()
        with self._lock:
            live = [u for u in self.urls if u not in self._down] or list(self.urls)
        # One request per prompt, all in flight at once: each server batches what it receives, and a
        # request's seed covers only its own prompt (a seed shared by a list of prompts would give
        # identical samples to the identical prompts of a GRPO group). The prompts are dealt to the
        # servers that are up in contiguous shares, so a group's shared prompt stays in one server's
        # prefix cache.
        n = min(len(live), len(prompts))
        futures = []
        for i, prompt in enumerate(prompts):
            p = params if params.seed is None else replace(params, seed=prompt_seed(params.seed, i))
            futures.append(self._pool.submit(self._generate_one, live[i * n // len(prompts)], prompt, p))
        return [f.result() for f in futures]

    def _generate_one(self, home: str, prompt: list[int], params: SamplingParams) -> Completion:
        # Start at the prompt's own server and move on to the others on failure, in a random order
        # so that a dead server's requests do not all pile onto the same neighbour.
        others = [u for u in self.urls if u != home]
        random.shuffle(others)
        order = [home, *others]
        last, tried = "", 0
        for round_ in range(self.retries + 1):
            for url in order:
                if self._skipped(url):  # down: its back-off has not ended, and another server is up
                    continue
                tried += 1
                try:
                    result = self._request(url, prompt, params)
                except ServerDown as exc:  # the next server takes it now, and later requests skip this one
                    last = str(exc)
                    self._mark_down(url, last)
                    if not self._skipped(url):  # every server is down: give a restarting one a moment
                        time.sleep(min(0.25 * 2**round_, 4.0))
                    continue
                except ServerError as exc:
                    last = str(exc)
                    time.sleep(min(0.25 * 2**round_, 4.0))
                    continue
                self._record(False)
                return result
        error = f"generation failed on every server after {tried} attempts (last: {last})"
        self._record(True, last)
        return Completion([], [], "stop", error=error)

    def _request(self, url: str, prompt: list[int], params: SamplingParams) -> Completion:
        import httpx

        try:
            r = self.client.post(url + "/v1/completions", json=self.request_body(prompt, params))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerDown(f"{url}: {type(exc).__name__}: {exc}") from None
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
